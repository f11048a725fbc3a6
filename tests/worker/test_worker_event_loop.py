"""Worker processes and uvloop: a gateway on uvloop refuses to start workers, clearly.

uvloop starts a child with fork(), which runs gRPC's fork handlers in a process full of
gRPC threads; some children abort before they exec (SIGABRT). ``mxgw-sim serve`` therefore
keeps a gateway with ``--session-isolation process`` on asyncio (tests/sim); an embedded
gateway on a uvloop loop gets a typed refusal for each session instead of a worker that
sometimes dies.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from mxgateway import GatewayClient, MxGatewayUnavailableError
from mxgateway_sim import GatewaySimulator, builtin_catalog

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not on Windows")


async def _open_a_session() -> str:
    async with (
        GatewaySimulator(
            catalog=builtin_catalog(), flaky_one_in=0, session_isolation="process"
        ) as sim,
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
    ):
        try:
            async with await client.open_session() as session:
                await session.ping()
        except MxGatewayUnavailableError as exc:
            return str(exc)
        return "opened"


def test_a_gateway_on_uvloop_refuses_worker_processes_with_a_clear_error() -> None:
    uvloop = pytest.importorskip("uvloop")
    message = uvloop.run(_open_a_session())
    assert "fork()" in message and "asyncio" in message, message


def test_the_same_gateway_on_asyncio_opens_the_session() -> None:
    assert asyncio.run(_open_a_session()) == "opened"
