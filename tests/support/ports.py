"""Ports on 127.0.0.1 for tests that need to know a port before anything listens on it."""

from __future__ import annotations

import socket

__all__ = ["unused_port"]


def unused_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (bound and released, nothing listens)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
