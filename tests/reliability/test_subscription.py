"""The recovering subscription against mxgw-sim: failures surfaced, closing, policies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from reliability_sim import client_options, fast_reconnect, free_port, plant_catalog, references

from mxgateway import (
    EventGap,
    GatewayClient,
    ItemFailure,
    MxGatewayAuthenticationError,
    MxGatewaySessionFaultedError,
    MxGatewayUnavailableError,
    StateChange,
    Subscription,
    SubscriptionEvent,
    SubscriptionState,
    TagValue,
)
from mxgateway_sim import GatewaySimulator, OverflowPolicy, SessionOptions
from support.tasks import client_tasks as _client_tasks

DEADLINE = 20.0
ITEMS = 50


@pytest.fixture
async def sim() -> AsyncIterator[GatewaySimulator]:
    async with GatewaySimulator(catalog=plant_catalog(ITEMS), scan_interval_ms=100) as s:
        yield s


@pytest.fixture
async def client(sim: GatewaySimulator) -> AsyncIterator[GatewayClient]:
    async with await GatewayClient.connect(options=client_options(sim.endpoint, sim.api_key)) as c:
        yield c


async def _take(sub: Subscription, n: int) -> list[SubscriptionEvent]:
    out: list[SubscriptionEvent] = []

    async def run() -> None:
        async for update in sub:
            out.append(update)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), DEADLINE)
    return out


async def _until_every_item(sub: Subscription, tags: set[str], *, resync: bool) -> None:
    seen: set[str] = set()

    async def run() -> None:
        async for update in sub:
            if isinstance(update, TagValue) and update.resynchronized == resync:
                seen.add(update.tag)
                if seen >= tags:
                    return

    await asyncio.wait_for(run(), DEADLINE)


def test_items_are_validated() -> None:
    client = GatewayClient.__new__(GatewayClient)  # never connected: validation comes first
    with pytest.raises(ValueError, match="single string"):
        Subscription(client, "Tank01.Level")
    with pytest.raises(ValueError, match="empty"):
        Subscription(client, [])
    with pytest.raises(ValueError, match="non-empty string"):
        Subscription(client, ["A.B", ""])
    with pytest.raises(ValueError, match="queue_size"):
        Subscription(client, ["A.B"], queue_size=0)
    assert Subscription(client, ["A.B", "A.B", "C.D"]).items == ("A.B", "C.D")


async def test_item_failures_are_surfaced_first_and_again_after_recovery(
    client: GatewayClient, sim: GatewaySimulator
) -> None:
    good = references(ITEMS)
    bad = ["has spaces in it", "Line00_Dev0000.PV[0]"]  # malformed: AddItem fails
    async with client.subscribe([*good[:5], *bad], reconnect=fast_reconnect()) as sub:
        first = await _take(sub, 2)
        assert all(isinstance(f, ItemFailure) for f in first)
        failures = [f for f in first if isinstance(f, ItemFailure)]
        assert {f.tag for f in failures} == set(bad)
        assert all(not f.resynchronized and f.message and f.hresult < 0 for f in failures)
        assert set(sub.failed_items) == set(bad)
        await _until_every_item(sub, set(good[:5]), resync=False)

        # The gateway closes our session (an administrator, a lease...): a new session.
        old = sub.session_id
        assert old is not None
        await client.close_session(old)
        failures = []
        while len(failures) < len(bad):
            update = await asyncio.wait_for(sub.__anext__(), DEADLINE)
            if isinstance(update, ItemFailure):
                failures.append(update)
        assert {f.tag for f in failures} == set(bad)
        assert all(f.resynchronized and f.session_id != old for f in failures)
        await _until_every_item(sub, set(good[:5]), resync=True)
        assert sub.state is SubscriptionState.RESYNCHRONIZED
        assert sub.recoveries == 1


async def test_a_rejected_key_ends_the_iteration_with_the_error(sim: GatewaySimulator) -> None:
    changes: list[StateChange] = []
    options = client_options(sim.endpoint, "mxgw_nobody_secretsecret", connect_timeout=None)
    async with await GatewayClient.connect(options=options) as client:
        sub = client.subscribe(references(3), on_state_change=changes.append)
        with pytest.raises(MxGatewayAuthenticationError):
            await asyncio.wait_for(_take(sub, 1), DEADLINE)
        with pytest.raises(StopAsyncIteration):
            await sub.__anext__()
        assert sub.closed
        assert isinstance(sub.error, MxGatewayAuthenticationError)
        await sub.aclose()
    assert [c.state for c in changes] == [SubscriptionState.CONNECTING, SubscriptionState.CLOSED]
    assert isinstance(changes[-1].error, MxGatewayAuthenticationError)
    assert "secretsecret" not in repr(changes) + str(changes[-1].error)


async def test_the_reconnect_policy_bounds_attempts() -> None:
    options = client_options(f"127.0.0.1:{free_port()}", "mxgw_k_s", connect_timeout=None)
    async with await GatewayClient.connect(options=options) as client:
        sub = client.subscribe(references(3), reconnect=fast_reconnect(max_attempts=3))
        with pytest.raises(MxGatewayUnavailableError):
            await asyncio.wait_for(_take(sub, 1), DEADLINE)
        assert sub.state is SubscriptionState.CLOSED
        await sub.aclose()


async def test_a_subscription_waits_for_a_gateway_that_starts_later() -> None:
    port = free_port()
    catalog = plant_catalog(ITEMS)
    key = "mxgw_late_0123456789abcdef"
    options = client_options(f"127.0.0.1:{port}", key, connect_timeout=None)
    async with (
        await GatewayClient.connect(options=options) as client,
        client.subscribe(references(ITEMS), reconnect=fast_reconnect()) as sub,
    ):
        assert sub.state is SubscriptionState.CONNECTING
        change = await asyncio.wait_for(sub.state_changes().__anext__(), DEADLINE)
        assert change.state is SubscriptionState.CONNECTING
        async with GatewaySimulator(
            catalog=catalog, port=port, api_keys=[key], scan_interval_ms=100
        ):
            connected = await sub.wait_for_state(SubscriptionState.CONNECTED, timeout=DEADLINE)
            assert connected.previous is SubscriptionState.CONNECTING
            await _until_every_item(sub, set(references(ITEMS)), resync=False)


async def test_closing_leaves_no_task_and_no_session(
    client: GatewayClient, sim: GatewaySimulator
) -> None:
    assert sim.sessions is not None
    before = _client_tasks()
    async with client.subscribe(references(ITEMS)) as sub:
        async for update in sub:
            assert isinstance(update, TagValue)
            break  # leaving the loop and the block closes everything
    assert sub.closed and sub.state is SubscriptionState.CLOSED
    assert _client_tasks() - before == set()
    assert len(sim.sessions) == 0
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()
    await sub.aclose()  # idempotent


async def test_cancelling_the_consumer_closes_the_subscription(
    client: GatewayClient, sim: GatewaySimulator
) -> None:
    assert sim.sessions is not None
    before = _client_tasks()
    started = asyncio.Event()
    holder: list[Subscription] = []

    async def consume() -> None:
        async with client.subscribe(references(ITEMS)) as sub:
            holder.append(sub)
            async for _ in sub:
                started.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(started.wait(), DEADLINE)
    task.cancel()
    await asyncio.wait({task})
    assert task.cancelled()
    assert holder[0].closed
    assert _client_tasks() - before == set()
    assert len(sim.sessions) == 0


async def test_closing_the_client_closes_its_subscriptions(sim: GatewaySimulator) -> None:
    assert sim.sessions is not None
    client = await GatewayClient.connect(options=client_options(sim.endpoint, sim.api_key))
    sub = client.subscribe(references(ITEMS))
    await asyncio.wait_for(_take(sub, 1), DEADLINE)
    assert len(sim.sessions) == 1
    await client.close()
    assert sub.closed
    assert len(sim.sessions) == 0
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()


async def test_the_queue_is_bounded_and_a_slow_consumer_loses_nothing(
    client: GatewayClient,
) -> None:
    size = 20
    async with client.subscribe(references(ITEMS), queue_size=size) as sub:
        queue = sub._queue
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while not queue.full():  # the consumer is "stalled": the pump must stop at the bound
            assert loop.time() < deadline, "the queue never filled"
            await asyncio.sleep(0.01)
        assert queue.qsize() == size
        sequences: list[int] = []
        for update in await _take(sub, 3 * size):
            assert isinstance(update, TagValue)  # no EventGap: nothing was lost
            sequences.append(update.worker_sequence)
        assert sequences == sorted(sequences)
        assert len(set(sequences)) == len(sequences)


async def test_a_stalled_consumer_gets_a_gap_and_keeps_its_session() -> None:
    """The consumer stops reading: the bounded queue fills, the stream backs up, the
    gateway disconnects the subscriber (overflow), and the subscription resumes on the same
    session with the loss reported as an EventGap."""
    items = 500
    options = SessionOptions(
        event_queue_limit=500,
        replay_ring_size=100,
        overflow_policy=OverflowPolicy.DISCONNECT_SUBSCRIBER,
    )
    async with (
        GatewaySimulator(
            catalog=plant_catalog(items), scan_interval_ms=50, session_options=options
        ) as sim,
        await GatewayClient.connect(options=client_options(sim.endpoint, sim.api_key)) as client,
        client.subscribe(references(items), queue_size=10) as sub,
    ):
        assert sim.sessions is not None
        await _take(sub, 10)
        sid = sub.session_id
        assert sid is not None
        gateway_session = sim.sessions.get(sid)
        assert gateway_session is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 45.0
        # Stall until the gateway has dropped our subscriber.
        while gateway_session.events.subscribers:
            assert loop.time() < deadline, "the gateway never disconnected the stalled subscriber"
            await asyncio.sleep(0.05)
        gap = None
        after_gap = 0

        async def resume() -> None:
            nonlocal gap, after_gap
            async for update in sub:
                if isinstance(update, EventGap):
                    gap = update
                elif gap is not None:
                    after_gap += 1
                    if after_gap >= 100:
                        return

        await asyncio.wait_for(resume(), DEADLINE)
        assert gap is not None and gap.missing_count > 0
        assert sub.session_id == sid  # the session survived: no recovery needed
        assert sub.state is SubscriptionState.CONNECTED
        assert sub.recoveries == 0


async def test_a_worker_crash_is_recovered_on_a_new_session(
    client: GatewayClient, sim: GatewaySimulator
) -> None:
    """The session's worker crashes (the session faults): a new session, resynchronised."""
    changes: list[StateChange] = []
    tags = set(references(ITEMS))
    async with client.subscribe(
        references(ITEMS), reconnect=fast_reconnect(), on_state_change=changes.append
    ) as sub:
        await _until_every_item(sub, tags, resync=False)
        old = sub.session_id
        assert old is not None
        assert sim.fault_session(old)
        await _until_every_item(sub, tags, resync=True)
        assert sub.state is SubscriptionState.RESYNCHRONIZED
        assert sub.session_id != old and sub.recoveries == 1
    lost = next(c for c in changes if c.state is SubscriptionState.RECONNECTING)
    assert isinstance(lost.error, MxGatewaySessionFaultedError)
