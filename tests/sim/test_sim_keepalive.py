"""The simulator accepts client keepalive pings on a quiet event stream.

gRPC servers by default tolerate a ping at most every five minutes and close the
connection ("too many pings") after two strikes; a client that pings every 30 s, as
ours does by default, would then lose every quiet event stream after a few minutes.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from simhelpers import Gw

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, builtin_catalog

# Far more aggressive than any real client, so strikes would pile up within seconds.
PING_OPTIONS = [
    ("grpc.keepalive_time_ms", 250),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


@pytest.mark.slow
async def test_quiet_stream_survives_frequent_keepalive_pings() -> None:
    async with GatewaySimulator(catalog=builtin_catalog(), flaky_one_in=0) as sim:
        channel = grpc.aio.insecure_channel(sim.endpoint, options=PING_OPTIONS)
        try:
            gw = Gw(channel, sim.api_key)
            sid = await gw.open()
            stream = gw.stub.StreamEvents(pb.StreamEventsRequest(session_id=sid), metadata=gw.md)
            # Nothing is advised: the stream carries no data while the client pings.
            await asyncio.sleep(7.0)
            sh = await gw.register(sid)
            await gw.subscribe(sid, sh, "Tank01.Level")
            event = await asyncio.wait_for(stream.read(), timeout=10)
            assert isinstance(event, pb.MxEvent)
            assert event.family == pb.MX_EVENT_FAMILY_ON_DATA_CHANGE
            stream.cancel()
        finally:
            await channel.close()
