"""Event stream throughput and client CPU per event.

Modes, each run against the same server in the same process, interleaved over rounds:

* ``bare_stream_events``: the generated stub on ``StreamEvents`` (one event per message),
* ``bare_stream_event_batches``: the generated stub on ``StreamEventBatches``,
* ``stream_events_raw`` / ``stream_event_batches_raw``: the client library's raw wrappers,
* ``typed_events``: the client library's typed ``Session.events()``.

Two servers: (a) the replay server (``bench/replay_server.py``, a subprocess sending
pre-serialized events, so the client is the bottleneck) and (b) the simulator producing
events as fast as it can, when it has landed. Client CPU is ``time.process_time()`` of this
process (it includes gRPC's C-core threads; the server runs in another process).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from bench import _client
from bench._common import METADATA, CpuClock, Report, aio_channel, median, ratio, replay_server, rnd
from bench._events import SESSION_ID
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pb_grpc

Mode = Callable[["StreamContext", int], Awaitable[int]]


class StreamContext:
    """What a mode needs: the channel, a session id, and the library's session if any."""

    def __init__(self, channel: grpc.aio.Channel, session_id: str, lib: Any = None) -> None:
        self.channel = channel
        self.stub = pb_grpc.MxAccessGatewayStub(channel)
        self.session_id = session_id
        self.lib = lib


async def bare_stream_events(ctx: StreamContext, n: int) -> int:
    """Generated stub, ``StreamEvents``: count ``n`` sequenced events."""
    call = ctx.stub.StreamEvents(
        pb.StreamEventsRequest(session_id=ctx.session_id), metadata=METADATA
    )
    count = 0
    try:
        async for ev in call:
            if ev.worker_sequence:
                count += 1
                if count >= n:
                    break
    finally:
        call.cancel()
    return count


async def bare_stream_event_batches(ctx: StreamContext, n: int) -> int:
    """Generated stub, ``StreamEventBatches``: count ``n`` sequenced events."""
    call = ctx.stub.StreamEventBatches(
        pb.StreamEventsRequest(session_id=ctx.session_id), metadata=METADATA
    )
    count = 0
    try:
        async for batch in call:
            for ev in batch.events:
                if ev.worker_sequence:
                    count += 1
            if count >= n:
                break
    finally:
        call.cancel()
    return count


BARE_MODES: dict[str, Mode] = {
    "bare_stream_events": bare_stream_events,
    "bare_stream_event_batches": bare_stream_event_batches,
}


async def measure(mode: Mode, ctx: StreamContext, n: int) -> dict[str, float]:
    """Run one mode once: events/s (wall) and client CPU µs per event."""
    with CpuClock() as clock:
        got = await asyncio.wait_for(mode(ctx, n), timeout=max(60.0, n / 1000))
    return {
        "events": got,
        "events_per_s": got / clock.wall if clock.wall else 0.0,
        "cpu_us_per_event": clock.cpu / got * 1e6 if got else float("nan"),
        "wall_s": clock.wall,
    }


async def run_modes(
    ctx: StreamContext, modes: dict[str, Mode], sizes: dict[str, int], rounds: int
) -> dict[str, Any]:
    """Interleave the modes over ``rounds`` and keep the median of each figure."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    errors: dict[str, str] = {}
    for _ in range(rounds):
        for name, mode in modes.items():
            if name in errors:
                continue
            try:
                runs[name].append(await measure(mode, ctx, sizes[name]))
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"[:500]
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        if not rs:
            out[name] = {"error": errors.get(name, "no run")}
            continue
        out[name] = {
            "events_per_run": int(rs[0]["events"]),
            "runs": len(rs),
            "events_per_s": rnd(median([r["events_per_s"] for r in rs]), 0),
            "events_per_s_best": rnd(max(r["events_per_s"] for r in rs), 0),
            "cpu_us_per_event": rnd(median([r["cpu_us_per_event"] for r in rs]), 3),
        }
        if name in errors:
            out[name]["error"] = errors[name]
    return out


def add_targets(report: Report, results: dict[str, Any], where: str) -> None:
    """The issue's event targets, evaluated on one server's results."""

    def eps(name: str) -> float | None:
        r = results.get(name) or {}
        v = r.get("events_per_s")
        return float(v) if isinstance(v, (int, float)) else None

    for wrapper, bare in (
        ("stream_events_raw", "bare_stream_events"),
        ("stream_event_batches_raw", "bare_stream_event_batches"),
    ):
        w, b = eps(wrapper), eps(bare)
        r = ratio(w, b) if w is not None and b is not None else None
        report.target(
            f"{where}: {wrapper} within 5% of {bare}",
            "events/s ratio >= 0.95",
            r,
            None if r is None else r >= 0.95,
        )
    typed, bare1 = eps("typed_events"), eps("bare_stream_events")
    report.target(
        f"{where}: typed Session.events() >= 150,000 events/s",
        ">= 150000 events/s",
        typed,
        None if typed is None else typed >= 150_000,
    )
    r = ratio(typed, bare1) if typed is not None and bare1 is not None else None
    report.target(
        f"{where}: typed Session.events() >= 20x bare StreamEvents",
        "ratio >= 20",
        r,
        None if r is None else r >= 20,
    )


async def run_replay(report: Report, quick: bool) -> None:
    """(b) The replay server: pre-serialized events, the client is the bottleneck."""
    batch_n = 2_000 if quick else 300_000
    single_n = 500 if quick else 20_000
    rounds = 1 if quick else 3
    sizes = {
        "bare_stream_events": single_n,
        "stream_events_raw": single_n,
        "bare_stream_event_batches": batch_n,
        "stream_event_batches_raw": batch_n,
        "typed_events": batch_n,
    }
    async with replay_server(batch_n, 500) as server, aio_channel(server.address) as channel:
        modes: dict[str, Mode] = dict(BARE_MODES)
        lib_modes, why = _client.event_modes()
        async with _client.library_session(server.address) as lib:
            ctx = StreamContext(channel, SESSION_ID, lib)
            if lib is None:
                report.skip("replay: library event modes", why or "client library missing")
            else:
                modes.update(lib_modes)
            cpu0 = server.cpu_seconds()
            t0 = time.perf_counter()
            results = await run_modes(ctx, modes, sizes, rounds)
            cpu1 = server.cpu_seconds()
            if cpu0 is not None and cpu1 is not None:
                results["server_cpu_share"] = rnd((cpu1 - cpu0) / (time.perf_counter() - t0), 3)
    report.results["replay"] = results
    add_targets(report, results, "replay")


async def run_sim(report: Report, quick: bool) -> None:
    """(a) The simulator producing events as fast as it can."""
    ok, why = await _client.sim_event_source_available()
    if not ok:
        report.skip("simulator event streams", why)
        return
    batch_n = 2_000 if quick else 100_000
    single_n = 500 if quick else 10_000
    rounds = 1 if quick else 2
    sizes = {
        "bare_stream_events": single_n,
        "stream_events_raw": single_n,
        "bare_stream_event_batches": batch_n,
        "stream_event_batches_raw": batch_n,
        "typed_events": batch_n,
    }
    results = await _client.run_against_sim(
        lambda ctx: run_modes(ctx, {**BARE_MODES, **_client.event_modes()[0]}, sizes, rounds),
        StreamContext,
    )
    report.results["simulator"] = results
    add_targets(report, results, "simulator")


async def run_async(quick: bool) -> dict[str, Any]:
    """Both servers; returns the JSON document."""
    report = Report("events", quick)
    await run_replay(report, quick)
    await run_sim(report, quick)
    report.notes.append(
        "events_per_s is the median over rounds of events counted / wall time, from "
        "subscribe to the n-th event; cpu_us_per_event is this process's CPU over the "
        "same interval (gRPC threads included) per event."
    )
    return report.to_json()


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench events``."""
    return asyncio.run(run_async(quick))
