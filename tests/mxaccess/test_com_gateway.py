"""The COM runtime behind the gateway, through the public client over real gRPC.

The gateway's ``runtime_factory`` gets :func:`mxaccess_runtime_factory` over the fake
LMXProxyServer: what a client sees of MXAccess (handles, events, write outcomes, HRESULTs)
comes from the COM runtime, its STA thread and its conversions.
"""

from __future__ import annotations

import pytest
from comhelpers import com_gateway
from fake_lmx import FakePlatform

from mxgateway import MxAccessError
from mxgateway._events import DataChange


async def test_session_over_grpc_through_the_com_runtime() -> None:
    platforms: list[FakePlatform] = []
    async with com_gateway(platforms) as (_sim, client):
        session = await client.open_session(client_session_name="com")
        try:
            h = await session.register("com")
            item = await session.add_item(h, "Tank01.Setpoint")
            with pytest.raises(MxAccessError) as caught:
                await session.write(h, item, 5)  # before the first OnDataChange
            assert caught.value.hresult == -2147024809  # E_INVALIDARG
            await session.advise(h, item)
            async for event in session.events():
                assert isinstance(event, DataChange)
                assert (event.item_handle, event.value, event.quality) == (item, 10, 192)
                break
            done = await session.write(h, item, 12, wait=True)
            assert done is not None
            [row] = await session.read_bulk(h, ["Tank01.Setpoint"])
            assert row.was_cached and row.value.int32_value == 12
            # A NaN from a failed sensor reaches the client as text instead of breaking
            # the session's event stream.
            sensor = await session.add_item(h, "Tank01.FailedSensor")
            await session.advise(h, sensor)
            async for event in session.events():
                if isinstance(event, DataChange) and event.item_handle == sensor:
                    assert (event.value, event.quality) == ("nan", 0)
                    break
            info = await session.get_worker_info()
            assert info.backend_name == "mxaccess-com"
        finally:
            await session.close()
    [used] = platforms
    assert used.server is not None and used.released and used.apartment_left
    names = [n for n, _ in used.server.calls]
    assert names[:3] == ["Register", "AddItem", "Write"] and names[-1] == "Unregister"
