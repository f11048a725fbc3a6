"""After an EventGap on the same session the subscription reads its items again.

A scripted fake gateway produces the gap on demand (a jump of the worker sequence) and
counts the ``READ_BULK`` commands; the simulator test loses a real change in a replay gap
(the subscriber is ended with an overflow while the consumer is stalled and the replay ring
moves on) and checks that the changed tag, which never changes again, is resynchronised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from reliability_fakes import SESSION_ID, FakeGatewayServer, FlakyGateway, data_change
from reliability_sim import client_options, plant_catalog, references

from mxgateway import (
    EventGap,
    GatewayClient,
    Session,
    Subscription,
    SubscriptionEvent,
    SubscriptionState,
    TagValue,
)
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, InMemoryCatalog, SessionOptions
from mxgateway_sim._builtin import tag
from mxgateway_sim._domain import MX_DOUBLE
from mxgateway_sim._events import EndReason, StreamEnd
from support.tasks import client_tasks as _client_tasks

DEADLINE = 20.0
TAGS = ["Area.A", "Area.B", "Area.C"]
GAP = 5  # sequences skipped by the fake after the initial values


class GapGateway(FlakyGateway):
    """Streams one initial value per item (``initial_items`` of them), then skips ``GAP``
    sequences and goes on with changes of item 1 only: the other items never change after
    the gap. ``ReadBulk`` answers ``1000 + item handle`` for every tag (cached)."""

    def __init__(self, initial_items: int | None = None) -> None:
        super().__init__()
        self.initial_items = initial_items
        self.reads: list[list[str]] = []
        self.all_subscribed = asyncio.Event()

    async def Invoke(self, request: Any, context: Any) -> pb.MxCommandReply:
        reply = await super().Invoke(request, context)
        if len(self.subscribed) >= len(TAGS):
            self.all_subscribed.set()
        if request.command.kind == pb.MX_COMMAND_KIND_READ_BULK:
            tags = list(request.command.read_bulk.tag_addresses)
            self.reads.append(tags)
            for name in tags:
                row = reply.bulk_read.results.add(
                    tag_address=name, quality=192, was_successful=True, was_cached=True
                )
                row.value.int32_value = 1000 + self.subscribed.index(name) + 1
                row.value.data_type = pb.MX_DATA_TYPE_INTEGER
                row.value.variant_type = pb.VT_I4
                row.timestamp.seconds = 1_800_000_000
        return reply

    async def StreamEventBatches(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.MxEventBatch]:
        self.stream_requests.append(request)
        after = request.after_worker_sequence if request.HasField("after_worker_sequence") else 0
        count = len(TAGS) if self.initial_items is None else self.initial_items
        seq = after  # a resumed stream goes on after ``after``
        if not after:
            await self.all_subscribed.wait()  # the stream starts before SubscribeBulk
            yield pb.MxEventBatch(events=[data_change(i, i) for i in range(1, count + 1)])
            seq = count + GAP
        while True:
            seq += 1
            yield pb.MxEventBatch(events=[data_change(seq, 1)])
            await asyncio.sleep(self.event_interval)


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGatewayServer]:
    async with FakeGatewayServer(GapGateway()) as server:
        yield server


async def _connect(endpoint: str) -> GatewayClient:
    return await GatewayClient.connect(options=client_options(endpoint, "key"))


async def _until_live_after_gap(sub: Subscription, live: int) -> list[SubscriptionEvent]:
    """Everything up to the ``live``-th non-resynchronised value after the first gap."""
    out: list[SubscriptionEvent] = []

    async def run() -> None:
        seen_gap = False
        after = 0
        async for update in sub:
            out.append(update)
            if isinstance(update, EventGap):
                seen_gap = True
            elif seen_gap and isinstance(update, TagValue) and not update.resynchronized:
                after += 1
                if after == live:
                    return

    await asyncio.wait_for(run(), DEADLINE)
    return out


async def test_a_gap_is_followed_by_a_read_of_every_item(gateway: FakeGatewayServer) -> None:
    fake = gateway.servicer
    assert isinstance(fake, GapGateway)
    async with await _connect(gateway.endpoint) as client:
        sub = client.subscribe(TAGS, chunk_size=2)
        async with sub:
            updates = await _until_live_after_gap(sub, 3)
            assert sub.state is SubscriptionState.CONNECTED
            assert sub.session_id == SESSION_ID and sub.recoveries == 0
            assert sub.gap_resyncs == 1
    # initial values, the gap, the values read again, then the live values
    first = updates[: len(TAGS)]
    assert all(isinstance(u, TagValue) and u.initial and not u.resynchronized for u in first)
    gap = updates[len(TAGS)]
    assert isinstance(gap, EventGap)
    assert (gap.first_missing_sequence, gap.missing_count) == (len(TAGS) + 1, GAP)
    resync = updates[len(TAGS) + 1 : 2 * len(TAGS) + 1]
    assert [u.tag for u in resync if isinstance(u, TagValue)] == TAGS
    for handle, update in enumerate(resync, start=1):
        assert isinstance(update, TagValue)
        assert update.resynchronized and not update.initial
        assert update.value == 1000 + handle
        assert update.item_handle == handle and update.session_id == SESSION_ID
        assert update.quality == 192 and update.is_good
        assert update.timestamp.timestamp() == 1_800_000_000
        assert update.worker_sequence == len(TAGS) + GAP  # the end of the gap
    live = updates[2 * len(TAGS) + 1 :]
    assert live and all(isinstance(u, TagValue) and not u.resynchronized for u in live)
    # the live value that arrives after the read wins: it comes later, for item 1
    assert [u.tag for u in live if isinstance(u, TagValue)] == [TAGS[0]] * len(live)
    assert live[0].worker_sequence == len(TAGS) + GAP + 1  # type: ignore[union-attr]
    # SubscribeBulk's chunks: 2 + 1 items; one stream, no other session
    assert fake.reads == [TAGS[:2], TAGS[2:]]
    assert fake.calls[pb.MX_COMMAND_KIND_READ_BULK] == 2
    assert fake.open_session_calls == 1 and len(fake.stream_requests) == 1


async def test_with_resync_on_gap_off_nothing_is_read(gateway: FakeGatewayServer) -> None:
    fake = gateway.servicer
    assert isinstance(fake, GapGateway)
    async with (
        await _connect(gateway.endpoint) as client,
        client.subscribe(TAGS, resync_on_gap=False) as sub,
    ):
        assert sub.resync_on_gap is False
        updates = await _until_live_after_gap(sub, 3)
        assert sub.gap_resyncs == 0
    assert sum(isinstance(u, EventGap) for u in updates) == 1
    assert not any(isinstance(u, TagValue) and u.resynchronized for u in updates)
    assert fake.calls[pb.MX_COMMAND_KIND_READ_BULK] == 0 and fake.reads == []


async def test_the_constructor_option_turns_it_off(gateway: FakeGatewayServer) -> None:
    fake = gateway.servicer
    assert isinstance(fake, GapGateway)
    async with (
        await _connect(gateway.endpoint) as client,
        Subscription(client, TAGS, resync_on_gap=False) as sub,
    ):
        assert sub.resync_on_gap is False
        updates = await _until_live_after_gap(sub, 2)
    assert not any(isinstance(u, TagValue) and u.resynchronized for u in updates)
    assert fake.calls[pb.MX_COMMAND_KIND_READ_BULK] == 0


async def test_an_item_whose_first_value_was_lost_gets_it_from_the_read() -> None:
    fake = GapGateway(initial_items=1)  # items 2 and 3 deliver nothing before the gap
    async with (
        FakeGatewayServer(fake) as server,
        await _connect(server.endpoint) as client,
        client.subscribe(TAGS) as sub,
    ):
        updates = await _until_live_after_gap(sub, 1)
        assert sub.awaiting_first_value == 0
    values = [u for u in updates if isinstance(u, TagValue)]
    assert [(u.tag, u.initial, u.resynchronized) for u in values[:4]] == [
        (TAGS[0], True, False),
        (TAGS[0], False, True),
        (TAGS[1], True, True),
        (TAGS[2], True, True),
    ]


async def test_a_refused_read_skips_the_resync_and_keeps_the_session() -> None:
    fake = GapGateway()
    fake.fail_times[pb.MX_COMMAND_KIND_READ_BULK] = 1
    fake.fail_code = grpc.StatusCode.PERMISSION_DENIED  # e.g. a key without the read scope
    async with (
        FakeGatewayServer(fake) as server,
        await _connect(server.endpoint) as client,
        client.subscribe(TAGS) as sub,
    ):
        updates = await _until_live_after_gap(sub, 2)
        assert sub.state is SubscriptionState.CONNECTED and sub.error is None
        assert sub.gap_resyncs == 0 and sub.recoveries == 0
    assert sum(isinstance(u, EventGap) for u in updates) == 1
    assert not any(isinstance(u, TagValue) and u.resynchronized for u in updates)
    assert fake.calls[pb.MX_COMMAND_KIND_READ_BULK] == 1
    assert fake.open_session_calls == 1


async def test_a_read_lost_with_the_connection_is_done_after_reattaching() -> None:
    """The read fails with UNAVAILABLE (no retries): the stream is given up, the
    subscription re-attaches to its session and reads the items there."""
    fake = GapGateway()
    fake.fail_times[pb.MX_COMMAND_KIND_READ_BULK] = 1
    async with FakeGatewayServer(fake) as server:
        options = client_options(server.endpoint, "key", retry=None)
        async with (
            await GatewayClient.connect(options=options) as client,
            client.subscribe(TAGS, reconnect=None) as sub,
        ):
            updates = await _until_live_after_gap(sub, 2)
            assert sub.reattachments == 1 and sub.recoveries == 0
            assert sub.session_id == SESSION_ID and sub.gap_resyncs == 1
    resync = [u for u in updates if isinstance(u, TagValue) and u.resynchronized]
    assert [u.tag for u in resync] == TAGS
    assert all(u.worker_sequence == len(TAGS) + GAP for u in resync)
    assert fake.calls[pb.MX_COMMAND_KIND_READ_BULK] == 2
    assert fake.open_session_calls == 1
    # the re-attached stream resumed after the gap: no second gap, nothing read twice
    assert sum(isinstance(u, EventGap) for u in updates) == 1
    assert fake.stream_requests[-1].after_worker_sequence >= len(TAGS) + GAP


async def test_closing_during_the_read_leaves_no_task() -> None:
    fake = GapGateway()
    entered = asyncio.Event()
    release = asyncio.Event()
    invoke = fake.Invoke

    async def slow_invoke(request: Any, context: Any) -> pb.MxCommandReply:
        if request.command.kind == pb.MX_COMMAND_KIND_READ_BULK:
            entered.set()
            await release.wait()
        return await invoke(request, context)

    fake.Invoke = slow_invoke  # type: ignore[method-assign]
    async with FakeGatewayServer(fake) as server, await _connect(server.endpoint) as client:
        sub = client.subscribe(TAGS)
        async with sub:
            consumer = asyncio.ensure_future(_until_live_after_gap(sub, 1))
            await asyncio.wait_for(entered.wait(), DEADLINE)
            task = sub._task
            assert task is not None
        assert task.done() and sub.closed and sub.error is None
        release.set()
        await asyncio.wait_for(consumer, DEADLINE)  # the iteration ended
        assert _client_tasks() == set()


# -- the simulator: a real change lost in a replay gap ---------------------------------------

STATIC = "Tank99.Setpoint"  # a static attribute: it changes only when written


async def test_a_replay_gap_on_the_simulator_resynchronises_every_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = 20
    catalog = InMemoryCatalog(
        [*plant_catalog(items).all_tags(), tag("Tank99", "Setpoint", MX_DOUBLE)]
    )
    tags = [*references(items), STATIC]
    options = SessionOptions(replay_ring_size=50)
    async with (
        GatewaySimulator(catalog=catalog, scan_interval_ms=50, session_options=options) as sim,
        await GatewayClient.connect(options=client_options(sim.endpoint, sim.api_key)) as client,
        client.subscribe(tags, queue_size=1) as sub,
    ):
        assert sim.sessions is not None
        seen: set[str] = set()

        async def first_values() -> None:
            async for update in sub:
                if isinstance(update, TagValue):
                    seen.add(update.tag)
                    if seen == set(tags):
                        return

        await asyncio.wait_for(first_values(), DEADLINE)
        sid = sub.session_id
        assert sid is not None
        gateway_session = sim.sessions.get(sid)
        assert gateway_session is not None
        log = gateway_session.events
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        # The consumer stalls: the bounded queue fills and the pump stops reading.
        while not sub._queue.full():
            assert loop.time() < deadline, "the queue never filled"
            await asyncio.sleep(0.01)
        # The gateway drops the subscriber (as after an overflow) ...
        log.end_all(StreamEnd(EndReason.OVERFLOW, "test: subscriber dropped", log.next_seq, 0))
        # ... the static tag changes while nobody listens, and the ring forgets the change.
        async with await client.open_session("writer") as writer:
            handle = await writer.register("writer")
            item = await writer.add_item(handle, STATIC)
            await writer.advise(handle, item)
            await writer.write(handle, item, 42.5)
            written = log.next_seq
            while log.ring_first_seq <= written:  # the write's event left the ring
                assert loop.time() < deadline, "the replay ring never moved on"
                await asyncio.sleep(0.01)
        resyncs_before = sub.gap_resyncs
        reads: list[int] = []
        read_bulk = Session.read_bulk

        async def spy(self: Session, *args: Any, **kwargs: Any) -> Any:
            if self.session_id == sid:
                reads.append(len(args[1]))
            return await read_bulk(self, *args, **kwargs)

        monkeypatch.setattr(Session, "read_bulk", spy)

        gap: EventGap | None = None
        resync: dict[str, TagValue] = {}
        order: list[str] = []

        async def after_the_gap() -> None:
            nonlocal gap
            async for update in sub:
                if isinstance(update, EventGap):
                    gap = update
                    order.append("gap")
                elif isinstance(update, TagValue) and update.resynchronized:
                    assert gap is not None, "a resynchronised value before the gap"
                    assert update.tag not in resync
                    resync[update.tag] = update
                    order.append("resync")
                    if len(resync) == len(tags):
                        return
                elif isinstance(update, TagValue) and gap is not None:
                    order.append("live")

        await asyncio.wait_for(after_the_gap(), DEADLINE)
        assert gap is not None and gap.missing_count > 0 and gap.reason == "replay-gap"
        assert set(resync) == set(tags)
        assert resync[STATIC].value == 42.5  # the lost change, not the stale value
        assert all(v.session_id == sid for v in resync.values())
        # every read value comes right after the gap, before any later live value
        assert order[: len(tags) + 1] == ["gap"] + ["resync"] * len(tags)
        assert reads == [len(tags)]
        assert sub.session_id == sid and sub.state is SubscriptionState.CONNECTED
        assert sub.recoveries == 0 and sub.gap_resyncs == resyncs_before + 1
