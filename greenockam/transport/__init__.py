"""Transports: how a node reaches addresses of types other than 0."""

from .tcp import TcpTransport

__all__ = ["TcpTransport"]
