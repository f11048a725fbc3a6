"""Event streams: order, resume, replay gaps, overflow policies, subscribers, stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from simhelpers import Gw, wait_for
from simhelpers import gateway as raw_gateway

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, OverflowPolicy, SessionOptions
from mxgateway_sim._domain import STATUS_OK, WriteComplete
from support.rawstub import read_to_end

MOVING = [
    "Line01.Counter",
    "Tank01.Level",
    "Tank01.Temperature",
    "Pump01.Speed",
    "Line01.BatchCount",
]


@asynccontextmanager
async def gateway(**options: Any) -> AsyncIterator[tuple[GatewaySimulator, Gw]]:
    """A simulator with custom session options and a client for it."""
    async with raw_gateway(session_options=SessionOptions(**options)) as (sim, channel):
        yield sim, Gw(channel, sim.api_key)


async def subscribe_moving(gw: Gw, sid: str) -> None:
    sh = await gw.register(sid)
    await gw.ok(sid, "subscribe_bulk", server_handle=sh, tag_addresses=MOVING)


def request(sid: str, after: int | None = None) -> pb.StreamEventsRequest:
    if after is None:
        return pb.StreamEventsRequest(session_id=sid)
    return pb.StreamEventsRequest(session_id=sid, after_worker_sequence=after)


async def read(call: Any) -> Any:
    message = await asyncio.wait_for(call.read(), 10)
    assert message is not grpc.aio.EOF, "stream ended early"
    return message


async def read_events(call: Any, count: int, *, batched: bool) -> list[pb.MxEvent]:
    events: list[pb.MxEvent] = []
    while len(events) < count:
        message = await read(call)
        events.extend(message.events if batched else [message])
    return events


def seqs(events: list[pb.MxEvent]) -> list[int]:
    return [e.worker_sequence for e in events]


@pytest.mark.parametrize("batched", [False, True])
async def test_stream_is_contiguous_from_one(gw: Gw, batched: bool) -> None:
    sid = await gw.open()
    await subscribe_moving(gw, sid)
    rpc = gw.stub.StreamEventBatches if batched else gw.stub.StreamEvents
    call = rpc(request(sid, 0), metadata=gw.md)
    events = await read_events(call, 40, batched=batched)
    call.cancel()
    assert seqs(events) == list(range(1, len(events) + 1))
    assert all(e.session_id == sid for e in events)
    assert all(e.family == pb.MX_EVENT_FAMILY_ON_DATA_CHANGE for e in events)
    assert all(e.worker_timestamp.seconds > 0 for e in events)


async def test_both_streams_carry_the_same_events(sim: GatewaySimulator, gw: Gw) -> None:
    sid = await gw.open()
    await subscribe_moving(gw, sid)
    single = gw.stub.StreamEvents(request(sid, 0), metadata=gw.md)
    first = await read_events(single, 20, batched=False)
    single.cancel()
    # One subscriber per session: the gateway lets go of the cancelled one a moment later.
    session = sim.sessions.get(sid) if sim.sessions else None
    assert session is not None
    await wait_for(lambda: not session.events.subscribers)
    batches = gw.stub.StreamEventBatches(request(sid, 0), metadata=gw.md)
    second = await read_events(batches, 20, batched=True)
    batches.cancel()
    assert [e.SerializeToString() for e in first[:20]] == [
        e.SerializeToString() for e in second[:20]
    ]


async def test_resume_after_a_dropped_stream_loses_and_repeats_nothing(
    sim: GatewaySimulator, gw: Gw
) -> None:
    sid = await gw.open()
    call = gw.stub.StreamEventBatches(request(sid), metadata=gw.md)
    await subscribe_moving(gw, sid)
    seen = await read_events(call, 15, batched=True)
    call.cancel()
    last = seen[-1].worker_sequence
    session = sim.sessions.get(sid) if sim.sessions else None
    assert session is not None
    await wait_for(lambda: session.events.next_seq > last + 30 and not session.events.subscribers)
    resumed = gw.stub.StreamEventBatches(request(sid, last), metadata=gw.md)
    more = await read_events(resumed, 40, batched=True)
    resumed.cancel()
    combined = seqs(seen) + seqs(more)
    assert combined == list(range(seqs(seen)[0], seqs(seen)[0] + len(combined)))


@pytest.mark.parametrize("batched", [False, True])
async def test_resume_ahead_of_the_log_delivers_only_events_above_it(
    sim: GatewaySimulator, gw: Gw, batched: bool
) -> None:
    # The contract: deliver events with worker_sequence *greater than* the resume point,
    # even when the point is beyond the last event the session has raised so far.
    sid = await gw.open()
    await subscribe_moving(gw, sid)
    session = sim.sessions.get(sid) if sim.sessions else None
    assert session is not None
    await wait_for(lambda: session.events.next_seq > 5)
    ahead = session.events.next_seq + 25
    rpc = gw.stub.StreamEventBatches if batched else gw.stub.StreamEvents
    call = rpc(request(sid, ahead), metadata=gw.md)
    events = await read_events(call, 10, batched=batched)
    call.cancel()
    assert seqs(events) == list(range(ahead + 1, ahead + 1 + len(events)))


async def test_replay_gap_is_reported_before_the_oldest_retained_event() -> None:
    async with gateway(replay_ring_size=8) as (sim, gw):
        sid = await gw.open()
        await subscribe_moving(gw, sid)
        assert sim.sessions is not None
        session = sim.sessions.get(sid)
        assert session is not None
        await wait_for(lambda: session.events.next_seq > 40)
        call = gw.stub.StreamEventBatches(request(sid, 2), metadata=gw.md)
        first = await read(call)
        notice = first.events[0]
        assert notice.worker_sequence == 0
        assert notice.family == pb.MX_EVENT_FAMILY_STREAM_FAULT
        fault = notice.stream_fault
        assert fault.kind == pb.STREAM_FAULT_KIND_REPLAY_GAP
        assert fault.first_missing_sequence == 3
        assert fault.missing_count >= 30
        following = await read_events(call, 5, batched=True)
        call.cancel()
        assert following[0].worker_sequence == 3 + fault.missing_count


async def test_overflow_disconnects_the_slow_subscriber_only() -> None:
    policy = OverflowPolicy.DISCONNECT_SUBSCRIBER  # selectable; not the default
    async with gateway(event_queue_limit=3, overflow_policy=policy) as (sim, gw):
        sid = await gw.open()
        call = gw.stub.StreamEvents(request(sid), metadata=gw.md)
        await wait_for(lambda: bool(sim.sessions and sim.sessions.get(sid).events.subscribers))  # type: ignore[union-attr]
        await subscribe_moving(gw, sid)
        notice = None
        delivered: list[int] = []
        while notice is None:
            message = await read(call)
            if message.HasField("stream_fault"):
                notice = message
            else:
                delivered.append(message.worker_sequence)
        fault = notice.stream_fault
        assert fault.kind == pb.STREAM_FAULT_KIND_EVENT_QUEUE_OVERFLOW
        assert fault.missing_count >= 4
        assert fault.first_missing_sequence == (delivered[-1] + 1 if delivered else 1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The session survives; the client resumes from the replay ring.
        await gw.ok(sid, "ping")
        resumed = gw.stub.StreamEventBatches(
            request(sid, fault.first_missing_sequence - 1), metadata=gw.md
        )
        batch = await read(resumed)
        resumed.cancel()
        assert batch.events[0].worker_sequence == fault.first_missing_sequence


async def test_fail_fast_overflow_faults_the_session_by_default() -> None:
    assert SessionOptions().overflow_policy is OverflowPolicy.FAIL_FAST  # upstream's default
    async with gateway(event_queue_limit=3) as (sim, gw):
        sid = await gw.open()
        call = gw.stub.StreamEventBatches(request(sid), metadata=gw.md)
        await wait_for(lambda: bool(sim.sessions and sim.sessions.get(sid).events.subscribers))  # type: ignore[union-attr]
        await subscribe_moving(gw, sid)
        kinds, code = await read_to_end(call, batched=True)
        assert code == grpc.StatusCode.ABORTED
        assert kinds == [pb.STREAM_FAULT_KIND_SESSION_FAULTED]
        reply = await gw.invoke(sid, "ping")
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_FAULTED
        closed = await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
        assert closed.final_state == pb.SESSION_STATE_CLOSED


async def test_second_subscriber_is_refused_by_default(sim: GatewaySimulator, gw: Gw) -> None:
    sid = await gw.open()
    first = gw.stub.StreamEvents(request(sid), metadata=gw.md)
    session = sim.sessions.get(sid) if sim.sessions else None
    assert session is not None
    await wait_for(lambda: bool(session.events.subscribers))
    second = gw.stub.StreamEventBatches(request(sid), metadata=gw.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(second.read(), 10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    first.cancel()


async def test_several_subscribers_when_enabled_and_their_limit() -> None:
    async with gateway(multiple_subscribers=True, max_subscribers=2) as (_sim, gw):
        sid = await gw.open()
        a = gw.stub.StreamEvents(request(sid, 0), metadata=gw.md)
        b = gw.stub.StreamEventBatches(request(sid, 0), metadata=gw.md)
        await subscribe_moving(gw, sid)
        got_a = await read_events(a, 12, batched=False)
        got_b = await read_events(b, 12, batched=True)
        assert seqs(got_a)[:12] == seqs(got_b)[:12] == list(range(1, 13))
        c = gw.stub.StreamEvents(request(sid), metadata=gw.md)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(c.read(), 10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        a.cancel()
        b.cancel()


async def test_unknown_session_stream_is_not_found(gw: Gw) -> None:
    for rpc in (gw.stub.StreamEvents, gw.stub.StreamEventBatches):
        call = rpc(request("session-" + "0" * 32), metadata=gw.md)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_close_while_streaming_sends_session_closed_then_ends_ok(
    sim: GatewaySimulator, gw: Gw
) -> None:
    sid = await gw.open()
    call = gw.stub.StreamEvents(request(sid), metadata=gw.md)
    await wait_for(lambda: bool(sim.sessions and sim.sessions.get(sid).events.subscribers))  # type: ignore[union-attr]
    await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
    notice = await read(call)
    assert notice.stream_fault.kind == pb.STREAM_FAULT_KIND_SESSION_CLOSED
    assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_client_cancel_leaves_the_session_intact(sim: GatewaySimulator, gw: Gw) -> None:
    sid = await gw.open()
    await subscribe_moving(gw, sid)
    call = gw.stub.StreamEventBatches(request(sid), metadata=gw.md)
    await read(call)
    call.cancel()
    session = sim.sessions.get(sid) if sim.sessions else None
    assert session is not None
    await wait_for(lambda: not session.events.subscribers)
    await gw.ok(sid, "ping")
    again = gw.stub.StreamEventBatches(request(sid), metadata=gw.md)
    assert (await read(again)).events
    again.cancel()


async def test_graceful_shutdown_ends_streams_with_server_shutdown(
    sim: GatewaySimulator, gw: Gw
) -> None:
    sid = await gw.open()
    await subscribe_moving(gw, sid)
    call = gw.stub.StreamEventBatches(request(sid), metadata=gw.md)
    await read(call)
    stopping = asyncio.ensure_future(sim.stop(grace=5))
    kinds, code = await read_to_end(call, batched=True)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert kinds == [pb.STREAM_FAULT_KIND_SERVER_SHUTDOWN]
    await stopping
    assert sim.sessions is not None and len(sim.sessions) == 0


async def test_drain_events_returns_each_event_once_in_order(sim: GatewaySimulator, gw: Gw) -> None:
    sid = await gw.open()
    await subscribe_moving(gw, sid)
    first = await gw.drain_until(sid, lambda ev: len(ev) >= 10)
    session = sim.sessions.get(sid) if sim.sessions else None
    assert session is not None
    await wait_for(lambda: session.events.next_seq > first[-1].worker_sequence + 5)
    limited = (await gw.ok(sid, "drain_events", max_events=3)).drain_events.events
    rest = await gw.drain(sid)
    order = seqs(first) + seqs(list(limited)) + seqs(rest)
    assert len(limited) == 3
    assert order == list(range(1, len(order) + 1))


async def test_a_busy_batch_stream_gathers_events_and_a_quiet_one_sends_at_once() -> None:
    # A linger far longer than the test: had the stream waited where it must not, the
    # reads below would time out. The linger ends at batch_linger_events queued events,
    # and at once when the session closes (nothing is held back from the end).
    async with gateway(batch_linger_s=3600.0, batch_linger_events=3) as (sim, gw):
        sid = await gw.open()
        call = gw.stub.StreamEventBatches(request(sid, 0), metadata=gw.md)
        assert sim.sessions is not None
        session = sim.sessions.get(sid)
        assert session is not None
        await wait_for(lambda: bool(session.events.subscribers))

        def raise_one(item: int) -> None:
            session.events.publish([WriteComplete(1, item, STATUS_OK)])

        raise_one(1)  # a quiet stream: goes out at once, alone
        assert seqs(list((await read(call)).events)) == [1]
        for item in (2, 3, 4):  # busy now: gathered until three are queued
            raise_one(item)
            await asyncio.sleep(0.01)  # each publish wakes the stream on its own
        assert seqs(list((await read(call)).events)) == [2, 3, 4]
        raise_one(5)  # held (busy, one queued) until the session closes
        await asyncio.sleep(0.01)
        await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
        events: list[pb.MxEvent] = []
        while (message := await asyncio.wait_for(call.read(), 10)) is not grpc.aio.EOF:
            events += message.events
        assert seqs(events)[0] == 5
        assert events[-1].stream_fault.kind == pb.STREAM_FAULT_KIND_SESSION_CLOSED


async def test_batch_linger_off_sends_each_publish_as_it_comes() -> None:
    async with gateway(batch_linger_s=0.0) as (sim, gw):
        sid = await gw.open()
        call = gw.stub.StreamEventBatches(request(sid, 0), metadata=gw.md)
        assert sim.sessions is not None
        session = sim.sessions.get(sid)
        assert session is not None
        await wait_for(lambda: bool(session.events.subscribers))
        for item in (1, 2, 3):
            session.events.publish([WriteComplete(1, item, STATUS_OK)])
            assert seqs(list((await read(call)).events)) == [item]
        call.cancel()
