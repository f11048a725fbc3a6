"""No request freezes the gateway: bulk work runs in slices and command timeouts stop it.

The simulator, the client and these tests share one event loop, so a health check that
answers while a huge bulk call is still running shows the bulk gave the loop back. No timing
is asserted here; ``bench/loop_stall.py`` measures how long the loop is held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from simhelpers import SCAN_MS, Gw, wait_for

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, InMemoryCatalog, SessionOptions, builtin_catalog
from mxgateway_sim._builtin import tag
from mxgateway_sim._domain import MX_DOUBLE, DataChange, MxRuntimeEvent
from mxgateway_sim._plant import TICK_SLICE_DELIVERIES, TICK_SLICE_UNCHANGED, Plant
from mxgateway_sim._simruntime import SimulatedRuntime
from mxgateway_sim._slicing import CHUNK_ROWS

HUGE = 200_000  # rows: a second or more of server work, far more than a health check's
BIG_MESSAGES = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
REFS = ["Tank01.Level", "Tank01.Temperature", "NoSuchObject.Attr", "Tank01.Nope", "bad ref!"]


def _sim(**kwargs: Any) -> GatewaySimulator:
    return GatewaySimulator(
        catalog=builtin_catalog(), scan_interval_ms=SCAN_MS, flaky_one_in=0, **kwargs
    )


@pytest.fixture
async def big() -> AsyncIterator[tuple[GatewaySimulator, Gw]]:
    async with (
        _sim() as sim,
        grpc.aio.insecure_channel(sim.endpoint, options=BIG_MESSAGES) as channel,
    ):
        yield sim, Gw(channel, sim.api_key)


def _huge_refs(n: int = HUGE) -> list[str]:
    return (REFS * (n // len(REFS) + 1))[:n]


async def _health_answers_while(sim: GatewaySimulator, gw: Gw, sid: str, call: Any) -> Any:
    """Start ``call``, wait until the gateway runs it, then check health answers meanwhile."""
    task = asyncio.ensure_future(call)
    session = sim.sessions.get(sid) if sim.sessions else None
    assert session is not None
    await wait_for(lambda: session.pending == 1 or task.done())
    health = health_pb2_grpc.HealthStub(gw.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert not task.done(), "the bulk call finished before the health check could answer"
    return await task


async def test_health_answers_during_a_huge_read_bulk(big: tuple[GatewaySimulator, Gw]) -> None:
    sim, gw = big
    sid = await gw.open()
    sh = await gw.register(sid)
    refs = _huge_refs()
    reply = await _health_answers_while(
        sim, gw, sid, gw.invoke(sid, "read_bulk", server_handle=sh, tag_addresses=refs)
    )
    assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK
    rows = reply.bulk_read.results
    assert [r.tag_address for r in rows] == refs  # every row, in input order
    assert [r.was_successful for r in rows[:5]] == [True, True, False, False, False]


@pytest.mark.slow
async def test_health_answers_during_huge_subscribe_and_write_bulks(
    big: tuple[GatewaySimulator, Gw],
) -> None:
    sim, gw = big
    sid = await gw.open()
    sh = await gw.register(sid)
    n = HUGE // 4
    reply = await _health_answers_while(
        sim,
        gw,
        sid,
        gw.invoke(
            sid, "add_item_bulk", server_handle=sh, tag_addresses=["Tank01.LevelSetpoint"] * n
        ),
    )
    handles = [r.item_handle for r in reply.bulk_subscribe.results]
    assert len(handles) == n and all(r.was_successful for r in reply.bulk_subscribe.results)
    reply = await _health_answers_while(
        sim, gw, sid, gw.invoke(sid, "advise_item_bulk", server_handle=sh, item_handles=handles)
    )
    assert all(r.was_successful for r in reply.bulk_subscribe.results)
    value = pb.MxValue(double_value=1.5, data_type=pb.MX_DATA_TYPE_DOUBLE)
    entries = [pb.WriteBulkEntry(item_handle=h, value=value) for h in handles]
    reply = await _health_answers_while(
        sim, gw, sid, gw.invoke(sid, "write_bulk", server_handle=sh, entries=entries)
    )
    assert [r.item_handle for r in reply.bulk_write.results] == handles
    assert all(r.was_successful for r in reply.bulk_write.results)
    reply = await _health_answers_while(
        sim, gw, sid, gw.invoke(sid, "unsubscribe_bulk", server_handle=sh, item_handles=handles)
    )
    assert len(reply.bulk_subscribe.results) == n
    assert all(r.was_successful for r in reply.bulk_subscribe.results)


async def test_bulk_rows_keep_order_across_slices(big: tuple[GatewaySimulator, Gw]) -> None:
    _, gw = big
    sid = await gw.open()
    sh = await gw.register(sid)
    refs = _huge_refs(CHUNK_ROWS * 5 + 7)
    reply = await gw.ok(sid, "subscribe_bulk", server_handle=sh, tag_addresses=refs)
    rows = reply.bulk_subscribe.results
    assert [r.tag_address for r in rows] == refs
    assert [r.was_successful for r in rows] == [ref != "bad ref!" for ref in refs]
    handles = [r.item_handle for r in rows if r.was_successful]
    assert handles == list(range(1, len(handles) + 1))


@pytest.mark.parametrize(
    "payload",
    ["read_bulk", "add_item_bulk", "subscribe_bulk", "write_bulk", "unsubscribe_bulk"],
)
async def test_command_timeout_stops_a_bulk_and_the_session_stays_usable(payload: str) -> None:
    options = SessionOptions(command_timeout_s=0.05)
    async with (
        _sim(session_options=options) as sim,
        grpc.aio.insecure_channel(sim.endpoint, options=BIG_MESSAGES) as channel,
    ):
        gw = Gw(channel, sim.api_key)
        sid = await gw.open()
        sh = await gw.register(sid)
        fields: dict[str, Any] = {"server_handle": sh}
        if payload in ("read_bulk", "add_item_bulk", "subscribe_bulk"):
            fields["tag_addresses"] = _huge_refs()
        else:
            handle = await gw.subscribe(sid, sh, "Tank01.LevelSetpoint")
            value = pb.MxValue(double_value=2.5, data_type=pb.MX_DATA_TYPE_DOUBLE)
            if payload == "write_bulk":
                fields["entries"] = [
                    pb.WriteBulkEntry(item_handle=handle, value=value) for _ in range(HUGE)
                ]
            else:  # every handle but the first is unknown: one failing row each
                fields["item_handles"] = [handle, *range(10**6, 10**6 + HUGE)]
        reply = await gw.invoke(sid, payload, **fields)
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_TIMEOUT
        assert "0.05 s" in reply.protocol_status.message
        assert not reply.HasField("bulk_read") and not reply.HasField("bulk_subscribe")
        # The session is still Ready and answers commands.
        state = await gw.ok(sid, "get_session_state")
        assert state.session_state.state == pb.SESSION_STATE_READY
        await gw.ok(sid, "ping")
        closed = await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
        if payload in ("add_item_bulk", "subscribe_bulk"):
            # The items of a call stopped by the timeout were removed again: none outlives
            # a call whose caller never saw its handles.
            assert closed.released_item_count == 0
            assert closed.released_advise_count == 0


async def test_a_cancelled_subscribe_bulk_leaves_no_item(big: tuple[GatewaySimulator, Gw]) -> None:
    sim, gw = big
    sid = await gw.open()
    sh = await gw.register(sid)
    session = sim.sessions.get(sid) if sim.sessions else None
    assert session is not None
    call = gw.stub.Invoke(
        pb.MxCommandRequest(
            session_id=sid,
            command=pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_SUBSCRIBE_BULK,
                subscribe_bulk=pb.SubscribeBulkCommand(
                    server_handle=sh, tag_addresses=_huge_refs()
                ),
            ),
        ),
        metadata=gw.md,
    )
    await wait_for(lambda: session.pending == 1)
    call.cancel()  # the client gives up (its deadline, Ctrl-C, ...)
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_for(lambda: session.pending == 0)
    closed = await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
    assert closed.released_item_count == 0


async def test_many_distinct_items_unsubscribe_and_close() -> None:
    # Each advised item of its own reference: unadvising one used to scan every item of the
    # session (quadratic: 20,000 items took 14 s in one piece on the loop).
    n = 20_000
    catalog = InMemoryCatalog(tag(f"Obj{i:05d}", "PV", MX_DOUBLE) for i in range(n))
    refs = [f"Obj{i:05d}.PV" for i in range(n)]
    async with (
        GatewaySimulator(catalog=catalog, scan_interval_ms=1000, flaky_one_in=0) as sim,
        grpc.aio.insecure_channel(sim.endpoint, options=BIG_MESSAGES) as channel,
    ):
        gw = Gw(channel, sim.api_key)
        sid = await gw.open()
        sh = await gw.register(sid)
        reply = await gw.ok(sid, "subscribe_bulk", server_handle=sh, tag_addresses=refs)
        handles = [r.item_handle for r in reply.bulk_subscribe.results]
        assert all(r.was_successful for r in reply.bulk_subscribe.results)
        half = handles[: n // 2]
        reply = await gw.ok(sid, "unsubscribe_bulk", server_handle=sh, item_handles=half)
        assert all(r.was_successful for r in reply.bulk_subscribe.results)
        # A cached read still answers from the items left (the first advised of a reference).
        read = await gw.ok(sid, "read_bulk", server_handle=sh, tag_addresses=refs[n - 2 :])
        assert [r.was_cached for r in read.bulk_read.results] == [True, True]
        closed = await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
        assert closed.released_item_count == n - n // 2
        assert closed.released_advise_count == n - n // 2


async def test_a_scan_tick_over_many_items_pauses_between_slices() -> None:
    # 100k advised items make a tick 100k OnDataChange events: the scan task hands each
    # slice's events on and gives the loop back before the next slice.
    plant = Plant(builtin_catalog(), scan_interval_ms=1000, flaky_one_in=0)
    rt = SimulatedRuntime(plant)
    got: list[list[MxRuntimeEvent]] = []
    await rt.start(lambda events: got.append(list(events)))
    sh = await rt.register("t")
    handles = []
    for _ in range(TICK_SLICE_DELIVERIES * 3 + 5):
        handles.append(await rt.add_item(sh, "Tank01.LevelSetpoint"))
        await rt.advise(sh, handles[-1], supervisory=False)
    got.clear()
    state = plant.state("Tank01.LevelSetpoint")
    assert state is not None
    plant.write(state, 42.0, None)  # the next tick delivers it to every item

    def delivered() -> list[int]:
        return [e.item_handle for batch in got for e in batch if isinstance(e, DataChange)]

    tick = plant._tick(time.time())
    next(tick)  # the first slice is done and its events were handed on before the pause
    assert delivered() == handles[:TICK_SLICE_DELIVERIES]
    await rt.unadvise(sh, handles[-1])  # a subscriber leaves during the pause
    for _ in tick:
        pass
    assert delivered() == handles[:-1]  # in order, each once, none to the item that left
    assert all(e.sample.value == 42.0 for batch in got for e in batch if isinstance(e, DataChange))
    await rt.close()


async def test_a_scan_tick_over_many_unchanged_attributes_pauses_too() -> None:
    # Static attributes cost the tick a check each and deliver nothing: a long run of them
    # is a slice of its own, and the one attribute that changes still gets its change.
    n = TICK_SLICE_UNCHANGED * 2 + 10
    catalog = InMemoryCatalog(
        [tag(f"Obj{i:05d}", "Setpoint", MX_DOUBLE) for i in range(n)]
        + [tag("Moving", "Level", MX_DOUBLE)]
    )
    plant = Plant(catalog, scan_interval_ms=1000, flaky_one_in=0)
    rt = SimulatedRuntime(plant)
    got: list[list[MxRuntimeEvent]] = []
    await rt.start(lambda events: got.append(list(events)))
    sh = await rt.register("t")
    for i in range(n):
        await rt.advise(sh, await rt.add_item(sh, f"Obj{i:05d}.Setpoint"), supervisory=False)
    moving = await rt.add_item(sh, "Moving.Level")
    await rt.advise(sh, moving, supervisory=False)
    got.clear()
    pauses = sum(1 for _ in plant._tick(time.time()))
    assert pauses >= 2
    delivered = [e.item_handle for batch in got for e in batch if isinstance(e, DataChange)]
    assert delivered == [moving]
    await rt.close()


async def test_many_buffered_items_each_get_their_batches(big: tuple[GatewaySimulator, Gw]) -> None:
    # Flushes skip the buffered items until one is due (before, every event walked all of
    # them: quadratic in a bulk write or subscribe of many buffered items).
    _, gw = big
    sid = await gw.open()
    sh = await gw.register(sid)
    n = 800  # under the replay ring's 1024 events, which DrainEvents reads
    reply = await gw.ok(
        sid,
        "subscribe_bulk",
        server_handle=sh,
        tag_addresses=["Tank01.LevelSetpoint"] * n,
        buffered_update_interval_ms=100,
    )
    handles = {r.item_handle for r in reply.bulk_subscribe.results}
    assert len(handles) == n

    def batched(events: list[pb.MxEvent]) -> set[int]:
        return {
            e.on_buffered_data_change.item_handle
            for e in events
            if e.HasField("on_buffered_data_change")
        }

    seen: set[int] = set()

    async def every_item_batched() -> bool:
        for _ in range(100):
            seen.update(batched(await gw.drain(sid)))
            if seen >= handles:
                return True
            await asyncio.sleep(0.05)
        return False

    assert await every_item_batched(), f"{len(handles - seen)} items got no batch"
