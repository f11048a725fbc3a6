"""Simulator capacity: sessions x advised items x change rate with no sequence gap.

One simulator subprocess per scan interval (Good quality everywhere) serves a ladder. A
step opens ``sessions`` sessions, advises the same ``items`` tags in each, and reads every
session's ``StreamEventBatches`` with the generated stub (the cheapest client, so the client
is not what drops). For a fixed window it counts delivered events and checks each
subscriber's ``worker_sequence``: a hole, an ``EVENT_QUEUE_OVERFLOW`` notice or a
RESOURCE_EXHAUSTED disconnect is a drop. Each ladder goes up until a step drops; that step
is reported as where it starts to drop, never hidden.

The change rate is what the plant really produced: ``events_per_item_s``. At 1 ms scan a
tag changes up to ~90 times a second; when the plant cannot tick that fast (many items or
sessions) the per-item rate falls: the simulator then sustains fewer changes rather than
dropping them, which the per-item rate shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import grpc

from bench import _client
from bench._common import METADATA, Report, load_tags, rnd, sim_server
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pb_grpc


@dataclass
class SubStats:
    """One subscriber's counters."""

    events: int = 0
    gaps: int = 0
    missed: int = 0
    overflow_notices: int = 0
    disconnected: bool = False
    last: int = 0


async def consume(stub: pb_grpc.MxAccessGatewayAsyncStub, session_id: str, st: SubStats) -> None:
    """Read one session's batch stream until cancelled, checking sequence continuity."""
    call = stub.StreamEventBatches(pb.StreamEventsRequest(session_id=session_id), metadata=METADATA)
    overflow = pb.STREAM_FAULT_KIND_EVENT_QUEUE_OVERFLOW
    try:
        async for batch in call:
            last, n = st.last, 0
            for ev in batch.events:
                seq = ev.worker_sequence
                if not seq:
                    if ev.stream_fault.kind == overflow:
                        st.overflow_notices += 1
                    continue
                if last and seq != last + 1:
                    st.gaps += 1
                    st.missed += seq - last - 1
                last = seq
                n += 1
            st.last = last
            st.events += n
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            st.disconnected = True
        elif exc.code() != grpc.StatusCode.CANCELLED:
            raise
    finally:
        call.cancel()


async def run_step(
    lib: Any,
    sim: Any,
    tags: list[str],
    sessions: int,
    items: int,
    window: float,
    scan_ms: int,
    chunk: int = 0,
) -> dict[str, Any]:
    """Open ``sessions`` sessions advising ``items`` tags each; measure for ``window`` s.

    ``chunk`` > 0 advises in SUBSCRIBE_BULK calls of that many tags instead of one call.
    """
    client = lib.client
    stub = pb_grpc.MxAccessGatewayStub(_client.session_channel(lib))
    opened = []
    tasks: list[asyncio.Task[None]] = []
    stats: list[SubStats] = []
    try:
        for i in range(sessions):
            s = await client.open_session(f"bench-capacity-{i}")
            opened.append(s)
            st = SubStats()
            stats.append(st)
            tasks.append(asyncio.create_task(consume(stub, s.session_id, st)))
        for s in opened:
            hlmx = await s.register("bench-capacity")
            step = chunk or items
            rows = []
            for k in range(0, items, step):
                rows += await s.subscribe_bulk(hlmx, tags[k : min(items, k + step)])
            bad = sum(1 for r in rows if not r.was_successful)
            if bad:
                raise RuntimeError(f"{bad} of {items} tags could not be advised")
        await asyncio.sleep(min(1.0, window / 2))  # initial values and warm-up
        before = [st.events for st in stats]
        setup_drop = any(st.gaps or st.overflow_notices or st.disconnected for st in stats)
        gaps0 = sum(st.gaps for st in stats)
        cpu0 = sim.cpu_seconds()
        t0 = time.perf_counter()
        await asyncio.sleep(window)
        elapsed = time.perf_counter() - t0
        cpu1 = sim.cpu_seconds()
        delivered = sum(st.events for st in stats) - sum(before)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for s in opened:
            with contextlib.suppress(Exception):
                await s.close()
    dropped = any(st.gaps or st.overflow_notices or st.disconnected for st in stats)
    total_rate = delivered / elapsed
    return {
        "sessions": sessions,
        "items_per_session": items,
        "scan_interval_ms": scan_ms,
        "events_per_s": rnd(total_rate, 0),
        "events_per_item_s": rnd(total_rate / (sessions * items), 2),
        "gaps": sum(st.gaps for st in stats),
        "gaps_in_window": sum(st.gaps for st in stats) - gaps0,
        "missed_events": sum(st.missed for st in stats),
        "overflow_notices": sum(st.overflow_notices for st in stats),
        "disconnected_subscribers": sum(1 for st in stats if st.disconnected),
        "dropped": dropped,
        "dropped_during_setup": setup_drop,
        "subscribe_chunk": chunk or items,
        "server_cpu_share": (
            rnd((cpu1 - cpu0) / elapsed, 3) if cpu0 is not None and cpu1 is not None else None
        ),
    }


SETUP_CHUNK = 1000
"""Chunk size of the retry after a drop during setup (the SUBSCRIBE_BULK burst)."""

# Ladder name -> (scan interval ms, [(sessions, items per session), ...]).
LADDERS: dict[str, tuple[int, list[tuple[int, int]]]] = {
    # More subscribers of the same 250 tags: fan-out cost.
    "sessions_1ms": (1, [(1, 250), (4, 250), (8, 250), (16, 250), (32, 250), (63, 250)]),
    # More advised items in one session: plant, encoding and one stream's send path.
    "items_1ms": (1, [(1, 1000), (1, 2000), (1, 3000), (1, 4000), (1, 8000)]),
    # A slower change rate (10 ms scan): how many items one session then sustains.
    "items_10ms": (10, [(1, 2000), (1, 4000), (1, 8000), (4, 2000), (8, 2000)]),
}
QUICK_LADDERS = {"sessions_1ms": (1, [(1, 20), (2, 20)])}


async def run_async(quick: bool) -> dict[str, Any]:
    """Run the ladders (one simulator per scan interval); returns the JSON document."""
    report = Report("capacity", quick)
    why = _client.missing_reason()
    if why:
        report.skip("simulator capacity ladder", why)
        return report.to_json()
    window = 0.3 if quick else 3.0
    ladders = QUICK_LADDERS if quick else LADDERS
    max_items = max(i for _, steps in ladders.values() for _, i in steps)
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        tags_file = os.path.join(tmp, "tags.txt")
        for name, (scan_ms, steps) in ladders.items():
            sim = sim_server(
                galaxy_objects=300 if quick else 2_000,
                scan_ms=scan_ms,
                tags_out=tags_file,
                max_sessions=100,
            )
            if sim is None:
                report.skip("simulator capacity ladder", "mxgateway_sim has not landed yet")
                return report.to_json()
            async with sim, _client.library_session(sim.address) as lib:
                assert lib is not None
                tags, _ = load_tags(tags_file, max_items)
                rows: list[dict[str, Any]] = []
                for sessions, items in steps:
                    if items > len(tags):
                        report.skip(f"{name} {sessions}x{items}", f"only {len(tags)} tags")
                        break
                    row = await run_step(lib, sim, tags, sessions, items, window, scan_ms)
                    rows.append(row)
                    if row["dropped"] and row["dropped_during_setup"] and items > SETUP_CHUNK:
                        # The burst of initial values overflowed the queue: is the steady
                        # state sustainable when the items are advised in chunks?
                        row = await run_step(
                            lib, sim, tags, sessions, items, window, scan_ms, SETUP_CHUNK
                        )
                        rows.append(row)
                    if row["dropped"]:
                        break
            sustained = [r for r in rows if not r["dropped"]]
            report.results[name] = {
                "scan_interval_ms": scan_ms,
                "steps": rows,
                "max_sustained": sustained[-1] if sustained else None,
                "first_drop": next((r for r in rows if r["dropped"]), None),
            }
    report.notes.append(
        f"Window {window} s per step after a warm-up; one StreamEventBatches subscriber "
        "per session (generated stub); every session advises the first N tags of the "
        "same synthetic galaxy, so per-item rates differ between item counts (tag mix). "
        "A drop is a worker_sequence hole, an EVENT_QUEUE_OVERFLOW notice or a "
        "RESOURCE_EXHAUSTED disconnect; a ladder stops at its first drop. A step that "
        f"dropped during setup (the burst of initial values of one big SUBSCRIBE_BULK) is "
        f"re-run advising {SETUP_CHUNK} tags per call; both rows are reported."
    )
    return report.to_json()


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench capacity``."""
    return asyncio.run(run_async(quick))
