"""The simulator's garbage-collector policy (``mxgateway_sim._gcpolicy``) and what its items
cost the collector.

A collection walks every tracked object of its generations in one piece on the event loop,
so what a session's items leave for it to walk is how long the loop stops
(``bench/loop_stall.py`` measures that; nothing here is timed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import logging
import traceback
import types
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast

import grpc
import pytest
from simhelpers import SCAN_MS, Gw, changes, command, wait_for

from mxgateway import (
    ClientOptions,
    GatewayClient,
    MxGatewayError,
    MxGatewayUnavailableError,
    RetryPolicy,
)
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, InMemoryCatalog, SessionOptions, SimulatedRuntime
from mxgateway_sim._builtin import tag
from mxgateway_sim._domain import (
    CAT_SECURITY_ERROR,
    MX_BOOLEAN,
    MX_DOUBLE,
    MX_INTEGER,
    MX_STRING,
    MX_TIME,
    STATUS_OK,
    DataChange,
    MxRuntimeEvent,
    OperationComplete,
    TagSample,
    WriteComplete,
    failure,
)
from mxgateway_sim._gcpolicy import (
    THRESHOLDS,
    VALVE_GROWTH,
    VALVE_MIN_GROWTH,
    YOUNG_REPLACEMENTS,
    ServerGcPolicy,
    _tenure,
    host_froze,
    replaced,
    server_thresholds,
)
from mxgateway_sim._plant import Plant
from mxgateway_sim._servicer import GatewayServicer
from mxgateway_sim._slicing import CHUNK_ROWS
from mxgateway_sim._wire import EventEncoder, event_to_pb, unframe

ATTRIBUTES = 2_000
TYPES = (MX_BOOLEAN, MX_INTEGER, MX_DOUBLE, MX_STRING, MX_TIME)


def _catalog() -> InMemoryCatalog:
    """2,000 distinct attributes of every kind of value model (ramps, walks, toggles...)."""
    return InMemoryCatalog(
        tag(f"Obj{i // 20:03d}", f"Attr{i:04d}", TYPES[i % len(TYPES)]) for i in range(ATTRIBUTES)
    )


REFS = [f"Obj{i // 20:03d}.Attr{i:04d}" for i in range(ATTRIBUTES)]
"""The references of :func:`_catalog`'s attributes."""


@contextlib.asynccontextmanager
async def _simulator(
    scan_interval_ms: int, **options: Any
) -> AsyncIterator[tuple[GatewaySimulator, Gw]]:
    """A simulator of :func:`_catalog` (no flaky reads) with these ``GatewaySimulator``
    options, and a client of it."""
    async with (
        GatewaySimulator(
            catalog=_catalog(), scan_interval_ms=scan_interval_ms, flaky_one_in=0, **options
        ) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        yield sim, Gw(channel, sim.api_key)


@contextlib.asynccontextmanager
async def _tenured(
    monkeypatch: pytest.MonkeyPatch, scan_interval_ms: int
) -> AsyncIterator[tuple[GatewaySimulator, Gw, str, int]]:
    """A :func:`_simulator` with tenure on and a young collection every 500 replaced
    samples; yields it, a client, an open session and its registration."""
    monkeypatch.setattr("mxgateway_sim._gcpolicy.YOUNG_REPLACEMENTS", 500)
    async with _simulator(scan_interval_ms, gc_tenure=True) as (sim, gw):
        sid = await gw.open()
        yield sim, gw, sid, await gw.register(sid)


@pytest.fixture
async def gateway() -> AsyncIterator[Gw]:
    async with _simulator(60_000) as (_, gw):
        yield gw


def _tracked() -> int:
    """Objects the collector tracks in its generations (frozen ones are not walked)."""
    gc.collect()
    return len(gc.get_objects())


async def test_items_leave_few_objects_for_the_collector(gateway: Gw) -> None:
    sid = await gateway.open()
    sh = await gateway.register(sid)
    before = _tracked()
    reply = await gateway.ok(sid, "add_item_bulk", server_handle=sh, tag_addresses=REFS)
    handles = [r.item_handle for r in reply.bulk_subscribe.results]
    assert len(handles) == ATTRIBUTES and all(handles)
    added = _tracked() - before
    # Each item of a distinct attribute: the item, the attribute's model, its current
    # sample and the session's parsed-reference cache entry (bounded in bytes). The item's
    # reference and the model's value generator are no objects of their own (they were:
    # 8.2 objects an item before).
    assert added <= 4.5 * ATTRIBUTES, f"{added / ATTRIBUTES:.1f} tracked objects per item"
    before = _tracked()
    await gateway.ok(sid, "advise_item_bulk", server_handle=sh, item_handles=handles)
    await gateway.drain(sid)  # the first values are events; they leave with the drain
    advised = _tracked() - before
    # An attribute with one advised item keeps that item as such, not in a container
    # (two per advise before: the plant's subscriber set and the session's by-reference set).
    assert advised <= 0.1 * ATTRIBUTES, f"{advised / ATTRIBUTES:.1f} tracked objects per advise"
    await gateway.ok(sid, "unsubscribe_bulk", server_handle=sh, item_handles=handles)
    assert _tracked() - before <= 0.5 * ATTRIBUTES  # unsubscribing releases the items


async def test_policy_applies_while_a_simulator_runs_and_is_undone_after() -> None:
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    # What stays frozen after: the process's own frozen objects (none here), not
    # CPython 3.12's (immortal: frozen at its start-up, unfrozen with the policy's, see
    # host_froze, and frozen again by 3.12's next full collection).
    kept = frozen if host_froze() else 0
    async with (
        GatewaySimulator(scan_interval_ms=60_000) as _outer,
        GatewaySimulator(scan_interval_ms=60_000) as _inner,
    ):
        assert gc.get_threshold() == server_thresholds(thresholds)
        assert gc.get_threshold()[1:] == THRESHOLDS[1:]
        if not kept:  # start-up's objects are out of the collector's way
            assert gc.get_freeze_count() > frozen
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == kept
    async with GatewaySimulator(scan_interval_ms=60_000, tune_gc=False):
        assert gc.get_threshold() == thresholds
        assert gc.get_freeze_count() <= frozen


class _Node:
    """A cycle of one (it refers to itself): only the collector can free it."""

    def __init__(self) -> None:
        self.me = self


def _walked(obj: object) -> bool:
    """True when ``obj`` is in the collector's generations (not frozen)."""
    return any(o is obj for o in gc.get_objects())


async def test_tenure_freezes_survivors_and_its_valve_frees_their_garbage() -> None:
    frozen = gc.get_freeze_count() if host_froze() else 0
    async with GatewaySimulator(scan_interval_ms=60_000, gc_tenure=True):
        node = _Node()
        ref = weakref.ref(node)
        assert _walked(node)
        gc.collect(1)  # node survives a generation-1 collection: tenured
        assert not _walked(node)
        del node
        gc.collect()  # garbage now, but frozen: no collection walks it
        assert ref() is not None
        assert ServerGcPolicy.full_collection() >= 1  # the valve
        assert ref() is None
        survivor = _Node()
        ServerGcPolicy.full_collection()
        assert not _walked(survivor)  # what the valve leaves alive is frozen again
    assert gc.get_freeze_count() == frozen
    assert _tenure not in gc.callbacks


async def test_an_embedded_simulator_does_not_tenure_by_default() -> None:
    async with GatewaySimulator(scan_interval_ms=60_000):
        node = _Node()
        gc.collect(1)
        assert _walked(node)  # the host's objects stay the collector's business
        assert _tenure not in gc.callbacks


async def test_items_sharing_an_attribute_each_get_its_changes() -> None:
    # One advised item of an attribute is kept without a container; a second makes an
    # ordered set; unadvising goes back down to none. Every step through the public API.
    ref = "Obj000.Attr0002"  # a Double: changes every scan
    async with _simulator(SCAN_MS) as (_, gw):
        sid, other = await gw.open(), await gw.open()
        sh, other_sh = await gw.register(sid), await gw.register(other)
        a, b, c = [await gw.subscribe(sid, sh, ref) for _ in range(3)]
        o = await gw.subscribe(other, other_sh, ref)

        async def each_changes(session: str, handles: list[int]) -> None:
            await gw.drain(session)
            await gw.drain_until(session, lambda ev: all(len(changes(ev, h)) >= 2 for h in handles))

        async def cached() -> bool:
            reply = await gw.ok(sid, "read_bulk", server_handle=sh, tag_addresses=[ref])
            return bool(reply.bulk_read.results[0].was_cached)

        await each_changes(sid, [a, b, c])
        await gw.ok(sid, "un_advise", server_handle=sh, item_handle=a)
        await each_changes(sid, [b, c])
        assert await cached()  # b, the first advised left, answers cached reads
        events = await gw.drain(sid)
        assert not changes(events, a)
        for h in (b, c):
            await gw.ok(sid, "un_advise", server_handle=sh, item_handle=h)
        assert not await cached()
        await each_changes(other, [o])  # the other session's item is untouched
        await gw.ok(sid, "advise", server_handle=sh, item_handle=c)
        await each_changes(sid, [c])
        assert await cached()


async def test_the_valve_collects_only_once_frozen_objects_grew(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("mxgateway_sim._server.VALVE_CHECK_S", 0.05)
    caplog.set_level(logging.INFO, logger="mxgateway_sim")
    async with GatewaySimulator(scan_interval_ms=60_000, gc_tenure=True):
        node = _Node()
        ref = weakref.ref(node)
        gc.collect(1)  # tenured
        del node
        # A few frozen objects more are no reason for a full walk: the check says so.
        await wait_for(lambda: "no full collection" in caplog.text)
        assert ref() is not None
        assert "full garbage collection:" not in caplog.text
        # Frozen garbage past the valve's growth: the next check frees it, the node too.
        held = ServerGcPolicy.low + ServerGcPolicy.held()
        grown = int(max(held * VALVE_GROWTH, VALVE_MIN_GROWTH)) + 1_000
        garbage = [_Node() for _ in range(grown)]
        gc.collect(0)  # tenured
        del garbage
        await wait_for(lambda: ref() is None)
    assert "full garbage collection:" in caplog.text


async def test_items_held_are_no_reason_for_a_full_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The valve discounts what the simulator holds on purpose (items, attribute models and
    # their samples): a session adding thousands of items does not set off the full walk
    # (270-330 ms with 100k items), cyclic garbage of the same size still does.
    monkeypatch.setattr("mxgateway_sim._gcpolicy.VALVE_GROWTH", 0.0)
    monkeypatch.setattr("mxgateway_sim._gcpolicy.VALVE_MIN_GROWTH", 4_000)
    async with _tenured(monkeypatch, 60_000) as (_sim, gw, sid, sh):
        ServerGcPolicy.full_collection()  # start from a clean base
        before = ServerGcPolicy.held()
        reply = await gw.ok(sid, "add_item_bulk", server_handle=sh, tag_addresses=REFS)
        handles = [r.item_handle for r in reply.bulk_subscribe.results]
        assert len(handles) == ATTRIBUTES and all(handles)
        await gw.ok(sid, "advise_item_bulk", server_handle=sh, item_handles=handles)
        await gw.drain(sid)
        gc.collect(0)  # tenured
        held = ServerGcPolicy.held() - before
        # 2,000 items, their parsed references and 2,000 models (their samples are not
        # tracked while tenuring: _gcpolicy.acyclic).
        assert held == 3 * ATTRIBUTES
        check = ServerGcPolicy.valve()
        assert check.found is None, check  # the items are no garbage: no full walk
        assert check.held == ServerGcPolicy.held()
        # A read's cached rows are held too (a session's cache of 16 MiB is ~50k rows).
        await gw.ok(sid, "read_bulk", server_handle=sh, tag_addresses=REFS)
        gc.collect(0)
        assert ServerGcPolicy.held() - before == held + ATTRIBUTES
        assert ServerGcPolicy.valve().found is None
        # The same count of frozen cyclic garbage is found and freed.
        node = _Node()
        ref = weakref.ref(node)
        garbage = [_Node() for _ in range(held)]
        gc.collect(0)  # tenured
        del garbage, node
        assert ref() is not None
        check = ServerGcPolicy.valve()
        assert check.found is not None and check.found >= held, check
        assert ref() is None
        # Releasing the items is no growth either, and takes nothing from the base.
        await gw.ok(sid, "unsubscribe_bulk", server_handle=sh, item_handles=handles)
        gc.collect(0)
        assert ServerGcPolicy.valve().found is None


def _models(sim: GatewaySimulator) -> list[Any]:
    """The attribute models of :data:`REFS` (the plant makes one on first use)."""
    plant = sim.plant
    assert plant is not None
    return [plant.state(ref) for ref in REFS]


class _Holder:
    """A cycle of one that also refers to a held attribute model: garbage once dropped."""

    def __init__(self, model: object) -> None:
        self.me = self
        self.model = model


async def test_the_valves_full_collection_walks_none_of_what_the_simulator_holds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The full collection the valve sets off hides the items, models and their containers
    # from the collector (they are held: no garbage), a slice at a time with the loop
    # turning in between, walks the rest, and gives them back: tracked and frozen again.
    # Garbage that refers to them is freed as before; what they refer to is not.
    monkeypatch.setattr("mxgateway_sim._gcpolicy.SLICE_OBJECTS", 500)
    monkeypatch.setattr("mxgateway_sim._gcpolicy.VALVE_GROWTH", 0.0)
    monkeypatch.setattr("mxgateway_sim._gcpolicy.VALVE_MIN_GROWTH", 4_000)
    monkeypatch.setattr("mxgateway_sim._server.VALVE_CHECK_S", 0.05)
    caplog.set_level(logging.INFO, logger="mxgateway_sim")
    async with _tenured(monkeypatch, 60_000) as (sim, gw, sid, sh):
        reply = await gw.ok(sid, "add_item_bulk", server_handle=sh, tag_addresses=REFS)
        handles = [r.item_handle for r in reply.bulk_subscribe.results]
        await gw.ok(sid, "advise_item_bulk", server_handle=sh, item_handles=handles)
        await gw.drain(sid)
        models = _models(sim)
        items = [o for o in gc.get_referents(*models) if type(o).__name__ == "Item"]
        assert len(items) == ATTRIBUTES
        ours = {id(o) for o in [*models, *items]}
        gc.collect(0)  # tenured
        assert not any(map(_walked, models[:10]))
        garbage = [_Holder(model) for model in models] + [_Node() for _ in range(6_000)]
        ref = weakref.ref(garbage[0])
        gc.collect(0)  # tenured
        del garbage
        turns = 0
        walked: list[int] = []

        def census(phase: str, info: dict[str, Any]) -> None:
            if phase == "start" and info["generation"] == 2:
                # What the full collection is about to walk: models and items are hidden.
                found = sum(id(o) in ours for o in gc.get_objects())
                walked.append(found)
                walked.append(turns)

        async def ticker() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        caplog.clear()
        gc.callbacks.append(census)
        try:
            await wait_for(lambda: "full garbage collection:" in caplog.text)
        finally:
            gc.callbacks.remove(census)
            task.cancel()
        assert walked[0] == 0, walked  # none of this session's items and models walked
        assert walked[1] > 2 * ATTRIBUTES // 500  # the loop turned while they were hidden
        assert ref() is None  # the garbage that refers to the models is freed
        assert all(map(gc.is_tracked, [*models, *items]))  # given back...
        assert not any(map(_walked, models))  # ...and frozen again
        assert all(m is sim.plant.state(r) for m, r in zip(models, REFS, strict=True))
        # The session still works: its items deliver changes.
        sim.plant.step()
        assert await gw.drain(sid)


async def test_a_cancelled_full_collection_gives_back_what_it_hid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server stopping while the valve's full collection runs cancels it: whatever it
    # hid is tracked again (and nothing hidden is left behind for a later one to miss).
    monkeypatch.setattr("mxgateway_sim._gcpolicy.SLICE_OBJECTS", 100)
    async with _tenured(monkeypatch, 60_000) as (sim, gw, sid, sh):
        await gw.ok(sid, "add_item_bulk", server_handle=sh, tag_addresses=REFS)
        models = _models(sim)
        ServerGcPolicy.full_collection()  # the valve's base: what is not held now
        task = asyncio.create_task(ServerGcPolicy.full_collection_sliced())
        for _ in range(5):
            await asyncio.sleep(0)
        assert ServerGcPolicy.collecting
        assert not all(gc.is_tracked(m) for m in models)  # some hidden by now
        # A check meanwhile neither collects nor takes the hidden objects for shrinkage.
        low = ServerGcPolicy.low
        assert ServerGcPolicy.valve().found is None
        assert ServerGcPolicy.low == low
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not ServerGcPolicy.collecting
        assert all(gc.is_tracked(m) for m in models)
        assert await ServerGcPolicy.full_collection_sliced() >= 0  # and runs again
        assert all(gc.is_tracked(m) for m in models)


async def test_without_the_c_api_the_full_collection_is_one_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where PyObject_GC_UnTrack cannot be called (another interpreter, no GIL) nothing is
    # hidden or untracked: the valve's full collection walks everything, as before.
    monkeypatch.setattr("mxgateway_sim._gcpolicy._TRACKING", None)
    async with _tenured(monkeypatch, 60_000) as (sim, gw, sid, sh):
        await gw.ok(sid, "subscribe_bulk", server_handle=sh, tag_addresses=REFS[:10])
        models = _models(sim)[:10]
        assert all(gc.is_tracked(m.sample) for m in models)
        node = _Node()
        ref = weakref.ref(node)
        gc.collect(0)  # tenured
        del node
        walked: list[int] = []

        def census(phase: str, info: dict[str, Any]) -> None:
            if phase == "start" and info["generation"] == 2:
                walked.append(sum(any(o is m for m in models) for o in gc.get_objects()))

        gc.callbacks.append(census)
        try:
            assert await ServerGcPolicy.full_collection_sliced() >= 1
        finally:
            gc.callbacks.remove(census)
        assert ref() is None
        assert walked == [len(models)]


async def test_samples_are_not_tracked_while_tenuring(monkeypatch: pytest.MonkeyPatch) -> None:
    # A sample can be in no reference cycle (a value, a status, bytes): while the policy
    # tenures, the plant takes each one it makes out of the collector's walks (a tick
    # over 100k advised attributes makes up to 100k of them); they are the same samples.
    async with _tenured(monkeypatch, 60_000) as (sim, gw, sid, sh):
        reply = await gw.ok(sid, "subscribe_bulk", server_handle=sh, tag_addresses=REFS)
        handles = [r.item_handle for r in reply.bulk_subscribe.results]
        models = _models(sim)
        assert sim.plant is not None
        for _ in range(3):
            sim.plant.step()
        assert not any(gc.is_tracked(m.sample) for m in models)
        assert not any(gc.is_tracked(m.info) for m in models)
        events = await gw.drain(sid)
        assert changes(events, handles[2])  # delivered as before
        await gw.ok(
            sid, "write", server_handle=sh, item_handle=handles[1], value=pb.MxValue(int32_value=7)
        )
        assert not gc.is_tracked(models[1].sample)
        assert models[1].sample.value == 7
    async with _simulator(60_000) as (sim, gw):  # no tenure: the host's collector decides
        sid = await gw.open()
        sh = await gw.register(sid)
        await gw.ok(sid, "subscribe_bulk", server_handle=sh, tag_addresses=REFS[:10])
        assert sim.plant is not None
        sim.plant.step()
        assert all(gc.is_tracked(m.sample) for m in _models(sim)[:10])


async def test_a_young_collection_tenures_its_survivors() -> None:
    async with GatewaySimulator(scan_interval_ms=60_000, gc_tenure=True):
        node = _Node()
        gc.collect(0)
        assert not _walked(node)  # walked once, never again by any collection


def _young_collections(run: Callable[[], None]) -> int:
    """How many generation-0 collections ``run`` set off."""
    seen: list[int] = []

    def watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 0:
            seen.append(1)

    gc.callbacks.append(watch)
    try:
        run()
    finally:
        gc.callbacks.remove(watch)
    return len(seen)


async def test_replacements_set_off_a_young_collection_while_tenuring() -> None:
    # Objects that replace others (a tick's samples) are invisible to CPython's count; the
    # plant reports them, and once a threshold's worth may be alive a young collection runs.
    limit = YOUNG_REPLACEMENTS
    async with GatewaySimulator(scan_interval_ms=60_000, gc_tenure=True):
        gc.collect(0)  # start counting afresh
        assert _young_collections(lambda: replaced(limit - 1, 10 * limit)) == 0
        assert _young_collections(lambda: replaced(1, 10 * limit)) == 1
        # At most ``live`` of them can be alive (one sample per attribute model): never
        # more than that is pending, however many were made.
        assert _young_collections(lambda: replaced(10 * limit, limit - 1)) == 0
        assert ServerGcPolicy.young_replacements == limit - 1
    async with GatewaySimulator(scan_interval_ms=60_000):  # no tenure: nothing happens
        assert _young_collections(lambda: replaced(10 * limit, 10 * limit)) == 0


async def test_a_process_that_froze_objects_itself_gets_no_forced_collections() -> None:
    # The policy tenures only what it froze itself: in a process that had frozen objects
    # before the simulator started, tenure's hook is not installed, and replacements must
    # not set off young collections either (their survivors would not be frozen).
    limit = YOUNG_REPLACEMENTS
    ours = not host_froze()
    if ours:
        gc.freeze()
    try:
        async with GatewaySimulator(scan_interval_ms=60_000, gc_tenure=True):
            assert not ServerGcPolicy.tenuring()
            gc.collect(0)
            assert _young_collections(lambda: replaced(10 * limit, 10 * limit)) == 0
    finally:
        if ours:
            gc.unfreeze()


async def test_cpythons_own_frozen_objects_do_not_keep_the_policy_off() -> None:
    # CPython 3.12 starts with objects of its own frozen (its built-in types' immortal
    # base and MRO tuples) and freezes them again at every full collection: no process's
    # gc.freeze(). Counting them as one kept tenure (and the sliced full collection) off
    # for good on 3.12. Elsewhere nothing is frozen then, and the same must hold.
    gc.collect()
    assert not host_froze()
    async with GatewaySimulator(scan_interval_ms=60_000, gc_tenure=True):
        assert ServerGcPolicy.tenuring()
    gc.freeze()  # a process's own freeze
    try:
        assert host_froze()
    finally:
        gc.unfreeze()


async def test_replacements_are_bounded_by_the_advised_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A tick's samples replace those of the advised attributes only: however many models
    # reads created (one per attribute read), at most one sample per advised attribute
    # is pending, so a few advised attributes never set off a young collection.
    async with _tenured(monkeypatch, 3_600_000) as (sim, gw, sid, sh):
        plant = sim.plant
        assert plant is not None
        await gw.ok(sid, "read_bulk", server_handle=sh, tag_addresses=REFS)  # 2,000 models
        moving = [r for r in REFS if (st := plant.state(r)) is not None and st.period == 1]
        advised = moving[:10]
        await gw.ok(sid, "subscribe_bulk", server_handle=sh, tag_addresses=advised)
        pending = []
        for _ in range(60):
            plant.step()
            pending.append(ServerGcPolicy.young_replacements)
        assert max(pending) > 0  # the ticks reported their samples
        assert max(pending) <= len(advised), pending


def _ours(o: object) -> str | None:
    """What ``o`` is when it is this project's (its type; a frame of its code or a contract
    message, by name), else None."""
    if isinstance(o, types.FrameType):
        ours = str(o.f_globals.get("__name__", "")).startswith(("mxgateway", "bench"))
        return f"frame {o.f_code.co_name}" if ours else None
    kind = type(o)
    if kind.__module__.startswith(("mxgateway", "bench")) or kind.__module__.endswith("_pb2"):
        return kind.__qualname__
    if getattr(getattr(o, "__func__", None), "__module__", "").startswith("mxgateway"):
        return kind.__qualname__
    return None


def _ours_in_frozen_garbage() -> collections.Counter[str]:
    """Objects of this project (:func:`_ours`) among the cyclic garbage only a full
    collection frees (the valve's work), by type; the garbage is freed afterwards."""
    gc.collect(1)  # young garbage goes the usual way (survivors are tenured)
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        ServerGcPolicy.full_collection()
        found = collections.Counter(filter(None, map(_ours, gc.garbage)))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    ServerGcPolicy.full_collection()  # the saved garbage, freed for good
    return found


_A_CALLS_STATE = frozenset({"RPCState", "_ServicerContext", "AbortError"})


def _ours_or_a_calls(o: object) -> str | None:
    """:func:`_ours`, and the state grpc.aio keeps for a call on the server (what an
    aborted call's cycle held: its ``RPCState``, context and ``AbortError``)."""
    kind = type(o)
    if kind.__module__.startswith("grpc") and kind.__qualname__ in _A_CALLS_STATE:
        return kind.__qualname__
    return _ours(o)


@contextlib.contextmanager
def _cyclic_garbage(
    what: Callable[[object], str | None] = _ours,
) -> Iterator[collections.Counter[str]]:
    """Objects of this project (:func:`_ours`, or ``what`` says) that became cyclic
    garbage in the block, by type, counted at its end: every collection in it, automatic
    or not, keeps its garbage for the count (``DEBUG_SAVEALL``) instead of freeing it."""
    found: collections.Counter[str] = collections.Counter()
    gc.collect()  # what came before the block
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.update(filter(None, map(what, gc.garbage)))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_steady_state_leaves_no_garbage_for_the_valve() -> None:
    # A session streaming the changes of its advised items, reading and writing, and a
    # second session that lives long enough to be tenured and is then closed: nothing of
    # ours becomes cyclic garbage, so no full collection is needed for it.
    async with _simulator(SCAN_MS, gc_tenure=True) as (_, gw):
        _ours_in_frozen_garbage()  # what earlier tests' simulators left (not this one's)
        sid = await gw.open()
        sh = await gw.register(sid)
        reply = await gw.ok(sid, "subscribe_bulk", server_handle=sh, tag_addresses=REFS)
        handles = [r.item_handle for r in reply.bulk_subscribe.results]
        stream = gw.stub.StreamEventBatches(pb.StreamEventsRequest(session_id=sid), metadata=gw.md)
        got = 0
        async for batch in stream:
            got += len(batch.events)
            if got >= 3 * ATTRIBUTES:  # a few ticks' worth
                break
        stream.cancel()
        other = await gw.open()
        other_sh = await gw.register(other)
        await gw.ok(other, "subscribe_bulk", server_handle=other_sh, tag_addresses=REFS[:50])
        gc.collect(0)  # the second session is tenured (frozen) from here on
        for i in range(20):
            await gw.ok(sid, "read_bulk", server_handle=sh, tag_addresses=REFS[i::20])
            write = command("write_bulk", server_handle=sh)
            for h in handles[i : i + 20]:
                write.write_bulk.entries.add(item_handle=h).value.int32_value = i
            await gw.stub.Invoke(pb.MxCommandRequest(session_id=sid, command=write), metadata=gw.md)
        await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=other), metadata=gw.md)
        assert _ours_in_frozen_garbage() == collections.Counter()


def test_the_plant_counts_what_its_models_hold() -> None:
    # Each model and its current sample; its catalog record too when the catalog makes a
    # record per lookup (the Galaxy's) and the model is its only holder.
    shared = Plant(_catalog(), scan_interval_ms=60_000)
    catalog = _catalog()

    class PerLookup:
        version = catalog.version

        def lookup(self, reference: str) -> Any:
            info = catalog.lookup(reference)
            return None if info is None else dataclasses.replace(info)

    own = Plant(cast(Any, PerLookup()), scan_interval_ms=60_000)
    for plant in (shared, own):
        assert plant.tracked_objects() == 0
        for ref in REFS[:10]:
            assert plant.state(ref) is not None
        plant.state(REFS[0])  # the same model again
    assert shared.tracked_objects() == 20
    assert own.tracked_objects() == 30


class _StuckPing(SimulatedRuntime):
    """A runtime whose Ping never returns (a stuck worker): the command's timeout ends it."""

    async def ping(self) -> None:
        await asyncio.Event().wait()


async def test_refused_commands_become_no_cyclic_garbage() -> None:
    # A command its handler refuses (a value over the limit found in a later slice, the
    # timeout, an MXAccess failure, a bad field) is freed by reference counting, request
    # and all, on Invoke and on InvokeStream. Under asyncio.wait_for the exception's
    # traceback tied the request to a cycle (the handler's task keeps the exception, whose
    # frames keep the task) until a collection walked it, with tenure only the valve; the
    # command path drops that traceback (_svc_common: _within). On 3.11+
    # the handler runs in the calling task and nothing cycles even with the traceback; on
    # 3.10 (wait_for) the drop is what frees the request, and a bare `raise` undid it.
    # The timeout ends the stuck ping; it is long enough that the other refusals (a bulk
    # write refused after three slices, on a loaded machine) finish before it.
    options = SessionOptions(command_timeout_s=0.3, max_value_bytes=1024)
    stuck = _simulator(60_000, session_options=options, runtime_factory=_StuckPing)
    async with stuck as (_, gw):
        sid = await gw.open()
        sh = await gw.register(sid)
        handle = await gw.subscribe(sid, sh, REFS[2])
        small, large = pb.MxValue(double_value=1.5), pb.MxValue(string_value="x" * 2048)
        entries = [pb.WriteBulkEntry(item_handle=handle, value=small)] * (CHUNK_ROWS * 3)
        refused = {
            "write_bulk": (  # the limit, found after the first slices
                dict(server_handle=sh, entries=[*entries, pb.WriteBulkEntry(value=large)]),
                pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST,
            ),
            "ping": ({}, pb.PROTOCOL_STATUS_CODE_TIMEOUT),
            "write": (  # an unknown item handle
                dict(server_handle=sh, item_handle=10**6, value=small),
                pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE,
            ),
            "read_bulk": (
                dict(server_handle=sh, tag_addresses=REFS[:3], timeout_ms=-1),
                pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST,
            ),
        }
        requests = [
            pb.MxCommandRequest(session_id=sid, command=command(payload, **fields))
            for payload, (fields, _) in refused.items()
        ]
        expected = [code for _, code in refused.values()]
        with _cyclic_garbage() as cyclic:
            for _ in range(3):
                replies = [await gw.stub.Invoke(r, metadata=gw.md) for r in requests]
                assert [r.protocol_status.code for r in replies] == expected, replies
                stream = gw.stub.InvokeStream(iter(requests), metadata=gw.md)
                replies = [reply async for reply in stream]
                assert [r.protocol_status.code for r in replies] == expected, replies
        assert cyclic == collections.Counter()


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "command-stream"])
async def test_a_refused_command_leaves_no_cyclic_garbage_on_the_client(stream: bool) -> None:
    # The client raises a refused command's error (SESSION_NOT_FOUND, INVALID_REQUEST,
    # MXACCESS_FAILURE, TIMEOUT) without keeping it in a cycle with its request and reply:
    # `err = ...; raise err` left the error in the raising frame's locals, which its own
    # traceback keeps (frame -> err -> traceback -> frame), so each refusal waited for a
    # collection, request and all.
    options = SessionOptions(command_timeout_s=0.3)
    stuck = _simulator(60_000, session_options=options, runtime_factory=_StuckPing)
    async with stuck as (sim, _):
        client_options = ClientOptions(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True, command_stream=stream
        )
        async with (
            await GatewayClient.connect(options=client_options) as client,
            await client.open_session() as session,
        ):
            handle = await session.register("refusals")
            mismatched = command("ping")
            mismatched.kind = pb.MX_COMMAND_KIND_REGISTER  # a kind without its payload
            calls = [
                lambda: client.invoke("session-" + "0" * 32, command("ping")),
                lambda: client.invoke(session.session_id, mismatched),
                lambda: session.write(handle, 10**6, 1.5),  # an unknown item handle
                lambda: session.ping(),  # the stuck ping: TIMEOUT
            ]
            with _cyclic_garbage() as cyclic:
                refused = []
                for _ in range(3):
                    for call in calls:
                        try:
                            await call()
                        except MxGatewayError as exc:
                            refused.append(type(exc).__name__)
            expected = [
                "MxGatewaySessionNotFoundError",
                "MxGatewayInvalidRequestError",
                "MxAccessError",
                "MxGatewayTimeoutError",
            ]
            assert handle and refused == expected * 3
            assert cyclic == collections.Counter()


async def test_a_stopped_simulator_is_freed_with_its_server() -> None:
    # The stop cancels the scan clock's task; awaiting it raised its CancelledError through
    # the stop's frames, and from Python 3.12 a finished frame keeps its caller's: that
    # error, held on elsewhere, kept the stopped server alive (servicer, sessions, plant),
    # until it went, then left them as cyclic garbage. (The policy is off here: it would
    # freeze the servicer out of gc.get_objects().)
    gc.collect()
    async with GatewaySimulator(catalog=_catalog(), scan_interval_ms=60_000, tune_gc=False):
        servicers = [weakref.ref(o) for o in gc.get_objects() if type(o) is GatewayServicer]
    assert len(servicers) == 1
    gc.collect()
    assert servicers[0]() is None


async def test_a_retried_call_that_fails_leaves_no_cyclic_garbage_on_the_client() -> None:
    # A call retried after UNAVAILABLE (the gateway stopped) that fails for good is raised
    # without a cycle: Transport.unary kept the first error in a local while _retry ran,
    # and _retry the last one while raising it, each in the frame the traceback keeps. (The
    # first attempt alone: tests/client/test_client_unary_garbage.py. A stopped gateway:
    # a refusal from a live one would count the server's own frames.)
    retry = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
    async with GatewaySimulator(catalog=_catalog(), scan_interval_ms=60_000) as sim:
        options = ClientOptions(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True, retry=retry, timeout=5
        )
        client = await GatewayClient.connect(options=options)
    try:
        with _cyclic_garbage() as cyclic:
            for _ in range(3):
                with contextlib.suppress(MxGatewayUnavailableError):
                    await client.close_session("session-" + "0" * 32)
        assert cyclic == collections.Counter()
    finally:
        await client.close()


async def test_a_failed_subscription_leaves_no_cyclic_garbage() -> None:
    # A subscription that failed for good raises its error (kept as `error` and in the
    # CLOSED state) from __anext__; closed and dropped, it is freed by reference counting.
    # The frames the error passed through kept the subscription (`self`: the supervisor's,
    # __anext__'s, _raise_end's, which also kept the error), and the subscription keeps the
    # error: a cycle, subscription, queue and states, freed only by a collection. A
    # stopped gateway: a refusal from a live one would count the server's own frames.
    async with GatewaySimulator(catalog=_catalog(), scan_interval_ms=60_000) as sim:
        options = ClientOptions(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True, connect_timeout=None
        )
        client = await GatewayClient.connect(options=options)
    try:
        with _cyclic_garbage() as cyclic:
            for _ in range(3):
                subscriptions = [client.subscribe(REFS[:2], reconnect=None)]
                with pytest.raises(MxGatewayUnavailableError):
                    await subscriptions[0].__anext__()
                with pytest.raises(StopAsyncIteration):  # the error is raised once
                    await subscriptions[0].__anext__()
                error = subscriptions[0].error
                assert isinstance(error, MxGatewayUnavailableError)
                # Where it was raised is still shown (the frames lost their locals only).
                assert "unary" in {f.name for f in traceback.extract_tb(error.__traceback__)}
                del error
                await subscriptions.pop().aclose()
        assert cyclic == collections.Counter()
    finally:
        await client.close()


class _BrokenPing(SimulatedRuntime):
    """A runtime whose Ping fails with an error no status of ours answers (a bug)."""

    async def ping(self) -> None:
        raise RuntimeError("the runtime broke")


async def test_an_aborted_call_leaves_no_cyclic_garbage(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # grpc.aio keeps a handler's AbortError (context.abort's) in the call's RPCState, and
    # the error's traceback kept the frames it passed through, each holding the context
    # that holds that state: every refused call (a rejected key, an unknown session, a
    # malformed body, an unexpected error's INTERNAL...) left its state, context, request
    # and frames as cyclic garbage. The status each answers is unchanged. (The incidents'
    # log is off: pytest's capture would keep each record, and so its error, alive.) The
    # handlers return after an abort, and gRPC ends the call without a word in its log.
    monkeypatch.setattr(logging.getLogger("mxgateway_sim.gateway"), "disabled", True)
    caplog.set_level(logging.WARNING, logger="grpc")
    async with _simulator(60_000, runtime_factory=_BrokenPing) as (_, gw):
        channel = gw.channel
        stranger = Gw(channel, "mxgw_nobody_" + "x" * 20)
        sid = await gw.open()
        unknown = "session-" + "0" * 32
        ping = pb.MxCommandRequest(session_id=sid, command=command("ping"))
        garbled = b"\xff\xff\xff"  # no message parses it
        register = pb.MxCommandRequest(
            session_id=sid, command=command("register", client_name="gc")
        ).SerializeToString()
        service = "/mxaccess_gateway.v1.MxAccessGateway/"
        reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

        async def streamed(method: str, *requests: object) -> None:
            async for _ in channel.stream_stream(method)(iter(requests), metadata=gw.md):
                pass

        async def events() -> None:
            async for _ in gw.stub.StreamEvents(
                pb.StreamEventsRequest(session_id=unknown), metadata=gw.md
            ):
                pass

        calls: dict[str, tuple[Callable[[], Awaitable[object]], grpc.StatusCode]] = {
            "a rejected key": (stranger.open, grpc.StatusCode.UNAUTHENTICATED),
            "an unknown session": (
                lambda: gw.stub.CloseSession(
                    pb.CloseSessionRequest(session_id=unknown), metadata=gw.md
                ),
                grpc.StatusCode.NOT_FOUND,
            ),
            "a malformed body": (
                lambda: channel.unary_unary(service + "CloseSession")(garbled, metadata=gw.md),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            "a malformed command on the stream": (
                lambda: streamed(service + "InvokeStream", garbled),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            "a malformed command after the stream's first": (  # the batched replies' loop
                lambda: streamed(service + "InvokeStream", register, garbled),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            "the events of an unknown session": (events, grpc.StatusCode.NOT_FOUND),
            "a malformed reflection request": (
                lambda: streamed(reflection, garbled),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            "an unexpected error": (
                lambda: gw.stub.Invoke(ping, metadata=gw.md),
                grpc.StatusCode.INTERNAL,
            ),
            "an unexpected error on the stream": (
                lambda: streamed(service + "InvokeStream", ping.SerializeToString()),
                grpc.StatusCode.INTERNAL,
            ),
        }

        async def answered(call: Callable[[], Awaitable[object]]) -> grpc.StatusCode:
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        for name, (call, code) in calls.items():
            assert await answered(call) == code, name  # what is made once, made
            with _cyclic_garbage(_ours_or_a_calls) as cyclic:
                for _ in range(3):
                    assert await answered(call) == code, name
            assert cyclic == collections.Counter(), name
    assert [r.getMessage() for r in caplog.records if r.name.startswith("grpc")] == []


async def test_an_unexpected_error_keeps_its_frames_for_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Only refusals lose their traceback on the command path
    # (test_refused_commands_become_no_cyclic_garbage): a bug's log must still show the
    # frame it happened in, on Invoke and on InvokeStream.
    caplog.set_level(logging.ERROR)
    async with _simulator(60_000, runtime_factory=_BrokenPing) as (_, gw):
        sid = await gw.open()
        request = pb.MxCommandRequest(session_id=sid, command=command("ping"))
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.stub.Invoke(request, metadata=gw.md)
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in gw.stub.InvokeStream(iter([request]), metadata=gw.md):
                pass
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info and r.exc_info[1]]
    broke = [e for e in logged if str(e) == "the runtime broke"]
    assert len(broke) == 2, caplog.records
    for exc in broke:
        frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
        assert frames[-1] == "ping", frames


def test_a_write_delivers_the_sample_it_made() -> None:
    # The tick after a write delivers the sample the write made (same value, time, quality
    # and status), not a second object of the same content.
    plant = Plant(_catalog(), scan_interval_ms=60_000, flaky_one_in=0)
    state = plant.state("Obj000.Attr0002")
    assert state is not None
    got: list[TagSample] = []

    class Sink:
        def deliver(self, sample: TagSample) -> None:
            got.append(sample)

    plant.subscribe(state, Sink())
    plant.write(state, 12.5, 1_700_000_000.25)
    written = state.sample
    plant.step()
    assert got == [written] and got[0] is written
    assert (written.value, written.timestamp, written.quality) == (12.5, 1_700_000_000.25, 192)
    plant.step()  # pinned: no change, nothing delivered
    assert len(got) == 1


def test_the_event_encoders_caches_hold_nothing_the_collector_walks() -> None:
    # Per-item cache entries were tuples (one tracked object per item, and a completion's
    # key held its status: never untracked); now a dict of ints and bytes, never tracked.
    sid = "session-" + "ab" * 16
    encoder = EventEncoder(sid)
    sample = TagSample(1.5, MX_DOUBLE, 192, 1_700_000_000.5)
    bad = failure(CAT_SECURITY_ERROR, 1012, "denied")
    events: list[MxRuntimeEvent] = [
        DataChange(1, 2, sample),
        DataChange(2, 1, sample),  # the same two numbers the other way round
        DataChange(1, -1, sample),  # a negative (int32) handle
        DataChange(1, 2**31 - 1, sample),
        WriteComplete(1, 2, STATUS_OK),
        OperationComplete(1, 2, STATUS_OK),
        WriteComplete(1, 2, bad),
        WriteComplete(1, 2, STATUS_OK),  # from the cache
    ]
    for first in (1, 500):
        framed = encoder.encode(events, first, 1_700_000_010.25)
        for i, (event, data) in enumerate(zip(events, framed, strict=True)):
            expected = event_to_pb(event, sid, first + i, 1_700_000_010.25)
            assert pb.MxEvent.FromString(unframe(data)) == expected, event
    assert not gc.is_tracked(encoder._items)
    assert not gc.is_tracked(encoder._completions)


async def test_ticks_interrupted_by_young_collections_deliver_each_change_once_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With a threshold of 500 replaced samples, ticks over the 2,000 advised attributes
    # set off young collections between their slices (and tenure freezes what survives):
    # the events are still every change once, in sequence, each item's in tick order.
    async with _tenured(monkeypatch, SCAN_MS) as (sim, gw, sid, sh):
        stream = gw.stub.StreamEventBatches(pb.StreamEventsRequest(session_id=sid), metadata=gw.md)
        events: list[pb.MxEvent] = []
        young = 0

        def count(phase: str, info: dict[str, Any]) -> None:
            nonlocal young
            if phase == "stop" and info["generation"] == 0:
                young += 1

        async def read() -> None:
            async for batch in stream:
                events.extend(batch.events)
                if len(events) >= 6 * ATTRIBUTES:  # the first values and a few ticks
                    return

        gc.callbacks.append(count)
        reader = asyncio.ensure_future(read())
        try:
            session = sim.sessions.get(sid) if sim.sessions else None
            assert session is not None
            await wait_for(lambda: session.events.subscribers)  # attached: sees it all
            reply = await gw.ok(sid, "subscribe_bulk", server_handle=sh, tag_addresses=REFS)
            handles = [r.item_handle for r in reply.bulk_subscribe.results]
            await reader
        finally:
            gc.callbacks.remove(count)
            stream.cancel()
    assert young > 0, "no young collection ran during the ticks"
    sequences = [e.worker_sequence for e in events]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    per_item: dict[int, list[int]] = {}
    for e in events:
        if e.HasField("on_data_change"):
            change = e.on_data_change
            per_item.setdefault(change.item_handle, []).append(change.timestamp.ToNanoseconds())
    for h in handles:
        stamps = per_item.get(h, [])
        assert stamps, f"item {h} got no change"
        assert stamps == sorted(set(stamps)), f"item {h}: a change twice or out of order"
