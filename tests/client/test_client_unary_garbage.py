"""A unary call the gateway refuses leaves nothing of the client's in cyclic garbage."""

from __future__ import annotations

import collections
import gc
import types

import pytest

from mxgateway import GatewayClient, MxGatewayAuthenticationError, MxGatewayError
from mxgateway_sim import GatewaySimulator


def _clients(o: object) -> str | None:
    """What ``o`` is when it is the client library's (a frame of its code, or an object of
    one of its types), else None; the simulator's own objects are not counted here."""
    if isinstance(o, types.FrameType):
        name = str(o.f_globals.get("__name__", ""))
        return f"frame {o.f_code.co_name}" if name.startswith("mxgateway.") else None
    module = type(o).__module__
    return type(o).__qualname__ if module.startswith("mxgateway.") else None


async def test_a_refused_unary_call_leaves_no_cyclic_garbage() -> None:
    # The first attempt of a unary call is awaited in Transport.unary itself; when it held
    # the mapped error in a local, the raised error's traceback kept that frame, the frame
    # the error and the request: a cycle per refused call, freed only by a collection.
    async with GatewaySimulator() as sim:
        good = await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        )
        bad = await GatewayClient.connect(
            endpoint=sim.endpoint, api_key="mxgw_nobody_" + "x" * 20, plaintext=True
        )
        try:
            for _ in range(2):  # the first call of each warms up what is made once
                with pytest.raises(MxGatewayAuthenticationError):
                    await bad.open_session(client_session_name="refused")
                with pytest.raises(MxGatewayError):
                    await good.close_session("no-such-session")
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(5):
                    with pytest.raises(MxGatewayAuthenticationError):
                        await bad.open_session(client_session_name="refused")
                    with pytest.raises(MxGatewayError):
                        await good.close_session("no-such-session")
                gc.collect()
                found = collections.Counter(filter(None, map(_clients, gc.garbage)))
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
        finally:
            await bad.close()
            await good.close()
    assert not found, found
