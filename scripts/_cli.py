"""What the echo scripts share: their common options and how they turn on logging."""

import argparse
import sys

from loguru import logger

LOG_LEVELS = ["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--codec bare|bincode`` and ``--log-level LEVEL``."""
    parser.add_argument("--codec", choices=["bare", "bincode"], default="bare")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)


def start_logging(level: str) -> None:
    """Log to stderr at ``level``, greenockam's lines included (the library is silent until an
    application enables it)."""
    logger.remove()
    logger.add(sys.stderr, level=level)
    logger.enable("greenockam")
