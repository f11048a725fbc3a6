"""Session.events(): typed decoding, gaps, resume after drops, fallback, closing."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import grpc
import pytest
from client_fakes import SESSION_ID, FakeServer, StreamAbort, data_change

from mxgateway import (
    BufferedDataChange,
    ClientClosedError,
    DataChange,
    Event,
    EventGap,
    GatewayClient,
    MxGatewaySessionFaultedError,
    MxGatewaySessionNotFoundError,
    MxGatewaySessionStateError,
    MxGatewayUnavailableError,
    OperationComplete,
    StreamFault,
    WriteComplete,
)
from mxgateway._events import DECODE_CHUNK
from mxgateway.generated import mxaccess_gateway_pb2 as pb

KEY = "mxgw_ev_eventsSecret0123456789"


def fault(kind: int, first: int = 0, count: int = 0) -> pb.MxEvent:
    ev = pb.MxEvent(
        session_id=SESSION_ID, worker_sequence=0, family=pb.MX_EVENT_FAMILY_STREAM_FAULT
    )
    ev.stream_fault.kind = kind  # type: ignore[assignment]
    ev.stream_fault.message = "notice"
    ev.stream_fault.first_missing_sequence = first
    ev.stream_fault.missing_count = count
    return ev


def batch(*events: pb.MxEvent) -> pb.MxEventBatch:
    return pb.MxEventBatch(events=events)


async def _client(fake: FakeServer) -> GatewayClient:
    return await GatewayClient.connect(endpoint=fake.endpoint, api_key=KEY, plaintext=True)


async def _take(it: AsyncIterator[Event], n: int) -> list[Event]:
    out: list[Event] = []
    async for ev in it:
        out.append(ev)
        if len(out) == n:
            break
    return out


async def test_typed_events_of_every_family(fake: FakeServer) -> None:
    wc = pb.MxEvent(
        session_id=SESSION_ID, worker_sequence=2, family=pb.MX_EVENT_FAMILY_ON_WRITE_COMPLETE
    )
    wc.on_write_complete.server_handle = 1
    wc.on_write_complete.item_handle = 2
    wc.on_write_complete.statuses.add(success=1)
    oc = pb.MxEvent(
        session_id=SESSION_ID, worker_sequence=3, family=pb.MX_EVENT_FAMILY_OPERATION_COMPLETE
    )
    oc.operation_complete.item_handle = 9
    bd = pb.MxEvent(
        session_id=SESSION_ID, worker_sequence=4, family=pb.MX_EVENT_FAMILY_ON_BUFFERED_DATA_CHANGE
    )
    b = bd.on_buffered_data_change
    b.item_handle = 5
    b.data_type = pb.MX_DATA_TYPE_DOUBLE
    for i in range(3):
        smp = b.samples.add(quality=192)
        smp.value.double_value = i + 0.5
        smp.timestamp.seconds = 1_700_000_000 + i
    strdc = data_change(5)
    strdc.on_data_change.value.string_value = "hello"

    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield batch(data_change(1, 42), wc, oc)
        yield batch(bd, strdc)
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        session = client.attach_session(SESSION_ID)
        async with session.events() as events:
            got = await _take(events, 5)
            assert events.uses_batches
            assert events.last_worker_sequence == 5
    d1, w, o, buf, d5 = got
    assert isinstance(d1, DataChange)
    assert (d1.worker_sequence, d1.server_handle, d1.item_handle, d1.value, d1.quality) == (
        1,
        1,
        2,
        42,
        192,
    )
    assert d1.timestamp == datetime(2023, 11, 14, 22, 13, 21, 123456, tzinfo=timezone.utc)
    assert d1.timestamp.tzinfo is timezone.utc
    assert d1.is_good and d1.statuses[0].success == 1
    assert d1.raw.worker_sequence == 1
    assert isinstance(w, WriteComplete) and w.item_handle == 2 and w.statuses[0].success == 1
    assert isinstance(o, OperationComplete) and o.item_handle == 9
    assert isinstance(buf, BufferedDataChange)
    assert [s.value for s in buf.samples] == [0.5, 1.5, 2.5]
    assert buf.samples[2].timestamp == datetime.fromtimestamp(1_700_000_002, timezone.utc)
    assert isinstance(d5, DataChange) and d5.value == "hello"
    assert "DataChange(" in repr(d1)
    assert fake.servicer.rec.metadata["StreamEventBatches"][0]["authorization"] == f"Bearer {KEY}"


async def test_sequence_gap_is_reported_once_with_a_warning(
    fake: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield batch(data_change(1), data_change(2), data_change(6), data_change(7))
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    caplog.set_level(logging.WARNING, logger="mxgateway")
    async with await _client(fake) as client, client.attach_session(SESSION_ID).events() as events:
        got = await _take(events, 5)
        assert events.gap_count == 1 and events.missed_events == 3
    assert [type(e).__name__ for e in got] == [
        "DataChange",
        "DataChange",
        "EventGap",
        "DataChange",
        "DataChange",
    ]
    gap = got[2]
    assert isinstance(gap, EventGap)
    assert (gap.first_missing_sequence, gap.missing_count, gap.reason) == (3, 3, "sequence-gap")
    assert any("skipped 3 events" in r.getMessage() for r in caplog.records)


async def test_replay_gap_notice_becomes_an_event_gap(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        assert req.HasField("after_worker_sequence") and req.after_worker_sequence == 10
        yield batch(fault(pb.STREAM_FAULT_KIND_REPLAY_GAP, first=11, count=5), data_change(16))
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        events = client.attach_session(SESSION_ID).events(after_worker_sequence=10)
        async with events:
            gap, ev = await _take(events, 2)
            assert events.gap_count == 1 and events.missed_events == 5
    assert isinstance(gap, EventGap) and gap.reason == "replay-gap"
    assert (gap.first_missing_sequence, gap.missing_count) == (11, 5)
    assert isinstance(ev, DataChange) and ev.worker_sequence == 16


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, "overflow"])
async def test_resume_after_a_dropped_stream_without_duplicates_or_loss(
    fake: FakeServer, code: object
) -> None:
    log = [data_change(i, i * 10) for i in range(1, 31)]

    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        if attempt == 0:
            # By default the stream starts with the oldest event the gateway holds.
            assert req.HasField("after_worker_sequence") and req.after_worker_sequence == 0
            yield batch(*log[0:5])
            yield batch(*log[5:12])
            if code == "overflow":
                yield batch(fault(pb.STREAM_FAULT_KIND_EVENT_QUEUE_OVERFLOW))
                yield StreamAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow subscriber")
            yield StreamAbort(grpc.StatusCode.UNAVAILABLE, "connection dropped")
        assert req.after_worker_sequence == 12
        # Replay overlaps what the client already has: it must drop the duplicates.
        start = req.after_worker_sequence - 3
        for i in range(start, len(log), 4):
            yield batch(*log[i : i + 4])
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client, client.attach_session(SESSION_ID).events() as events:
        got = await _take(events, 30 + (1 if code == "overflow" else 0))
        assert events.resume_count == 1
        assert events.duplicates_dropped == 3
        assert events.gap_count == 0
    data = [e for e in got if isinstance(e, DataChange)]
    assert [e.worker_sequence for e in data] == list(range(1, 31))
    assert [e.value for e in data] == [i * 10 for i in range(1, 31)]
    if code == "overflow":
        faults = [e for e in got if isinstance(e, StreamFault)]
        assert [f.kind_name for f in faults] == ["EVENT_QUEUE_OVERFLOW"]
    assert fake.servicer.attempts["StreamEventBatches"] == 2


async def test_resume_gives_up_after_the_attempt_limit(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        if attempt == 0:
            yield batch(data_change(1))
        yield StreamAbort(grpc.StatusCode.UNAVAILABLE, "down")

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        events = client.attach_session(SESSION_ID).events(max_resume_attempts=2)
        first = await events.__anext__()
        assert isinstance(first, DataChange)
        with pytest.raises(MxGatewayUnavailableError):
            await events.__anext__()
        assert events.resume_count == 2
        with pytest.raises(StopAsyncIteration):
            await events.__anext__()
    assert fake.servicer.attempts["StreamEventBatches"] == 3


async def test_no_resume_when_disabled_and_not_for_other_errors(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield StreamAbort(grpc.StatusCode.NOT_FOUND, "unknown session")

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        with pytest.raises(MxGatewaySessionNotFoundError):
            await client.attach_session(SESSION_ID).events().__anext__()
    assert fake.servicer.attempts["StreamEventBatches"] == 1


async def test_falls_back_to_stream_events_on_unimplemented(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield data_change(1)
        yield data_change(2)
        await asyncio.Event().wait()

    fake.servicer.batches_unimplemented = True
    fake.servicer.events_plan = plan
    async with await _client(fake) as client:
        session = client.attach_session(SESSION_ID)
        async with session.events() as events:
            got = await _take(events, 2)
            assert not events.uses_batches
        assert [e.worker_sequence for e in got] == [1, 2]  # type: ignore[union-attr]
        # The client remembers: the next iterator starts on StreamEvents directly.
        async with session.events() as events2:
            await _take(events2, 1)
    assert len(fake.servicer.rec.metadata["StreamEventBatches"]) == 1
    assert fake.servicer.attempts["StreamEvents"] == 2


async def test_session_closed_notice_ends_iteration(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield batch(data_change(1), fault(pb.STREAM_FAULT_KIND_SESSION_CLOSED))

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        got = [e async for e in client.attach_session(SESSION_ID).events()]
    assert isinstance(got[0], DataChange)
    assert isinstance(got[1], StreamFault) and got[1].kind_name == "SESSION_CLOSED"
    assert len(got) == 2


async def test_session_faulted_notice_then_error(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield batch(fault(pb.STREAM_FAULT_KIND_SESSION_FAULTED))

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        events = client.attach_session(SESSION_ID).events()
        notice = await events.__anext__()
        assert (
            isinstance(notice, StreamFault) and notice.kind == pb.STREAM_FAULT_KIND_SESSION_FAULTED
        )
        with pytest.raises(MxGatewaySessionFaultedError):
            await events.__anext__()


@pytest.mark.parametrize("how", ["break", "aclose", "cancel"])
async def test_events_iterator_closes_the_stream(fake: FakeServer, how: str) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield batch(data_change(1), data_change(2))
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        session = client.attach_session(SESSION_ID)
        if how == "break":

            async def consume() -> None:
                async for _ in session.events():
                    break

            await consume()
            gc.collect()
        elif how == "aclose":
            events = session.events()
            await events.__anext__()
            await events.aclose()
            await events.aclose()
            with pytest.raises(StopAsyncIteration):
                await events.__anext__()
        else:
            events = session.events()

            async def read() -> None:
                async for _ in events:
                    pass

            task = asyncio.ensure_future(read())
            await asyncio.wait_for(fake.servicer.rec.started.wait(), 5)
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.wait_for(fake.servicer.rec.cancel_event.wait(), 5)
    assert fake.servicer.rec.cancelled["StreamEventBatches"] == 1


async def test_events_raw_and_batches_raw_are_untouched(fake: FakeServer) -> None:
    async def events_plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield data_change(3)
        yield data_change(3)  # duplicates are passed through as-is

    async def batches_plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield batch(data_change(1), data_change(5))

    fake.servicer.events_plan = events_plan
    fake.servicer.batches_plan = batches_plan
    async with await _client(fake) as client:
        session = client.attach_session(SESSION_ID)
        raw = [e async for e in session.events_raw(after_worker_sequence=2)]
        assert [e.worker_sequence for e in raw] == [3, 3]
        assert all(isinstance(e, pb.MxEvent) for e in raw)
        batches = [b async for b in client.stream_event_batches_raw(SESSION_ID)]
        assert [len(b.events) for b in batches] == [2]
    assert fake.servicer.rec.stream_requests[0].after_worker_sequence == 2
    assert not fake.servicer.rec.stream_requests[1].HasField("after_worker_sequence")


def test_negative_resume_point_is_rejected() -> None:
    from mxgateway._client import _stream_request

    with pytest.raises(ValueError):
        _stream_request(SESSION_ID, -1)


async def test_no_task_left_behind(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        if attempt == 0:
            yield batch(data_change(1))
            yield StreamAbort(grpc.StatusCode.UNAVAILABLE, "drop")
        yield batch(data_change(2))
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    before = asyncio.all_tasks()
    client = await _client(fake)
    session = await client.open_session("leak")
    events = session.events()
    assert len(await _take(events, 2)) == 2
    await events.aclose()
    await session.close()
    await client.close()
    await asyncio.wait_for(fake.servicer.rec.cancel_event.wait(), 5)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while leftovers := _client_tasks(asyncio.all_tasks() - before - {asyncio.current_task()}):
        assert loop.time() < deadline, leftovers
        await asyncio.sleep(0.01)


def _client_tasks(tasks: set[asyncio.Task[object]]) -> list[str]:
    """Names of tasks that are not the fake server's own (its accept loop and handlers)."""
    names = [getattr(t.get_coro(), "__qualname__", repr(t)) for t in tasks]
    return [n for n in names if not n.startswith(("AioServer", "_handle", "FakeGateway"))]


async def test_closing_the_client_ends_a_running_event_stream(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield batch(data_change(1))
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    client = await _client(fake)
    events = client.attach_session(SESSION_ID).events()
    assert isinstance(await events.__anext__(), DataChange)
    reader = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0.05)
    await client.close()
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(reader, 5)
    assert fake.servicer.attempts["StreamEventBatches"] == 1
    await asyncio.wait_for(fake.servicer.rec.cancel_event.wait(), 5)


async def test_a_timed_out_read_loses_nothing(fake: FakeServer) -> None:
    gate = asyncio.Event()

    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        if attempt == 0:
            assert req.HasField("after_worker_sequence") and req.after_worker_sequence == 0
            yield batch(data_change(1), data_change(2))
            await asyncio.Event().wait()
        assert req.after_worker_sequence == 2
        await gate.wait()
        yield batch(data_change(3), data_change(4))
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client, client.attach_session(SESSION_ID).events() as events:
        first = [await events.__anext__(), await events.__anext__()]
        # Poll with a timeout while nothing comes: the read is cancelled...
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(events.__anext__(), 0.2)
        await asyncio.wait_for(fake.servicer.rec.cancel_event.wait(), 5)
        # ...and the next read re-subscribes after the last delivered event.
        gate.set()
        rest = [await asyncio.wait_for(events.__anext__(), 5) for _ in range(2)]
    got = [e.worker_sequence for e in first + rest]  # type: ignore[union-attr]
    assert got == [1, 2, 3, 4]
    assert fake.servicer.attempts["StreamEventBatches"] == 2


async def test_resubscription_retries_while_the_old_subscriber_lingers(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        if attempt == 0:
            yield batch(data_change(1))
            yield StreamAbort(grpc.StatusCode.UNAVAILABLE, "drop")
        if attempt == 1:
            yield StreamAbort(grpc.StatusCode.FAILED_PRECONDITION, "already has a subscriber")
        assert req.after_worker_sequence == 1
        yield batch(data_change(2))
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client, client.attach_session(SESSION_ID).events() as events:
        got = await _take(events, 2)
        assert events.resume_count == 2
    assert [e.worker_sequence for e in got] == [1, 2]  # type: ignore[union-attr]


async def test_first_subscription_failed_precondition_is_not_retried(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield StreamAbort(grpc.StatusCode.FAILED_PRECONDITION, "already has a subscriber")

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        with pytest.raises(MxGatewaySessionStateError):
            await client.attach_session(SESSION_ID).events().__anext__()
    assert fake.servicer.attempts["StreamEventBatches"] == 1


async def test_reopening_right_after_closing_waits_for_the_old_subscriber(
    fake: FakeServer,
) -> None:
    # The gateway lets go of a cancelled subscriber a moment after the client closed it;
    # a new events() on the same Session in that moment gets FAILED_PRECONDITION once.
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        if attempt == 1:
            yield StreamAbort(grpc.StatusCode.FAILED_PRECONDITION, "already has a subscriber")
        yield batch(data_change(attempt + 1))
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        session = client.attach_session(SESSION_ID)
        async with session.events() as first:
            assert (await first.__anext__()).worker_sequence == 1  # type: ignore[union-attr]
        assert first.closed
        async with session.events(new_only=True) as second:
            event = await asyncio.wait_for(second.__anext__(), 5)
            assert event.worker_sequence == 3  # type: ignore[union-attr]
            assert second.resume_count == 1
    assert fake.servicer.attempts["StreamEventBatches"] == 3


async def test_new_only_asks_for_live_events_and_rejects_a_resume_point(
    fake: FakeServer,
) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield batch(data_change(7))
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        session = client.attach_session(SESSION_ID)
        with pytest.raises(ValueError, match="not both"):
            session.events(3, new_only=True)
        async with session.events(new_only=True) as events:
            event = await asyncio.wait_for(events.__anext__(), 5)
    assert isinstance(event, DataChange) and event.worker_sequence == 7
    assert not fake.servicer.rec.stream_requests[0].HasField("after_worker_sequence")


async def test_last_worker_sequence_counts_only_events_handed_out(fake: FakeServer) -> None:
    # One batch of six events is decoded at once; the resume point must follow the
    # caller, not the decoder (a gap notice counts up to its end).
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield batch(*(data_change(i) for i in range(1, 7)))
        yield batch(fault(pb.STREAM_FAULT_KIND_REPLAY_GAP, first=7, count=3), data_change(10))
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        events = client.attach_session(SESSION_ID).events(after_worker_sequence=0)
        async with events:
            assert events.last_worker_sequence == 0
            seen = []
            for _ in range(8):
                seen.append(await asyncio.wait_for(events.__anext__(), 5))
                seen.append(events.last_worker_sequence)
    assert seen[1::2] == [1, 2, 3, 4, 5, 6, 9, 10]
    assert events.last_worker_sequence == 10


async def test_a_batch_larger_than_a_decode_chunk_arrives_whole_and_resumes_after_it(
    fake: FakeServer,
) -> None:
    # A batch is decoded DECODE_CHUNK events at a time: every event still arrives once, in
    # order, equal to what the gateway sent; the resume point follows the caller inside the
    # batch, and a drop right after the batch resumes after its last event.
    n = 2 * DECODE_CHUNK + 37
    log = [data_change(i, i) for i in range(1, n + 6)]

    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        if attempt == 0:
            yield batch(*log[:n])
            yield StreamAbort(grpc.StatusCode.UNAVAILABLE, "connection dropped")
        assert req.after_worker_sequence == n
        yield batch(*log[n:])
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        events = client.attach_session(SESSION_ID).events()
        async with events:
            got: list[Event] = []
            for _ in range(DECODE_CHUNK + 5):
                got.append(await asyncio.wait_for(events.__anext__(), 5))
            assert events.last_worker_sequence == DECODE_CHUNK + 5
            got += await _take(events, len(log) - len(got))
            assert events.resume_count == 1 and events.duplicates_dropped == 0
    assert all(type(e) is DataChange for e in got)
    changes = [e for e in got if isinstance(e, DataChange)]
    assert [e.worker_sequence for e in changes] == list(range(1, len(log) + 1))
    assert [e.value for e in changes] == list(range(1, len(log) + 1))
    assert [e.raw for e in changes] == log
    assert [e.timestamp for e in changes] == [
        datetime.fromtimestamp(ev.on_data_change.timestamp.seconds + 0.123456, timezone.utc)
        for ev in log
    ]
    assert all(
        list(e.statuses) == list(ev.on_data_change.statuses)
        for e, ev in zip(changes, log, strict=True)
    )


async def test_async_for_hands_out_what_anext_would_and_stops_at_aclose(
    fake: FakeServer,
) -> None:
    # `async for` runs a generator over the same buffer as __anext__ (cheaper per event):
    # the two mixed hand out every event once, in order, with the resume point following
    # the caller; aclose() inside the loop ends it at once, though events of the received
    # batch are still buffered.
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield batch(*(data_change(i, i) for i in range(1, 7)))
        yield batch(*(data_change(i, i) for i in range(7, 13)))
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    async with await _client(fake) as client:
        events = client.attach_session(SESSION_ID).events(after_worker_sequence=0)
        got: list[tuple[int, int]] = []
        first = await asyncio.wait_for(events.__anext__(), 5)
        assert isinstance(first, DataChange)
        got.append((first.worker_sequence, events.last_worker_sequence))
        async for ev in events:
            assert isinstance(ev, DataChange)
            got.append((ev.worker_sequence, events.last_worker_sequence))
            if ev.worker_sequence == 3:
                nxt = await asyncio.wait_for(events.__anext__(), 5)
                assert isinstance(nxt, DataChange)
                got.append((nxt.worker_sequence, events.last_worker_sequence))
            if ev.worker_sequence == 8:
                await events.aclose()
        assert events.closed
        with pytest.raises(StopAsyncIteration):
            await events.__anext__()
    assert got == [(i, i) for i in range(1, 9)]
