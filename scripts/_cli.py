"""What the scripts share: their common options and how they turn on logging."""

import argparse
import sys

from loguru import logger

LOG_LEVELS = ["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL", "OFF"]


def add_common_options(parser: argparse.ArgumentParser, default_level: str = "INFO") -> None:
    """``--codec bare|bincode`` and ``--log-level LEVEL`` (``OFF``: no log at all)."""
    parser.add_argument("--codec", choices=["bare", "bincode"], default="bare")
    parser.add_argument(
        "--log-level", default=default_level, type=str.upper, choices=LOG_LEVELS
    )


def start_logging(level: str) -> None:
    """Log to stderr at ``level``, greenockam's lines included (the library is silent until an
    application enables it). ``diagnose=False`` and ``backtrace=False``: a traceback never shows
    the values of variables, which may hold payloads."""
    logger.remove()
    if level == "OFF":
        return
    logger.add(sys.stderr, level=level, diagnose=False, backtrace=False)
    logger.enable("greenockam")
