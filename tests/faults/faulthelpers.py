"""Helpers of the fault tests: raw stubs for the server side, a public client for the client."""

from __future__ import annotations

from typing import Any

from mxgateway import ClientOptions, GatewayClient
from mxgateway_sim import GatewaySimulator, InMemoryCatalog
from mxgateway_sim._builtin import tag
from mxgateway_sim._domain import MX_DOUBLE
from support import wait_for as wait_for
from support.rawstub import RawStub
from support.rawstub import command as command

SCAN_MS = 20
DEADLINE = 20.0
"""Generous bound of every wait: a test fails instead of hanging."""


class Raw(RawStub):
    """Raw generated stubs plus an authorization header, for one channel."""

    session_name = "faults"


def analog_catalog(n: int, prefix: str = "Dev") -> InMemoryCatalog:
    """``n`` analog attributes (``DevNNNNN.PV``) whose values change on every scan."""
    return InMemoryCatalog(tag(f"{prefix}{i:05d}", "PV", MX_DOUBLE) for i in range(n))


def analog_refs(n: int, prefix: str = "Dev") -> list[str]:
    return [f"{prefix}{i:05d}.PV" for i in range(n)]


def options(sim: GatewaySimulator, **changes: Any) -> ClientOptions:
    """Plaintext options for the simulator (fast reconnects after a restart)."""
    base = ClientOptions(
        endpoint=sim.endpoint,
        api_key=sim.api_key,
        plaintext=True,
        timeout=10.0,
        channel_options=(
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ),
    )
    return base.replace(**changes) if changes else base


async def connect(sim: GatewaySimulator, **changes: Any) -> GatewayClient:
    return await GatewayClient.connect(options=options(sim, **changes))
