"""Overload: a slow consumer ends in the documented policy; 50 sessions x 200 items hold up.

The figures of the load test are printed (``-s``) and recorded in docs/reliability-faults.md.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time

import grpc
import psutil
import pytest
from faulthelpers import DEADLINE, Raw, analog_catalog, analog_refs, connect, wait_for

from mxgateway import DataChange, EventGap, EventStream, Session, StreamFault
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, OverflowPolicy, SessionOptions

QUEUE_LIMIT = 200
DISCONNECT = OverflowPolicy.DISCONNECT_SUBSCRIBER  # the selectable policy these tests cover
RING = 500


def _overloading_gateway() -> GatewaySimulator:
    """400 analog items changing every 10 ms, each subscriber's queue bounded at
    ``QUEUE_LIMIT`` and disconnected when it overflows (the ring keeps ``RING`` events)."""
    options = SessionOptions(
        event_queue_limit=QUEUE_LIMIT, replay_ring_size=RING, overflow_policy=DISCONNECT
    )
    return GatewaySimulator(
        catalog=analog_catalog(400), scan_interval_ms=10, flaky_one_in=0, session_options=options
    )


def _queues_within_limit(sim: GatewaySimulator) -> bool:
    assert sim.sessions is not None
    for session in sim.sessions.sessions():
        log = session.events
        assert len(log._ring) <= RING
        for sub in log.subscribers:
            if len(sub.queue) > QUEUE_LIMIT:
                return False
    return True


async def test_slow_consumer_is_disconnected_and_others_are_unaffected() -> None:
    """Raw stream that stops reading: EVENT_QUEUE_OVERFLOW then RESOURCE_EXHAUSTED."""
    async with (
        _overloading_gateway() as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
        await connect(sim) as client,
    ):
        raw = Raw(channel, sim.api_key)
        slow = await raw.open("slow")
        h = (await raw.ok(slow, "register", client_name="slow")).register.server_handle
        await raw.ok(slow, "subscribe_bulk", server_handle=h, tag_addresses=analog_refs(200))
        # A healthy neighbour on another session, read through the public client.
        healthy = await client.open_session(client_session_name="healthy")
        hh = await healthy.register("healthy")
        await healthy.subscribe_bulk(hh, analog_refs(200)[:50])
        neighbour: list[int] = []
        problems: list[object] = []

        async def read_neighbour(events: EventStream) -> None:
            async for event in events:
                if isinstance(event, DataChange):
                    neighbour.append(event.worker_sequence)
                else:
                    problems.append(event)

        neighbour_events = healthy.events(after_worker_sequence=0)
        reader = asyncio.ensure_future(read_neighbour(neighbour_events))
        call = raw.stub.StreamEvents(pb.StreamEventsRequest(session_id=slow), metadata=raw.md)
        try:
            session = sim.sessions.get(slow) if sim.sessions else None
            assert session is not None
            overflowed = False
            deadline = time.monotonic() + DEADLINE
            # Never read: the server's queue for this subscriber must stay bounded until
            # the overflow disconnects it.
            while not overflowed:
                assert _queues_within_limit(sim)
                sub_gone = not session.events.subscribers
                overflowed = sub_gone and session.events.next_seq > QUEUE_LIMIT
                assert time.monotonic() < deadline, "the slow subscriber never overflowed"
                await asyncio.sleep(0.01)
            got: list[pb.MxEvent] = []
            try:
                async for event in call:
                    got.append(event)
                raise AssertionError("the stream of a slow subscriber ended OK")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "after_worker_sequence" in (exc.details() or "")
            last = got[-1]
            assert last.stream_fault.kind == pb.STREAM_FAULT_KIND_EVENT_QUEUE_OVERFLOW
            assert last.worker_sequence == 0 and last.stream_fault.missing_count > 0
            delivered = [e.worker_sequence for e in got[:-1]]
            assert delivered, "nothing was sent before the overflow"
            first = delivered[0]
            assert delivered == list(range(first, first + len(delivered)))
            # What was lost is named: it starts right after what was delivered.
            assert last.stream_fault.first_missing_sequence == delivered[-1] + 1
            # The session itself is fine and can resume from the replay ring.
            assert (await raw.invoke(slow, "ping")).protocol_status.code == 1
            await wait_for(lambda: len(neighbour) >= 500, what="neighbour events")
            assert neighbour == list(range(1, len(neighbour) + 1))
            assert not problems
        finally:
            call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await neighbour_events.aclose()
            await healthy.close()


async def test_slow_public_consumer_sees_overflow_and_a_typed_gap() -> None:
    """Session.events() read too slowly: overflow notice, resume, EventGap; never silent."""
    async with (
        _overloading_gateway() as sim,
        await connect(sim) as client,
        await client.open_session(client_session_name="slow") as session,
    ):
        h = await session.register("slow")
        await session.subscribe_bulk(h, analog_refs(400))
        seen_overflow = False
        gaps: list[EventGap] = []
        last = 0
        async with session.events(new_only=True) as events:  # the first one sets `last`

            async def consume() -> None:
                nonlocal seen_overflow, last
                async for event in events:
                    if isinstance(event, StreamFault):
                        assert event.kind == pb.STREAM_FAULT_KIND_EVENT_QUEUE_OVERFLOW, event
                        seen_overflow = True
                    elif isinstance(event, EventGap):
                        assert event.first_missing_sequence == last + 1
                        gaps.append(event)
                        last = event.first_missing_sequence + event.missing_count - 1
                    elif isinstance(event, DataChange):
                        if last:
                            assert event.worker_sequence == last + 1, (event.worker_sequence, last)
                        last = event.worker_sequence
                        if not gaps:
                            await asyncio.sleep(0.002)  # the deliberately slow consumer
                        elif last > gaps[-1].first_missing_sequence + 100:
                            return
                    assert _queues_within_limit(sim)

            await asyncio.wait_for(consume(), DEADLINE)
            assert seen_overflow and gaps
            assert events.gap_count == len(gaps) and events.missed_events > 0
            assert events.resume_count >= 1


class _Reader:
    """Reads one session's typed events and checks the sequence as it goes."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.events = session.events(after_worker_sequence=0)
        self.count = 0
        self.last = 0
        self.problems: list[object] = []

    async def run(self) -> None:
        async for event in self.events:
            if isinstance(event, DataChange):
                if event.worker_sequence != self.last + 1:
                    self.problems.append((self.last, event.worker_sequence))
                self.last = event.worker_sequence
                self.count += 1
            else:
                self.problems.append(event)


SESSIONS = 50
ITEMS = 200
RUN_SECONDS = 4.0


@pytest.mark.slow
async def test_load_50_sessions_x_200_items() -> None:
    catalog = analog_catalog(SESSIONS * ITEMS)
    refs = analog_refs(SESSIONS * ITEMS)
    process = psutil.Process(os.getpid())
    async with (
        GatewaySimulator(
            catalog=catalog,
            scan_interval_ms=200,
            flaky_one_in=0,
            # One key opens every session here (the per-key quota defaults to 16).
            session_options=SessionOptions(max_sessions_per_key=SESSIONS),
        ) as sim,
        await connect(sim) as client,
    ):
        sessions = [
            await client.open_session(client_session_name=f"load-{i}") for i in range(SESSIONS)
        ]
        handles: list[tuple[Session, int, list[int]]] = []
        readers: list[_Reader] = []
        tasks: list[asyncio.Future[None]] = []
        try:
            for i, session in enumerate(sessions):
                # Read from the first event on, before the replay ring could drop any.
                readers.append(_Reader(session))
                tasks.append(asyncio.ensure_future(readers[-1].run()))
                h = await session.register("load")
                rows = await session.subscribe_bulk(h, refs[i * ITEMS : (i + 1) * ITEMS])
                assert all(r.was_successful for r in rows)
                handles.append((session, h, [r.item_handle for r in rows]))
            await asyncio.sleep(1.0)  # warm-up: allocations settle before the baseline
            gc.collect()
            rss_before = process.memory_info().rss
            count_before = sum(r.count for r in readers)
            started = time.monotonic()
            # The load runs (nothing is asserted on timing); the server's buffers stay
            # within their bounds throughout.
            limits = sim.sessions.options if sim.sessions else None
            assert limits is not None
            while time.monotonic() - started < RUN_SECONDS:
                for s in sim.sessions.sessions() if sim.sessions else ():
                    assert len(s.events._ring) <= limits.replay_ring_size
                    assert all(
                        len(q.queue) <= limits.event_queue_limit for q in s.events.subscribers
                    )
                await asyncio.sleep(0.25)
            elapsed = time.monotonic() - started
            count_during = sum(r.count for r in readers) - count_before
            gc.collect()
            rss_after = process.memory_info().rss
            # Stop production, then every reader must reach the server's last sequence.
            for session, h, items in handles:
                await session.unsubscribe_bulk(h, items)
            assert sim.sessions is not None
            produced = {s.id: s.events.next_seq - 1 for s in sim.sessions.sessions()}

            def caught_up() -> bool:
                return all(r.last == produced[r.session.session_id] for r in readers)

            await wait_for(caught_up, what="every reader to reach the last produced event")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for r in readers:
                await r.events.aclose()
        assert all(not r.problems for r in readers), [r.problems[:3] for r in readers if r.problems]
        assert all(r.events.gap_count == 0 for r in readers)
        total = sum(r.count for r in readers)
        assert total == sum(produced.values())
        assert count_during > 0
        growth_mb = (rss_after - rss_before) / 2**20
        print(
            f"\nLOAD sessions={SESSIONS} items/session={ITEMS} events={total} "
            f"measured={count_during} in {elapsed:.2f}s ({count_during / elapsed:,.0f}/s) "
            f"rss_before={rss_before / 2**20:.1f}MiB rss_after={rss_after / 2**20:.1f}MiB "
            f"growth={growth_mb:.1f}MiB"
        )
        assert growth_mb < 64, f"RSS grew {growth_mb:.1f} MiB during the steady load"
        for session in sessions:
            await session.close()
