"""Thread wake-ups per single call: the simulator with and without its gRPC settings.

Issue 15's single-call rows (``python -m bench opcua``) sit at parity with asyncua in the
median and just above it at p99. On a busy 2-core machine the tail of a round trip comes
from how often its threads sleep and must be woken (each wake-up may wait for a core),
not from garbage collection or the scan tick (none of the slowest 1.5% of calls overlapped
either, ``docs/benchmarks.md``). This benchmark counts them, which the machine's load
hardly disturbs, with each process's CPU and the latencies next to them:

- ``gateway``: a one-tag ``read_bulk`` on the library's command stream against the
  simulator as ``mxgw-sim serve`` starts it (``event_engine_listener`` off,
  ``mxgateway_sim._grpcenv``), 200 ms scan, uvloop where installed;
- ``grpc_defaults``: the same against a simulator started with ``GRPC_EXPERIMENTS=``
  (gRPC's defaults: the code before the setting);
- ``asyncua``: ``Node.read_value`` on the bench's OPC UA server.

With ``MXGW_BENCH_BASE_SRC`` naming another checkout's ``src`` folder (``git worktree add
/tmp/base <commit>``, then ``MXGW_BENCH_BASE_SRC=/tmp/base/src``), two more sides compare
this checkout with that one, simulator and library both, each in a client process of its
own (``python -m bench.wakeups --client``) against a simulator of its own:

- ``library``: this checkout's library and simulator, as ``gateway`` but out of process;
- ``base``: the other checkout's.

Per call: ``server_sleeps``/``client_sleeps`` are the voluntary context switches of all
the process's threads (``/proc``, Linux only; ``*_by_thread`` per thread name),
``server_cpu_us`` the server's CPU (``/proc/<pid>/task/*/schedstat``), ``client_cpu_us``
the bench process's. The client is this process as started: run it with
``GRPC_EXPERIMENTS=-event_engine_client`` to see the client's side of the same setting
(``results["client_grpc_experiments"]`` records it). Rounds alternate the order of the
three; figures are medians over rounds, latency ratios per round against asyncua.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from bench._common import (
    REPO_ROOT,
    ServerProcess,
    begin,
    cannot_run,
    load,
    load_tags,
    pct,
    rnd,
    sim_server,
)
from bench.opcua import Mx, Ua, opcua_server, stream_session

FULL = {"rounds": 6, "calls": 2000, "objects": 2_600}
QUICK = {"rounds": 1, "calls": 100, "objects": 300}
WARM = 50
"""Calls before each measured run."""

SIDES = ("gateway", "grpc_defaults", "asyncua")
AB_SIDES = ("library", "base")
"""The sides of the A/B run (``MXGW_BENCH_BASE_SRC``)."""
BASE_ENV = "MXGW_BENCH_BASE_SRC"


def thread_sleeps(pid: int) -> Counter[str]:
    """Voluntary context switches so far of each thread name of process ``pid``."""
    out: Counter[str] = Counter()
    for task in glob.glob(f"/proc/{pid}/task/*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"{task}/comm", encoding="ascii") as fh:
                name = fh.read().strip()
            with open(f"{task}/status", encoding="ascii") as fh:
                status = fh.read()
            out[name] += int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
    return out


def schedstat_cpu_s(pid: int) -> float:
    """CPU seconds so far of all threads of process ``pid`` (nanosecond counters)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError), open(path) as fh:
            total += int(fh.read().split()[0])
    return total / 1e9


class GcTimes:
    """The client's garbage collections (start, end) while installed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.spans.append((self._start, time.perf_counter()))

    def overlapping(self, calls: list[tuple[float, float]]) -> list[bool]:
        """For each call (start, end): whether a collection ran during it."""
        spans = sorted(self.spans)
        starts = [a for a, _ in spans]
        out = []
        for t0, t1 in calls:
            i = bisect.bisect_left(starts, t1)  # collections that started before its end
            out.append(any(b > t0 for _, b in spans[max(0, i - 3) : i]))
        return out


async def one_run(call: Callable[[], Awaitable[None]], server_pid: int, n: int) -> dict[str, Any]:
    """``n`` calls after a warm-up: latencies, sleeps and CPU per call, and how many of
    the calls (and of the slowest 1.5%) a client garbage collection ran in."""
    for _ in range(WARM):
        await call()
    me = os.getpid()
    gc_times = GcTimes()
    gc.callbacks.append(gc_times)
    s0, c0 = thread_sleeps(server_pid), thread_sleeps(me)
    sc0, cc0 = schedstat_cpu_s(server_pid), time.process_time()
    spans: list[tuple[float, float]] = []
    clock = time.perf_counter
    try:
        for _ in range(n):
            t0 = clock()
            await call()
            spans.append((t0, clock()))
    finally:
        gc.callbacks.remove(gc_times)
    sc1, cc1 = schedstat_cpu_s(server_pid), time.process_time()
    s1, c1 = thread_sleeps(server_pid), thread_sleeps(me)
    lat = [(b - a) * 1e6 for a, b in spans]
    in_gc = gc_times.overlapping(spans)
    slowest = sorted(range(n), key=lat.__getitem__)[n - max(1, round(n * 0.015)) :]
    server = {k: (s1[k] - s0[k]) / n for k in s1 if s1[k] - s0[k]}
    client = {k: (c1[k] - c0[k]) / n for k in c1 if c1[k] - c0[k]}
    return {
        "median_us": median(lat),
        "p99_us": pct(lat, 99),
        "server_sleeps": sum(server.values()),
        "client_sleeps": sum(client.values()),
        "server_sleeps_by_thread": server,
        "client_sleeps_by_thread": client,
        "server_cpu_us": (sc1 - sc0) / n * 1e6,
        "client_cpu_us": (cc1 - cc0) / n * 1e6,
        "client_gcs": len(gc_times.spans),
        "calls_in_client_gc": sum(in_gc),
        "slowest": len(slowest),
        "slowest_in_client_gc": sum(in_gc[i] for i in slowest),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over rounds of each side's figures, and its latency ratios to asyncua."""
    out: dict[str, Any] = {}
    for side, rounds in runs.items():
        row: dict[str, Any] = {}
        for key in (
            "median_us",
            "p99_us",
            "server_sleeps",
            "client_sleeps",
            "server_cpu_us",
            "client_cpu_us",
        ):
            row[key] = rnd(median([r[key] for r in rounds]), 2)
        for key in ("server_sleeps_by_thread", "client_sleeps_by_thread"):
            names = {name for r in rounds for name in r[key]}
            row[key] = {
                name: rnd(median([r[key].get(name, 0.0) for r in rounds]), 2)
                for name in sorted(names)
            }
        for key in ("client_gcs", "calls_in_client_gc", "slowest", "slowest_in_client_gc"):
            row[f"{key}_total"] = sum(r[key] for r in rounds)
        for key in ("median_us", "p99_us"):
            ratios = [r[key] / u[key] for r, u in zip(rounds, runs["asyncua"], strict=True)]
            row[f"{key}_ratio"] = rnd(median(ratios), 3)
            row[f"{key}_ratio_min"] = rnd(min(ratios), 3)
            row[f"{key}_ratio_max"] = rnd(max(ratios), 3)
        out[side] = row
    return out


class ChildClient:
    """A client process (``python -m bench.wakeups --client``) with the library of ``src``
    (None: this checkout's) on one simulator; :meth:`run` is :func:`one_run` there."""

    def __init__(self, src: str | None, address: str, tags_file: str, server_pid: int) -> None:
        self.src = src
        self.argv = [sys.executable, "-m", "bench.wakeups", "--client", address, tags_file]
        self.argv.append(str(server_pid))
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        paths = [str(REPO_ROOT)] if self.src is None else [self.src, str(REPO_ROOT)]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT),
            env=env,
        )

    async def run(self, n: int) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n".encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the client process of {self.src or 'this checkout'} ended")
        out: dict[str, Any] = json.loads(line)
        return out

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


async def _client_process(address: str, tags_file: str, server_pid: int) -> None:
    """``python -m bench.wakeups --client``: for each number N read from stdin, print the
    :func:`one_run` of N one-tag reads (one JSON line) and the library it ran."""
    tags, values = load_tags(tags_file, 10)
    loop = asyncio.get_running_loop()
    async with stream_session(address) as lib:
        mx = Mx(lib, tags, values)
        await mx.setup()
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            result = await one_run(mx.read_one, server_pid, int(line))
            result["library"] = _library()
            print(json.dumps(result), flush=True)


def _library() -> str:
    """The folder of the ``mxgateway`` package this process runs."""
    import mxgateway

    return os.path.dirname(os.path.abspath(mxgateway.__file__))


def _commit(folder: str) -> str | None:
    """The checkout's commit, with ``+changes`` when its files differ from it (a base
    made by reverting commits without committing)."""
    from bench.read_client import _commit as commit

    head = commit(folder)
    try:
        changed = subprocess.run(
            ["git", "-C", folder, "diff", "--quiet", "HEAD"], timeout=30, check=False
        ).returncode
    except OSError:
        return head
    return f"{head}+changes" if head and changed == 1 else head


async def measure(p: dict[str, Any], base: str | None = None) -> dict[str, Any]:
    """Start the servers, run the interleaved rounds (the A/B sides too with ``base``)."""
    objects = int(p["objects"])
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        tags_file = os.path.join(tmp, "tags.txt")
        servers: dict[str, ServerProcess] = {}
        # None: unset, so the server sets its own (as mxgw-sim serve); "": gRPC's defaults.
        plain: dict[str, str | None] = {"GRPC_EXPERIMENTS": None}
        starts: list[tuple[str, dict[str, str | None]]] = [
            ("gateway", plain),
            ("grpc_defaults", {"GRPC_EXPERIMENTS": ""}),
        ]
        if base is not None:
            here = os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
            there = os.pathsep.join([base, os.environ.get("PYTHONPATH", "")])
            starts += [
                ("library", {**plain, "PYTHONPATH": here}),
                ("base", {**plain, "PYTHONPATH": there}),
            ]
        for side, env in starts:
            sim = sim_server(
                galaxy_objects=objects,
                scan_ms=200,
                event_loop="auto",
                tags_out=tags_file,
                env=env,
            )
            assert sim is not None
            servers[side] = sim
        async with contextlib.AsyncExitStack() as stack:
            for sim in servers.values():
                await stack.enter_async_context(sim)
            opc = await stack.enter_async_context(opcua_server(10))
            tags, values = load_tags(tags_file, 10)
            calls: dict[str, tuple[Callable[[], Awaitable[None]], int]] = {}
            for side in ("gateway", "grpc_defaults"):
                lib = await stack.enter_async_context(stream_session(servers[side].address))
                mx = Mx(lib, tags, values)
                await mx.setup()
                proc = servers[side].proc
                assert proc is not None
                calls[side] = (mx.read_one, proc.pid)
            ua = Ua(opc.info["address"], int(opc.info["namespace"]), 1)
            await ua.connect()
            stack.push_async_callback(ua.close)
            assert opc.proc is not None
            calls["asyncua"] = (ua.read_one, opc.proc.pid)
            children: dict[str, ChildClient] = {}
            for side, src in (("library", None), ("base", base)) if base is not None else ():
                proc = servers[side].proc
                assert proc is not None
                child = ChildClient(src, servers[side].address, tags_file, proc.pid)
                await child.start()
                stack.push_async_callback(child.close)
                children[side] = child
            sides = SIDES + tuple(children)
            runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
            for r in range(int(p["rounds"])):
                order = sides if r % 2 == 0 else sides[::-1]
                for side in order:
                    if side in children:
                        runs[side].append(await children[side].run(int(p["calls"])))
                        continue
                    call, pid = calls[side]
                    runs[side].append(await one_run(call, pid, int(p["calls"])))
            libraries = {side: runs[side][-1].get("library") for side in children}
    out = summarise(runs)
    for side, library in libraries.items():
        out[side]["library"] = library
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench wakeups``."""
    report, p = begin("wakeups", quick, QUICK, FULL)
    report.results["client_grpc_experiments"] = os.environ.get("GRPC_EXPERIMENTS")
    if not os.path.isdir("/proc/self/task"):
        report.skip("everything", "needs Linux /proc (per-thread context switches)")
        return report.to_json()
    if cannot_run(report, asyncua=True, simulator=True):
        return report.to_json()
    base = os.environ.get(BASE_ENV) or None
    if base is not None:
        report.results["base_src"] = base
        report.results["base_commit"] = _commit(base)
        report.results["commit"] = _commit(str(REPO_ROOT))
    results = asyncio.run(measure(p, base))
    report.results["sides"] = results
    report.results["load_after"] = load()
    gw, base = results["gateway"], results["grpc_defaults"]
    report.target(
        "server sleeps per call, mxgw-sim serve's gRPC settings vs gRPC's defaults",
        "fewer",
        gw["server_sleeps"],
        gw["server_sleeps"] < base["server_sleeps"],
    )
    report.notes.append(
        "Sleeps are voluntary context switches per call summed over the process's threads: "
        "each is a wake-up the scheduler may delay on a busy machine. Latency and CPU move "
        "with the machine's load; the counts hardly do."
    )
    return report.to_json()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        asyncio.run(_client_process(sys.argv[2], sys.argv[3], int(sys.argv[4])))
