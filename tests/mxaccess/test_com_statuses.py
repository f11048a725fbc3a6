"""Every MXSTATUS_PROXY record of a COM event reaches the client, in MXAccess's order.

MXAccess hands each event's statuses as an array (``pVars``, a SAFEARRAY of records);
upstream carries them all (``repeated MxStatusProxy statuses``) and never collapses them
into one flag. The fake LMXProxyServer raises events with two records; the runtime, the
gateway's encoders and the client over real gRPC must keep both.
"""

from __future__ import annotations

import pytest
from comhelpers import Target, advised, com_gateway, data_changes, write_completes
from fake_lmx import OK, FakePlatform, Record

from mxgateway import MxAccessError
from mxgateway._events import DataChange as ClientDataChange
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim._domain import (
    STATUS_OK,
    BufferedDataChange,
    DataChange,
    MxStatus,
    OperationComplete,
    TagSample,
    WriteComplete,
    WriteRequest,
    lead_status,
    status_and_records,
)
from mxgateway_sim._wire import EventEncoder, event_to_pb, status_to_pb, unframe
from mxgateway_sim._workerwire import read_rows

# The two records of upstream's write.mxaccess-failure fixture, with their COM numbers.
SECURITY = Record(0, 6, 1, 321)  # SecurityError, detected by the responding LMX
OPERATIONAL = Record(0, 5, 3, 902)  # OperationalError, detected by the responding NMX
PENDING = Record(1, 1, 1, 0)


def mx(record: Record) -> MxStatus:
    return MxStatus(record.success, record.category, record.detectedBy, record.detail)


def test_the_deciding_status_is_the_first_failure() -> None:
    ok, pending, security = mx(OK), mx(PENDING), mx(SECURITY)
    assert lead_status(()).ok and lead_status((pending, ok)) == pending
    assert lead_status((ok, security, mx(OPERATIONAL))) == security
    assert status_and_records((ok,)) == (ok, None)  # the common case carries no tuple
    assert status_and_records((ok, security)) == (security, (ok, security))
    assert status_and_records(())[1] == ()  # none given: none on the wire


async def test_the_runtime_keeps_every_record(fake_target: Target) -> None:
    t = fake_target
    t.fake.records["tank01.setpoint"] = (OK, PENDING)
    h, item = await advised(t, "Tank01.Setpoint")
    [change] = data_changes(t.events, item)
    assert change.sample.statuses == (mx(OK), mx(PENDING)) and change.sample.status.ok
    t.fake.records["tank01.setpoint"] = (OK, SECURITY, OPERATIONAL)
    await t.runtime.write(h, item, WriteRequest(value=3))
    [done] = write_completes(await t.wait_for(lambda ev: bool(write_completes(ev, item))), item)
    assert done.statuses == (mx(OK), mx(SECURITY), mx(OPERATIONAL))
    assert done.status == mx(SECURITY)  # what the gateway decides by: not the first, OK
    t.fake.operation_complete(h, item, (PENDING, OK))
    events = await t.wait_for(lambda ev: any(isinstance(e, OperationComplete) for e in ev))
    op = next(e for e in events if isinstance(e, OperationComplete))
    assert op.statuses == (mx(PENDING), mx(OK))


async def test_buffered_events_keep_every_record(fake_target: Target) -> None:
    t = fake_target
    t.fake.records["tank01.level"] = (OK, PENDING)
    h = await t.runtime.register("x")
    item = await t.runtime.add_item(h, "Tank01.Level", buffered=True)
    await t.runtime.advise(h, item, supervisory=True)
    events = await t.wait_for(lambda ev: any(isinstance(e, BufferedDataChange) for e in ev))
    batch = next(e for e in events if isinstance(e, BufferedDataChange))
    assert batch.statuses == (mx(OK), mx(PENDING))
    assert all(s.statuses == (mx(OK), mx(PENDING)) for s in batch.samples)


def test_the_encoders_write_every_record_in_order() -> None:
    sid = "session-" + "ef" * 16
    records = (mx(OK), mx(SECURITY), mx(OPERATIONAL))
    status, kept = status_and_records(records)
    sample = TagSample(7, 2, 192, 1_700_000_000.5, status, kept)
    events = [
        DataChange(1, 2, sample),
        WriteComplete(1, 2, status, kept),
        OperationComplete(1, 2, status, kept),
        BufferedDataChange(1, 2, 2, (sample,), status, kept),
        WriteComplete(1, 2, status),  # the same handles and lead status, one record
    ]
    framed = EventEncoder(sid).encode(events, 5, 1_700_000_001.0)
    wanted = [status_to_pb(s) for s in records]
    bodies = ["on_data_change", "on_write_complete", "operation_complete"]
    bodies += ["on_buffered_data_change", "on_write_complete"]
    for i, (event, data, body) in enumerate(zip(events, framed, bodies, strict=True)):
        decoded = pb.MxEvent.FromString(unframe(data))
        assert decoded == event_to_pb(event, sid, 5 + i, 1_700_000_001.0), event
        statuses = list(getattr(decoded, body).statuses)
        assert statuses == (wanted if i < 4 else [status_to_pb(status)]), event


def test_the_encoders_caches_keep_events_with_other_records_apart() -> None:
    # The encoder reuses a tick's shared tail (quality, timestamp, statuses) and a
    # successful completion's body: an event with the same handles, time and lead status
    # but other records must still go out with its own records, whichever comes first.
    sid = "session-" + "ef" * 16
    failing = (mx(OK), mx(SECURITY))
    passing = (STATUS_OK, mx(PENDING))
    status, kept = status_and_records(failing)
    assert kept is not None and status_and_records(passing)[0] == STATUS_OK
    when = 1_700_000_002.25
    one = TagSample(7, 2, 192, when, status)
    many = TagSample(8, 2, 192, when, status, kept)
    for events in (
        [DataChange(1, 2, one), DataChange(1, 3, many), DataChange(1, 4, one)],
        [
            WriteComplete(1, 2, STATUS_OK),
            WriteComplete(1, 2, *status_and_records(passing)),
            OperationComplete(1, 2, STATUS_OK),
            OperationComplete(1, 2, *status_and_records(passing)),
            WriteComplete(1, 2, STATUS_OK),
        ],
    ):
        framed = EventEncoder(sid).encode(events, 5, 1_700_000_003.0)
        for i, (event, data) in enumerate(zip(events, framed, strict=True)):
            assert pb.MxEvent.FromString(unframe(data)) == event_to_pb(
                event, sid, 5 + i, 1_700_000_003.0
            ), event


def test_rows_from_a_worker_keep_every_record() -> None:
    reply = pb.BulkReadReply()
    row = reply.results.add(tag_address="Tank01.Level", was_successful=True, quality=192)
    row.value.CopyFrom(pb.MxValue(data_type=pb.MX_DATA_TYPE_DOUBLE, double_value=1.5))
    row.statuses.extend(status_to_pb(mx(r)) for r in (OK, PENDING))
    [result] = read_rows(reply)
    assert result.sample is not None
    assert result.sample.statuses == result.statuses == (mx(OK), mx(PENDING))


async def test_the_client_sees_every_record_over_grpc() -> None:
    platforms: list[FakePlatform] = []
    async with com_gateway(platforms) as (_sim, client):
        session = await client.open_session(client_session_name="statuses")
        try:
            h = await session.register("com")
            item = await session.add_item(h, "Tank01.Setpoint")
            [fake] = [p.server for p in platforms]
            assert fake is not None
            fake.records["tank01.setpoint"] = (OK, PENDING)
            await session.advise(h, item)
            async for event in session.events():
                assert isinstance(event, ClientDataChange)
                assert [(s.category, s.raw_category) for s in event.statuses] == [
                    (pb.MX_STATUS_CATEGORY_OK, 0),
                    (pb.MX_STATUS_CATEGORY_PENDING, 1),
                ]
                break
            [row] = await session.read_bulk(h, ["Tank01.Setpoint"])
            assert row.was_cached and len(row.statuses) == 2
            # The write's outcome: an OK record first, then two failures. Keeping only the
            # first record reported this write as done.
            fake.records["tank01.setpoint"] = (OK, SECURITY, OPERATIONAL)
            with pytest.raises(MxAccessError) as caught:
                await session.write(h, item, 5, wait=True)
            statuses = caught.value.statuses
            assert [(s.raw_category, s.raw_detected_by, s.detail) for s in statuses] == [
                (0, 1, 0),
                (6, 1, 321),
                (5, 3, 902),
            ]
            assert [s.detail for s in caught.value.failed_statuses] == [321, 902]
        finally:
            await session.close()
