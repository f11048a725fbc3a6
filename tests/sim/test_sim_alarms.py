"""The simulated alarm monitor: raise, acknowledge, clear; session-less RPCs and commands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from simhelpers import SCAN_MS, Gw, changes

from mxgateway._values import from_mx_value, to_mx_value
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, InMemoryCatalog, builtin_catalog
from mxgateway_sim._builtin import tag

ALARM = "Boiler01.HighLimitAlarm"
FULL = "ZB!Boiler01.HighLimitAlarm"


@asynccontextmanager
async def plant() -> AsyncIterator[tuple[Gw, str, int, int]]:
    """A simulator with a writeable Boolean alarm attribute, pinned to false."""
    catalog = InMemoryCatalog(
        [*builtin_catalog().all_tags(), tag("Boiler01", "HighLimitAlarm", 1, alarm=True)]
    )
    async with (
        GatewaySimulator(catalog=catalog, scan_interval_ms=SCAN_MS, flaky_one_in=0) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        gw = Gw(channel, sim.api_key)
        sid = await gw.open()
        sh = await gw.register(sid)
        ih = await gw.subscribe(sid, sh, ALARM)
        await set_alarm(gw, sid, sh, ih, False)
        yield gw, sid, sh, ih


async def set_alarm(gw: Gw, sid: str, sh: int, ih: int, value: bool) -> list[pb.MxEvent]:
    """Write the alarm attribute and wait until its OnDataChange shows the value."""
    await gw.ok(sid, "write", server_handle=sh, item_handle=ih, value=to_mx_value(value))
    return await gw.drain_until(
        sid, lambda ev: any(from_mx_value(c.value) is value for c in changes(ev, ih))
    )


async def read(call: Any) -> Any:
    message = await asyncio.wait_for(call.read(), 10)
    assert message is not grpc.aio.EOF
    return message


async def active(gw: Gw, prefix: str = "") -> list[pb.ActiveAlarmSnapshot]:
    call = gw.stub.QueryActiveAlarms(
        pb.QueryActiveAlarmsRequest(alarm_filter_prefix=prefix), metadata=gw.md
    )
    return [s async for s in call]


async def test_stream_alarms_raise_acknowledge_clear() -> None:
    async with plant() as (gw, sid, sh, ih):
        feed = gw.stub.StreamAlarms(
            pb.StreamAlarmsRequest(alarm_filter_prefix="zb!boiler"), metadata=gw.md
        )
        first = await read(feed)
        assert first.snapshot_complete.active_alarm_count == 0
        await set_alarm(gw, sid, sh, ih, True)
        raised = (await read(feed)).transition
        assert raised.transition_kind == pb.ALARM_TRANSITION_KIND_RAISE
        assert raised.state == pb.ALARM_CONDITION_STATE_ACTIVE_UNACKNOWLEDGED
        assert raised.alarm_full_reference == FULL
        assert raised.source_object_reference == "Boiler01"
        assert from_mx_value(raised.current_value) is True
        (snapshot,) = await active(gw, "ZB!Boiler01")
        assert snapshot.alarm_guid == raised.alarm_guid
        ack = await gw.stub.AcknowledgeAlarm(
            pb.AcknowledgeAlarmRequest(
                alarm_guid=raised.alarm_guid, operator_user="operator", comment="seen"
            ),
            metadata=gw.md,
        )
        assert ack.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK
        assert ack.status.success == 1
        acked = (await read(feed)).transition
        assert acked.transition_kind == pb.ALARM_TRANSITION_KIND_ACKNOWLEDGE
        assert acked.state == pb.ALARM_CONDITION_STATE_ACTIVE_ACKNOWLEDGED
        assert (acked.operator_user, acked.operator_comment) == ("operator", "seen")
        again = await gw.stub.AcknowledgeAlarm(
            pb.AcknowledgeAlarmRequest(alarm_full_reference=FULL), metadata=gw.md
        )
        assert again.protocol_status.code == pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE
        assert again.status.detail == 1015
        await set_alarm(gw, sid, sh, ih, False)
        cleared = (await read(feed)).transition
        assert cleared.transition_kind == pb.ALARM_TRANSITION_KIND_CLEAR
        assert cleared.state == pb.ALARM_CONDITION_STATE_INACTIVE_ACKNOWLEDGED
        assert await active(gw, "ZB!Boiler01") == []
        bad = await gw.stub.AcknowledgeAlarm(
            pb.AcknowledgeAlarmRequest(alarm_guid="not-a-guid"), metadata=gw.md
        )
        assert bad.protocol_status.code == pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST
        feed.cancel()


async def test_worker_side_alarm_commands_feed_the_session_stream() -> None:
    async with plant() as (gw, sid, sh, ih):
        await gw.ok(sid, "subscribe_alarms", subscription_expression="ZB!Boiler01")
        seen = await set_alarm(gw, sid, sh, ih, True)
        events = seen + await gw.drain_until(
            sid, lambda ev: any(e.HasField("on_alarm_transition") for e in seen + ev)
        )
        event = next(e for e in events if e.HasField("on_alarm_transition"))
        assert event.family == pb.MX_EVENT_FAMILY_ON_ALARM_TRANSITION
        assert event.worker_sequence > 0
        guid = event.on_alarm_transition.alarm_guid
        query = await gw.ok(sid, "query_active_alarms", alarm_filter_prefix="ZB!Boiler01")
        assert [s.alarm_guid for s in query.query_active_alarms.snapshots] == [guid]
        ack = await gw.ok(sid, "acknowledge_alarm", alarm_guid=guid, operator_user="op")
        assert ack.acknowledge_alarm.native_status == 0
        bad = await gw.invoke(sid, "acknowledge_alarm", alarm_guid="nope")
        assert bad.protocol_status.code == pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST
        twice = await gw.invoke(sid, "acknowledge_alarm", alarm_guid=guid)
        assert twice.protocol_status.code == pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE
        assert twice.statuses[0].detail == 1015
        await gw.ok(sid, "unsubscribe_alarms")
