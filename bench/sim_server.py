"""The simulator (``mxgateway_sim.GatewaySimulator``) in a bench subprocess.

``python -m bench.sim_server --galaxy-objects N --scan-ms MS --tags-out FILE ...`` starts the
real simulated gateway on 127.0.0.1 (plaintext, the bench API key), writes the references of
the writeable scalar Double attributes of its catalog to ``--tags-out`` (one a line), prints
one JSON line ``{"address": ...}`` and serves until terminated. It exists (instead of
``mxgw-sim serve``) so the benchmarks can set the scan interval, the synthetic galaxy size
and the session/event limits.

``--loop-probe FILE`` adds a probe task to the server's event loop (``bench/loop_stall.py``):
it sleeps :data:`PROBE_INTERVAL_S` again and again and records by how much each sleep
overran, which is how long the loop was held by something else. On SIGUSR1 the server
writes what it recorded since the previous SIGUSR1 to FILE (atomically) and starts afresh.
On SIGWINCH the server runs the GC policy's valve check (``mxgateway_sim._gcpolicy``: every
10 minutes in ``mxgw-sim serve``; a full collection only if the frozen objects grew), on
SIGHUP the full collection itself (the valve's, a slice at a time), so their holds can be
measured; a SIGUSR1 meanwhile is answered once it is done.
``--stats-file FILE``: on SIGUSR2 the plant's scan counters (``Plant.scan_stats()``: scans,
late and skipped scans) are written to FILE; with ``--gc-stats`` also what the GC policy's
valve counts (``gc``: frozen and young tracked objects, those the simulator holds, the
valve's base, the last full collection's findings and loop-thread CPU), and SIGHUP runs
the full collection.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import logging
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mxgateway_sim._grpcenv import apply_server_experiments

apply_server_experiments()  # as mxgw-sim serve does: before anything below loads gRPC

from bench._common import API_KEY  # noqa: E402
from mxgateway_sim._eventloop import EVENT_LOOPS, EventLoopUnavailable  # noqa: E402
from mxgateway_sim._eventloop import run as run_event_loop  # noqa: E402

DEFAULT_WORKER_POOL = 2
"""``--worker-pool`` unless told (the gateway's default; kept here so that parsing the
arguments does not import the simulator)."""

PROBE_INTERVAL_S = 0.002
"""Sleep of the loop probe: a stall shorter than this cannot be seen, a longer one is
measured to within a few microseconds."""

_WRITEABLE = frozenset({-1, 4, 5, 6, 7, 8, 9, 10, 11, 14})
# COM MxDataType of the scalars the bench writes: Boolean, Integer, Double, String.
_BENCH_TYPES = frozenset({1, 2, 4, 5})


def select_tags(catalog: Any) -> list[str]:
    """``reference<TAB>COM data type`` of every writeable scalar the bench can write."""
    return [
        f"{t.full_tag_reference}\t{t.mx_data_type}"
        for t in catalog.all_tags()
        if not t.is_array
        and t.mx_data_type in _BENCH_TYPES
        and t.mx_attribute_category in _WRITEABLE
        and t.security_classification not in (2, 3, 6)
    ]


def _rss_mb() -> float | None:
    """The process's resident memory now (Linux), in MiB."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20), 1)


class LoopProbe:
    """Measures how late the event loop wakes a sleeping task (the loop's longest stalls)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lateness: list[float] = []
        self.cpu: list[float] = []  # loop-thread CPU seconds during each sleep
        self.cpu_no_gc: list[float] = []  # the same, for sleeps no collection ran in
        self.collections = 0
        # (generation, wall seconds, loop-thread CPU seconds) per collection
        self.gc_pauses: list[tuple[int, float, float]] = []
        self._gc_start = 0.0
        self._gc_start_cpu = 0.0
        self.since = time.monotonic()
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
            self._gc_start_cpu = time.thread_time()
        else:
            self.collections += 1
            self.gc_pauses.append(
                (
                    info["generation"],
                    time.perf_counter() - self._gc_start,
                    time.thread_time() - self._gc_start_cpu,
                )
            )

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            t0, c0, n0 = time.perf_counter(), time.thread_time(), self.collections
            await asyncio.sleep(PROBE_INTERVAL_S)
            self.lateness.append(time.perf_counter() - t0 - PROBE_INTERVAL_S)
            cpu = time.thread_time() - c0
            self.cpu.append(cpu)
            if self.collections == n0:
                self.cpu_no_gc.append(cpu)

    def dump(self) -> None:
        """Write the samples since the last dump to ``path`` and start afresh."""
        lateness, cpu, pauses = self.lateness, self.cpu, self.gc_pauses
        cpu_no_gc = self.cpu_no_gc
        self.lateness, self.cpu, self.gc_pauses, self.cpu_no_gc = [], [], [], []
        longest_gc = max(pauses, key=lambda p: p[1], default=None)
        costliest_gc = max(pauses, key=lambda p: p[2], default=None)
        order = sorted(range(len(lateness)), key=lateness.__getitem__)
        worst = order[-1] if order else None
        doc = {
            "window_s": round(time.monotonic() - self.since, 3),
            "samples": len(lateness),
            "max_stall_ms": round(lateness[worst] * 1000, 2) if worst is not None else None,
            "max_stall_loop_cpu_ms": round(cpu[worst] * 1000, 2) if worst is not None else None,
            # The loop thread's own longest run between two probe wake-ups: the stall the
            # server caused, whatever else the machine was doing.
            "max_loop_cpu_ms": round(max(cpu) * 1000, 2) if cpu else None,
            # ... among the runs no garbage collection fell into: the server's own code.
            "max_loop_cpu_no_gc_ms": round(max(cpu_no_gc) * 1000, 2) if cpu_no_gc else None,
            "p99_stall_ms": (
                round(lateness[order[int(len(order) * 0.99)]] * 1000, 2) if order else None
            ),
            "stalls_over_50ms": sum(1 for x in lateness if x > 0.05),
            "stalls_over_100ms": sum(1 for x in lateness if x > 0.1),
            "top_stalls_ms": [round(lateness[i] * 1000, 1) for i in order[::-1][:5]],
            "gc_collections": len(pauses),
            "longest_gc_ms": round(longest_gc[1] * 1000, 2) if longest_gc else None,
            "longest_gc_generation": longest_gc[0] if longest_gc else None,
            # The collection that took the most CPU of the loop thread (the wall time above
            # adds whatever else the shared machine ran meanwhile).
            "max_gc_cpu_ms": round(costliest_gc[2] * 1000, 2) if costliest_gc else None,
            "max_gc_cpu_generation": costliest_gc[0] if costliest_gc else None,
            "gc_by_generation": [sum(1 for p in pauses if p[0] == g) for g in range(3)],
            "rss_mb": _rss_mb(),
            "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        self.since = time.monotonic()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, self.path)


class TailTrace:
    """What may hold the server's loop, each with its times (``time.perf_counter``: the
    monotonic clock every process on the machine shares, so a client can line them up
    with its calls): garbage collections (generation, objects walked), scan-tick slices,
    each command of a command stream (``command``: request handed to the servicer to
    reply handed back) and, on the asyncio loop with ``callbacks``, every loop callback
    that ran longer than :data:`TRACE_SLOW_CALLBACK_S` (its name). ``bench/read_tail.py``
    reads them."""

    def __init__(self, path: Path, *, callbacks: bool) -> None:
        self.path = path
        self.spans: collections.deque[tuple[str, float, float, int]] = collections.deque(
            maxlen=1_000_000
        )
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)
        self._patch_tick()
        self._patch_commands()
        if callbacks:
            self._patch_callbacks()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            gen = info["generation"]
            self.spans.append((f"gc{gen}", self._gc_start, time.perf_counter(), info["collected"]))

    def _patch_tick(self) -> None:
        from mxgateway_sim._plant import Plant

        spans = self.spans
        tick = Plant._tick

        def traced(plant: Any, now: float) -> Any:
            t0 = time.perf_counter()
            for _ in tick(plant, now):
                spans.append(("tick", t0, time.perf_counter(), len(plant._active)))
                yield
                t0 = time.perf_counter()
            spans.append(("tick", t0, time.perf_counter(), len(plant._active)))

        Plant._tick = traced  # type: ignore[assignment]

    def _patch_commands(self) -> None:
        """``command`` spans: each command of a command stream on the loop, from its
        request handed to the servicer to its reply handed back (the rest of a round trip
        is the two processes' threads and the wire)."""
        from mxgateway_sim._servicer import GatewayServicer

        spans = self.spans
        command = GatewayServicer._stream_command

        async def traced(servicer: Any, request: object, context: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await command(servicer, request, context)
            finally:
                spans.append(("command", t0, time.perf_counter(), 0))

        GatewayServicer._stream_command = traced  # type: ignore[assignment]

    def _patch_callbacks(self) -> None:
        from asyncio import events

        spans = self.spans
        run = events.Handle._run
        clock = time.perf_counter

        def timed(handle: Any) -> None:
            t0 = clock()
            run(handle)
            t1 = clock()
            if t1 - t0 > TRACE_SLOW_CALLBACK_S:
                cb = getattr(handle, "_callback", None)
                name = getattr(cb, "__qualname__", None) or type(cb).__name__
                owner = getattr(cb, "__self__", None)
                if owner is not None and hasattr(owner, "get_coro"):
                    coro = owner.get_coro()
                    name = getattr(coro, "__qualname__", name)
                spans.append((f"cb:{name}", t0, t1, 0))

        events.Handle._run = timed  # type: ignore[assignment]

    def dump(self) -> None:
        """Write the spans since the last dump to ``path`` (atomically) and start afresh."""
        spans = list(self.spans)
        self.spans.clear()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spans), encoding="utf-8")
        os.replace(tmp, self.path)


TRACE_SLOW_CALLBACK_S = 0.0001
"""A loop callback longer than this is traced (``--trace-callbacks``)."""


async def serve(args: argparse.Namespace) -> None:
    """Start the simulator, report, serve until SIGTERM/SIGINT."""
    from mxgateway_sim import GatewaySimulator, SessionOptions
    from mxgateway_sim._gcpolicy import ServerGcPolicy
    from mxgateway_sim._workerclient import WorkerSettings

    options = SessionOptions(
        command_timeout_s=args.command_timeout_s,
        max_sessions=args.max_sessions,
        max_sessions_per_key=args.max_sessions,  # one bench key opens every session
        event_queue_limit=args.event_queue_limit,
        event_queue_bytes=args.event_queue_bytes,
        multiple_subscribers=True,
        max_subscribers=8,
    )
    db = None
    if args.galaxy_objects and args.db_dir:
        # Synthetic galaxies are cached between runs (creating 2,600 objects takes seconds).
        from mxgateway_sim.galaxy._schema import db_file_name  # names carry the schema version

        db = Path(args.db_dir) / db_file_name(args.galaxy_objects, 0)
    sim = GatewaySimulator(
        api_keys=[API_KEY],
        galaxy_objects=args.galaxy_objects or None,
        galaxy_db=db,
        scan_interval_ms=args.scan_ms,
        flaky_one_in=0,
        max_sessions=args.max_sessions,
        session_options=options,
        galaxy_poll_interval=3600.0,
        session_isolation=args.session_isolation,
        worker_settings=WorkerSettings(pool_size=args.worker_pool),
        metrics_listen=("127.0.0.1", 0) if args.metrics else None,
        gc_tenure=True,  # as mxgw-sim serve
    )
    trace = TailTrace(Path(args.trace), callbacks=args.trace_callbacks) if args.trace else None
    await sim.start()
    try:
        assert sim.plant is not None
        catalog = sim.plant.catalog
        tags = select_tags(catalog)
        if args.tags_out:
            text = "\n".join(tags) + "\n"
            await asyncio.to_thread(Path(args.tags_out).write_text, text, encoding="utf-8")
        print(
            json.dumps(
                {
                    "address": sim.endpoint,
                    "tags": len(tags),
                    "all_tags": len(catalog.all_tags()),
                    "metrics": sim.metrics_endpoint,
                }
            ),
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        last_full: dict[str, Any] = {}
        gc_tasks: set[asyncio.Task[Any]] = set()

        def gc_task(run: Callable[[], Coroutine[Any, Any, Any]]) -> None:
            """Run the policy's valve or full collection (they take turns of the loop)."""
            task: asyncio.Task[Any] = loop.create_task(run())
            gc_tasks.add(task)
            task.add_done_callback(gc_tasks.discard)

        def after_gc(then: Callable[[], None]) -> Callable[[], None]:
            """``then``, once no valve or full collection of :func:`gc_task` is running."""

            def run() -> None:
                if gc_tasks:
                    asyncio.gather(*gc_tasks, return_exceptions=True).add_done_callback(
                        lambda _: then()
                    )
                else:
                    then()

            return run

        async def full_collection() -> None:
            """The GC policy's full collection (the valve's, a slice at a time), now
            (SIGHUP), its loop-thread CPU summed over its slices; with ``--gc-stats`` after a
            young one (so what it finds is frozen garbage only), with a census by type of
            what its walk visits, and the garbage it found is counted by type (kept for the
            count, then freed by a second one)."""
            walked: collections.Counter[str] = collections.Counter()
            census_s = 0.0

            def census(phase: str, info: dict[str, Any]) -> None:
                nonlocal census_s
                if phase == "start" and info["generation"] == 2 and not walked:
                    t0 = time.thread_time()
                    walked.update(type(o).__qualname__ for o in gc.get_objects())
                    census_s = time.thread_time() - t0

            if args.gc_stats:
                gc.collect(1)  # young garbage goes the usual way: count only the frozen
                gc.callbacks.append(census)
                gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                found = await ServerGcPolicy.full_collection_sliced()
            finally:
                gc.set_debug(0)
                if census in gc.callbacks:
                    gc.callbacks.remove(census)
            steps = ServerGcPolicy.last_sliced
            kinds = collections.Counter(
                f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
            )
            if gc.garbage:
                gc.garbage.clear()
                await ServerGcPolicy.full_collection_sliced()
            ms: dict[str, Any] = {}
            if steps is not None:  # None: it fell back to one piece (see _gcpolicy)
                # The census is in the walk's step: its own CPU is not the policy's.
                walk = steps.walk_s - census_s
                ms = {
                    "cpu_ms": round((steps.cpu_s - census_s) * 1000, 1),
                    "longest_step_ms": round(max(walk, steps.others_s) * 1000, 1),
                    "walk_ms": round(walk * 1000, 1),
                    "longest_other_step_ms": round(steps.others_s * 1000, 1),
                    "census_ms": round(census_s * 1000, 1),
                    "steps": steps.steps,
                    "hidden": steps.hidden,
                }
            last_full.update(
                found=found,
                **ms,
                frozen_after=gc.get_freeze_count(),
                found_by_type=dict(kinds.most_common(12)),
                walked=sum(walked.values()),
                walked_by_type=dict(walked.most_common(12)),
            )

        if args.stats_file:
            stats_path = Path(args.stats_file)

            def dump_stats() -> None:
                assert sim.plant is not None
                # What the policy's valve counts (mxgateway_sim._gcpolicy): frozen and young
                # tracked objects, those the simulator holds alive, the valve's base.
                doc: dict[str, Any] = sim.plant.scan_stats()
                if args.gc_stats:  # a walk of the frozen objects: not in others' windows
                    doc["gc"] = {
                        "frozen": gc.get_freeze_count(),
                        "young": len(gc.get_objects()),
                        "held": ServerGcPolicy.held(),
                        "low": ServerGcPolicy.low,
                        "last_full_collection": dict(last_full) or None,
                    }
                tmp = stats_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(doc), encoding="utf-8")
                os.replace(tmp, stats_path)

            loop.add_signal_handler(signal.SIGUSR2, after_gc(dump_stats))
            if args.gc_stats:
                loop.add_signal_handler(signal.SIGHUP, gc_task, full_collection)
        probe_task = None
        if trace is not None:
            loop.add_signal_handler(signal.SIGUSR1, trace.dump)
        elif args.loop_probe:
            probe = LoopProbe(Path(args.loop_probe))
            probe_task = loop.create_task(probe.run())
            # A window is read once the valve or full collection running is done.
            loop.add_signal_handler(signal.SIGUSR1, after_gc(probe.dump))
            # The policy's valve check and its full collection, now (bench/loop_stall.py
            # measures them).
            loop.add_signal_handler(signal.SIGWINCH, gc_task, ServerGcPolicy.valve_sliced)
            loop.add_signal_handler(signal.SIGHUP, gc_task, full_collection)
        await stop.wait()
        if probe_task is not None:
            probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe_task
    finally:
        await sim.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.sim_server")
    parser.add_argument("--galaxy-objects", type=int, default=0, help="0 = default plant")
    parser.add_argument(
        "--db-dir",
        default=str(Path(tempfile.gettempdir()) / "mxgw-bench-galaxy"),
        help="where synthetic galaxy databases are cached ('' = the simulator's default)",
    )
    parser.add_argument("--scan-ms", type=int, default=200)
    parser.add_argument("--max-sessions", type=int, default=64)
    parser.add_argument("--event-queue-limit", type=int, default=10_000)
    parser.add_argument("--event-queue-bytes", type=int, default=16 << 20)
    parser.add_argument("--metrics", action="store_true", help="--metrics-listen 127.0.0.1:0")
    parser.add_argument("--tags-out", default="")
    parser.add_argument("--command-timeout-s", type=float, default=30.0)
    parser.add_argument(
        "--stats-file", default="", help="file the plant's scan counters go to on SIGUSR2"
    )
    parser.add_argument(
        "--gc-stats",
        action="store_true",
        help="--stats-file also gets what the GC policy's valve counts; SIGHUP collects",
    )
    parser.add_argument("--loop-probe", default="", help="file the loop probe writes on SIGUSR1")
    parser.add_argument(
        "--trace", default="", help="file the tail trace goes to on SIGUSR1 (not with --loop-probe)"
    )
    parser.add_argument(
        "--trace-callbacks", action="store_true", help="--trace also loop callbacks (asyncio)"
    )
    parser.add_argument("--session-isolation", choices=("inline", "process"), default="inline")
    parser.add_argument(
        "--worker-pool", type=int, default=DEFAULT_WORKER_POOL, help="workers started ahead"
    )
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="asyncio",
        help="the server's event loop (asyncio unless told, unlike mxgw-sim serve: figures "
        "taken before and after uvloop became serve's default compare)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.db_dir:
        Path(args.db_dir).mkdir(parents=True, exist_ok=True)
    try:
        run_event_loop(serve(args), args.event_loop)
    except EventLoopUnavailable as exc:
        print(f"bench.sim_server: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
