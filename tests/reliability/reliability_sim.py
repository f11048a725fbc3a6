"""Simulator helpers of the reliability tests: a plant of many tags and client options."""

from __future__ import annotations

import socket

from mxgateway import ClientOptions, RetryPolicy
from mxgateway_sim import InMemoryCatalog
from mxgateway_sim._builtin import tag
from mxgateway_sim._domain import MX_DOUBLE

ITEMS = 1000


def plant_catalog(n: int = ITEMS) -> InMemoryCatalog:
    """``n`` analog values (``LineNN_DevNNNN.PV``), each changing on its own."""
    return InMemoryCatalog(tag(f"Line{i // 100:02d}_Dev{i:04d}", "PV", MX_DOUBLE) for i in range(n))


def references(n: int = ITEMS) -> list[str]:
    return [f"Line{i // 100:02d}_Dev{i:04d}.PV" for i in range(n)]


def fast_reconnect(max_attempts: int | None = None) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts, initial_backoff=0.05, max_backoff=0.5, max_elapsed=None
    )


def client_options(endpoint: str, key: str | None, **changes: object) -> ClientOptions:
    options = ClientOptions(
        endpoint=endpoint,
        api_key=key,
        plaintext=True,
        timeout=10.0,
        # Reconnect quickly once the gateway listens again (gRPC waits 1 s at first).
        channel_options=(
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ),
    )
    return options.replace(**changes) if changes else options


def free_port() -> int:
    """A port nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
