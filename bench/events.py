"""Event stream throughput and client CPU per event.

Modes, each run against the same server in the same process, interleaved over rounds:

* ``bare_stream_events``: the generated stub on ``StreamEvents`` (one event per message),
* ``bare_stream_event_batches``: the generated stub on ``StreamEventBatches``,
* ``stream_events_raw`` / ``stream_event_batches_raw``: the client library's raw wrappers,
* ``typed_events``: the client library's typed ``Session.events()``, counting events,
* ``typed_events_read_fields``: the same, reading every documented ``DataChange`` field.

Servers: the replay server (``bench/replay_server.py``, a subprocess sending pre-serialized
events, so the client is the bottleneck), and the simulator at 1 ms scan, once with as many
advised tags as one subscriber stream can carry (``simulator_max``) and once paced so that
every mode keeps up (``simulator_paced``). Client CPU is ``time.process_time()`` of this
process (it includes gRPC's C-core threads; the server runs in another process). Also
reported: the raw wrapper's own cost per message without gRPC. The parse ceilings are
``python -m bench parse``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from bench import _client
from bench._common import (
    METADATA,
    CpuClock,
    Report,
    aio_channel,
    load_tags,
    median,
    replay_server,
    rnd,
    sim_server,
)
from bench._events import SESSION_ID
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pb_grpc

Mode = Callable[["StreamContext", int], Awaitable[int]]
SIM_MAX_TAGS = 2_000
SIM_PACED_TAGS = 80


class StreamContext:
    """What a mode needs: the channel, a session id, and the library's session if any."""

    def __init__(self, channel: grpc.aio.Channel, session_id: str, lib: Any = None) -> None:
        self.channel = channel
        self.stub = pb_grpc.MxAccessGatewayStub(channel)
        self.session_id = session_id
        self.lib = lib
        self.disconnects = 0
        """Streams the server ended with RESOURCE_EXHAUSTED (subscriber fell behind)."""
        self.gaps = 0
        """Events the typed stream reported lost (EventGap) after resuming."""

    def overflowed(self, exc: BaseException) -> bool:
        """True (and counted) when ``exc`` is the server disconnecting a slow subscriber."""
        if isinstance(exc, grpc.aio.AioRpcError):
            hit = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            hit = type(exc).__name__ == "MxGatewayOverloadedError"
        if hit:
            self.disconnects += 1
        return hit


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
    except grpc.aio.AioRpcError as exc:
        if not ctx.overflowed(exc):
            raise
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
    except grpc.aio.AioRpcError as exc:
        if not ctx.overflowed(exc):
            raise
    finally:
        call.cancel()
    return count


BARE_MODES: dict[str, Mode] = {
    "bare_stream_events": bare_stream_events,
    "bare_stream_event_batches": bare_stream_event_batches,
}


async def measure(mode: Mode, ctx: StreamContext, n: int) -> dict[str, float]:
    """Run one mode once: events/s (wall) and client CPU µs per event.

    A stream the server disconnects for falling behind still counts the events it got
    (the rate until then) and is reported in ``disconnects``.
    """
    d0, g0 = ctx.disconnects, ctx.gaps
    with CpuClock() as clock:
        got = await asyncio.wait_for(mode(ctx, n), timeout=max(60.0, n / 1000))
    return {
        "disconnects": ctx.disconnects - d0,
        "gaps": ctx.gaps - g0,
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
            "disconnected_runs": sum(1 for r in rs if r["disconnects"]),
            "events_lost_to_gaps": int(sum(r["gaps"] for r in rs)),
            "events_per_run": int(median([r["events"] for r in rs])),
            "runs": len(rs),
            "events_per_s": rnd(median([r["events_per_s"] for r in rs]), 0),
            "events_per_s_best": rnd(max(r["events_per_s"] for r in rs), 0),
            "cpu_us_per_event": rnd(median([r["cpu_us_per_event"] for r in rs]), 3),
        }
        if name in errors:
            out[name]["error"] = errors[name]
    # Paired ratios: each round's wrapper run against the bare run right next to it.
    for name, bare in PAIRS.items():
        w, b = runs.get(name) or [], runs.get(bare) or []
        if w and b and name in out:
            pairs = list(zip(w, b, strict=False))
            out[name]["events_per_s_vs_bare"] = rnd(
                median([x["events_per_s"] / y["events_per_s"] for x, y in pairs]), 3
            )
            out[name]["cpu_per_event_vs_bare"] = rnd(
                median([x["cpu_us_per_event"] / y["cpu_us_per_event"] for x, y in pairs]), 3
            )
    return out


# Library mode -> the bare-stub mode it is compared with.
PAIRS = {
    "stream_events_raw": "bare_stream_events",
    "stream_event_batches_raw": "bare_stream_event_batches",
    "typed_events": "bare_stream_events",
    "typed_events_read_fields": "bare_stream_events",
}


def add_targets(
    report: Report,
    results: dict[str, Any],
    where: str,
    *,
    wrappers: bool = True,
    typed: bool = True,
) -> None:
    """The issue's event targets, evaluated on one server's results.

    A comparison involving a stream the server disconnected (it fell behind) is reported
    as not measurable (``met`` None) rather than met or missed.
    """

    def disconnected(*names: str) -> bool:
        return any((results.get(n) or {}).get("disconnected_runs") for n in names)

    def get(name: str, key: str = "events_per_s") -> float | None:
        r = results.get(name) or {}
        v = r.get(key)
        return float(v) if isinstance(v, (int, float)) else None

    for wrapper, bare in (
        ("stream_events_raw", "bare_stream_events"),
        ("stream_event_batches_raw", "bare_stream_event_batches"),
    ):
        if not wrappers:
            break
        if disconnected(wrapper, bare):
            report.target(
                f"{where}: {wrapper} within 5% of {bare}",
                "not measurable: the server disconnected the stream (it fell behind)",
                None,
                None,
            )
            continue
        r = get(wrapper, "events_per_s_vs_bare")
        report.target(
            f"{where}: {wrapper} within 5% of {bare}",
            "paired events/s ratio >= 0.95",
            r,
            None if r is None else r >= 0.95,
        )
        c = get(wrapper, "cpu_per_event_vs_bare")
        report.target(
            f"{where}: {wrapper} CPU/event within 5% of {bare}",
            "paired CPU/event ratio <= 1.05",
            c,
            None if c is None else c <= 1.05,
        )
    if not typed:
        return
    typed_eps = get("typed_events")
    report.target(
        f"{where}: typed Session.events() >= 150,000 events/s",
        ">= 150000 events/s",
        typed_eps,
        None if typed_eps is None else typed_eps >= 150_000,
    )
    fields_eps = get("typed_events_read_fields")
    report.target(
        f"{where}: typed Session.events() reading every field >= 150,000 events/s",
        ">= 150000 events/s",
        fields_eps,
        None if fields_eps is None else fields_eps >= 150_000,
    )
    if disconnected("bare_stream_events"):
        report.target(
            f"{where}: typed Session.events() >= 20x bare StreamEvents",
            "not measurable: the server disconnected bare StreamEvents (it fell behind)",
            None,
            None,
        )
        return
    r = get("typed_events", "events_per_s_vs_bare")
    report.target(
        f"{where}: typed Session.events() >= 20x bare StreamEvents",
        "ratio >= 20",
        r,
        None if r is None else r >= 20,
    )


async def run_replay(report: Report, quick: bool) -> None:
    """(b) The replay server: pre-serialized events, the client is the bottleneck."""
    batch_n = 2_000 if quick else 400_000
    single_n = 500 if quick else 10_000
    rounds = 1 if quick else 9
    sizes = {
        "bare_stream_events": single_n,
        "stream_events_raw": single_n,
        "bare_stream_event_batches": batch_n,
        "stream_event_batches_raw": batch_n,
        "typed_events": batch_n,
        "typed_events_read_fields": batch_n,
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


async def _sim_phase(
    lib: Any, sim: Any, tags: list[str], sizes: dict[str, int], rounds: int
) -> dict[str, Any]:
    """Advise ``tags`` in the library session, run every mode on it, then unadvise."""
    session = lib.session
    hlmx = await session.register("bench-events")
    rows = await session.subscribe_bulk(hlmx, tags)
    handles = [r.item_handle for r in rows if r.was_successful]
    try:
        ctx = StreamContext(_client.session_channel(lib), _client.session_id(lib), lib)
        modes: dict[str, Mode] = {**BARE_MODES, **_client.event_modes()[0]}
        cpu0 = sim.cpu_seconds()
        t0 = time.perf_counter()
        results = await run_modes(ctx, modes, sizes, rounds)
        cpu1 = sim.cpu_seconds()
        if cpu0 is not None and cpu1 is not None:
            results["server_cpu_share"] = rnd((cpu1 - cpu0) / (time.perf_counter() - t0), 3)
        results["advised_items"] = len(handles)
        results["scan_interval_ms"] = 1
    finally:
        await session.unsubscribe_bulk(hlmx, handles)
    return results


async def run_sim(report: Report, quick: bool) -> None:
    """(a) The simulator producing events (1 ms scan), at two production rates.

    ``simulator_max``: as many advised tags as the simulator can still send on a batch
    stream (it produces ~90 changes/s per tag at a 1 ms scan); the one-event-per-message
    streams cannot follow that rate and are disconnected (reported, with the rate they
    reached). ``simulator_paced``: few enough tags that every mode keeps up, so the
    modes are compared at the same event rate (client CPU per event is the figure).
    """
    why = _client.missing_reason()
    if why:
        report.skip("simulator event streams", why)
        return
    rounds = 1 if quick else 3
    phases = {
        "simulator_max": (
            300 if quick else SIM_MAX_TAGS,
            {"single": 500 if quick else 10_000, "batch": 2_000 if quick else 200_000},
        ),
        "simulator_paced": (
            50 if quick else SIM_PACED_TAGS,
            {"single": 500 if quick else 10_000, "batch": 500 if quick else 10_000},
        ),
    }
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        tags_file = os.path.join(tmp, "tags.txt")
        sim = sim_server(galaxy_objects=300 if quick else 1_500, scan_ms=1, tags_out=tags_file)
        if sim is None:
            report.skip("simulator event streams", "mxgateway_sim has not landed yet")
            return
        async with sim, _client.library_session(sim.address) as lib:
            assert lib is not None
            for name, (n_tags, n) in phases.items():
                tags, _ = load_tags(tags_file, n_tags)
                sizes = {
                    "bare_stream_events": n["single"],
                    "stream_events_raw": n["single"],
                    "bare_stream_event_batches": n["batch"],
                    "stream_event_batches_raw": n["batch"],
                    "typed_events": n["batch"],
                    "typed_events_read_fields": n["batch"],
                }
                results = await _sim_phase(lib, sim, tags, sizes, rounds)
                report.results[name] = results
                if name == "simulator_max":
                    add_targets(report, results, name)
                else:  # the rate is capped on purpose: only the wrapper costs compare
                    add_targets(report, results, name, typed=False)


class _FakeCall:
    """Stands in for a ``grpc.aio`` stream call: yields prepared messages, no network."""

    def __init__(self, items: list[Any]) -> None:
        self._items = items

    def __aiter__(self) -> Any:
        return self._gen()

    async def _gen(self) -> Any:
        for item in self._items:
            yield item

    def cancel(self) -> bool:
        return True


async def wrapper_overhead(report: Report, quick: bool) -> None:
    """The raw wrappers' own cost per message, without gRPC: the library's ``Stream``
    (what ``stream_events_raw`` returns) around a fake call, against iterating the fake
    call directly. A deterministic complement to the noisy end-to-end ratios."""
    try:
        from mxgateway._transport import Stream
    except ImportError as exc:
        report.skip("wrapper overhead", f"mxgateway._transport.Stream: {exc}")
        return
    n = 20_000 if quick else 300_000
    items = [None] * n

    async def direct() -> int:
        count = 0
        async for _ in _FakeCall(items):
            count += 1
        return count

    async def wrapped() -> int:
        count = 0
        stream: Any = Stream(None, _FakeCall(items), session_id=None, what="bench")  # type: ignore[arg-type]
        async for _ in stream:
            count += 1
        return count

    best: dict[str, float] = {}
    for _ in range(3 if quick else 5):
        for name, fn in (("direct", direct), ("wrapped", wrapped)):
            t0 = time.perf_counter()
            await fn()
            us = (time.perf_counter() - t0) / n * 1e6
            best[name] = min(best.get(name, us), us)
    report.results["raw_wrapper_overhead"] = {
        "direct_us_per_message": rnd(best["direct"], 3),
        "wrapped_us_per_message": rnd(best["wrapped"], 3),
        "added_us_per_message": rnd(best["wrapped"] - best["direct"], 3),
    }


async def run_async(quick: bool) -> dict[str, Any]:
    """Both servers; returns the JSON document."""
    report = Report("events", quick)
    await wrapper_overhead(report, quick)
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
