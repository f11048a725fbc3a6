"""The one-tag read's slow tail: what happened during each of the slowest reads.

Issue 15's p99 row (``python -m bench opcua``: ``Session.read_bulk`` of one tag on the
command stream against a simulator as ``mxgw-sim serve`` starts it, against asyncua's
``Node.read_value``) is the 5th-slowest of 400 reads per round. This benchmark times many
more reads per round and tags each of the slowest :data:`SLOW_SHARE` with what overlapped
it, on a clock every process shares (``time.perf_counter``, ``CLOCK_MONOTONIC`` on Linux):

- ``client_gc``: a garbage collection of the client process (``gc.callbacks``);
- ``server_gc`` / ``server_tick``: a collection or a scan-tick slice of the simulator
  the read went to (``bench/sim_server.py --trace``);
- ``background_1ms_tick``, ``background_1s_tick``, ``background_gc``: a scan tick or
  collection of the other simulators the run keeps busy (below);
- ``none``: nothing of these: the read waited for the machine (its threads' wake-ups,
  ``python -m bench wakeups``).

Sides, each in rounds of ``calls`` reads (the order alternating every two rounds):

- ``library``: this checkout's library in a client process of its own
  (``python -m bench.read_tail --client``) against this checkout's simulator (200 ms
  scan, uvloop where installed, the read tag advised as ``bench opcua``'s write rows
  leave it);
- ``library_no_ee_client``: the same with ``GRPC_EXPERIMENTS=-event_engine_client`` in
  the client process's environment (the host's choice, ``docs/client.md``: gRPC core's
  event-engine threads leave the reply's path);
- ``base`` (with ``MXGW_BENCH_BASE_SRC`` naming another checkout's ``src``): the same
  with that checkout's library and simulator;
- ``asyncua``: ``Node.read_value`` on the bench's OPC UA server, from this process.

Rounds alternate between ``quiet`` and ``background``: in the latter, as while
``bench opcua`` measures its single calls, a simulator at a 1 ms scan has one tag advised
and one at a 1 s scan 10,000 tags (the advised bulk-read row's), both ticking (asyncua's
plant is stopped in both, as in ``bench opcua``). Figures per side and condition:
medians over rounds of the median and p99, the per-round p99 ratio to asyncua (median,
min-max), and the slow reads' tags summed over rounds.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench._common import (
    REPO_ROOT,
    ServerProcess,
    begin,
    cannot_run,
    load,
    load_tags,
    median,
    pct,
    rnd,
    sim_server,
)
from bench.opcua import Mx, Ua, keep_up_server, opcua_server, stream_session
from bench.wakeups import BASE_ENV, _commit, _library, schedstat_cpu_s, thread_sleeps

FULL = {"rounds": 12, "calls": 1000, "objects": 2_600, "background_tags": 10_000}
QUICK = {"rounds": 2, "calls": 40, "objects": 300, "background_tags": 200}
WARM = 50
"""Reads before each measured run."""
SLOW_SHARE = 0.02
"""The share of each run's reads tagged (its slowest)."""
CONDITIONS = ("quiet", "background")
NO_EE_SIDE = "library_no_ee_client"
"""The ``library`` side with ``GRPC_EXPERIMENTS=-event_engine_client`` in its client
process's environment (a process-wide gRPC setting the library leaves to its host)."""

Span = tuple[str, float, float]
"""(kind, start, end) on ``time.perf_counter``'s clock."""


class ClientGc:
    """The process's garbage collections while installed: ``("client_gc", start, end)``."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.spans.append(("client_gc", self._start, time.perf_counter()))


async def timed_reads(call: Callable[[], Awaitable[None]], n: int) -> dict[str, Any]:
    """``n`` reads after a warm-up: each one's (start, end) and the client's collections."""
    for _ in range(WARM):
        await call()
    collections = ClientGc()
    gc.callbacks.append(collections)
    calls: list[tuple[float, float]] = []
    clock = time.perf_counter
    try:
        for _ in range(n):
            t0 = clock()
            await call()
            calls.append((t0, clock()))
    finally:
        gc.callbacks.remove(collections)
    return {"calls": calls, "spans": collections.spans}


def tag_reads(
    calls: Sequence[tuple[float, float]], spans: Sequence[Span]
) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """What overlapped the reads: the slowest :data:`SLOW_SHARE` of ``calls`` counted by
    the kinds of ``spans`` that overlapped each (joined with ``+``, or ``none``), and,
    per kind, how many of the slowest and of all the reads it overlapped (a kind as
    frequent among the slowest as among all is no cause: the 1 ms scan's ticks overlap a
    third of all reads)."""
    lat = [b - a for a, b in calls]
    k = max(1, round(len(calls) * SLOW_SHARE))
    slowest = set(sorted(range(len(calls)), key=lat.__getitem__)[-k:])
    ordered = sorted(spans, key=lambda s: s[1])
    starts = [s[1] for s in ordered]
    longest = max((s[2] - s[1] for s in ordered), default=0.0)
    combos: Counter[str] = Counter()
    in_slow: Counter[str] = Counter()
    in_all: Counter[str] = Counter()
    for i, (t0, t1) in enumerate(calls):
        lo = bisect.bisect_left(starts, t0 - longest)
        hi = bisect.bisect_right(starts, t1)
        kinds = sorted({kind for kind, a, b in ordered[lo:hi] if b > t0 and a < t1})
        in_all.update(kinds)
        if i in slowest:
            in_slow.update(kinds)
            combos["+".join(kinds) or "none"] += 1
    return combos, in_slow, in_all


LEGS = ("request", "server", "reply")


def legs(
    calls: Sequence[tuple[float, float]], commands: Sequence[tuple[float, float]]
) -> dict[str, Any]:
    """Each read split at its command on the simulator's loop (the one inside it):
    ``request`` (client's send to the servicer's start: the client's loop, the wire, the
    simulator's poller thread and loop waking), ``server`` (the command on the loop),
    ``reply`` (the reply handed back to the client's ``await`` returning: the simulator
    sending, the client's event-engine threads, poller thread and loop waking). Medians
    over all reads (µs), and for the slowest :data:`SLOW_SHARE`: the mean excess of each
    leg over its median and how many of them had their largest excess in each."""
    starts = [a for a, _ in commands]
    split: list[tuple[float, float, float]] = []
    for t0, t1 in calls:
        i = bisect.bisect_left(starts, t0)
        if i < len(commands) and commands[i][1] <= t1:
            c0, c1 = commands[i]
            split.append(((c0 - t0) * 1e6, (c1 - c0) * 1e6, (t1 - c1) * 1e6))
    if not split:
        return {}
    medians = [median([s[k] for s in split]) for k in range(3)]
    k = max(1, round(len(split) * SLOW_SHARE))
    slowest = sorted(split, key=sum)[-k:]
    worst: Counter[str] = Counter()
    for s in slowest:
        excess = [s[j] - medians[j] for j in range(3)]
        worst[LEGS[excess.index(max(excess))]] += 1
    return {
        "split_reads": len(split),
        "median_us": {LEGS[j]: rnd(medians[j], 1) for j in range(3)},
        "slow_excess_us": {
            LEGS[j]: rnd(sum(s[j] for s in slowest) / k - medians[j], 1) for j in range(3)
        },
        "slow_largest_excess": {leg: worst[leg] for leg in LEGS},
    }


def summary(
    calls: Sequence[tuple[float, float]],
    spans: Sequence[Span],
    commands: Sequence[tuple[float, float]] = (),
) -> dict[str, Any]:
    """One run's figures (µs), what overlapped its reads (:func:`tag_reads`) and, with the
    simulator's ``commands``, the reads' :func:`legs`."""
    lat = [(b - a) * 1e6 for a, b in calls]
    combos, in_slow, in_all = tag_reads(calls, spans)
    return {
        "legs": legs(calls, sorted(commands)),
        "median_us": rnd(median(lat), 1),
        "p99_us": rnd(pct(lat, 99), 1),
        "max_us": rnd(max(lat), 1) if lat else None,
        "client_gcs": sum(1 for s in spans if s[0] == "client_gc"),
        "reads": len(calls),
        "slow": dict(combos),
        "slow_by_kind": dict(in_slow),
        "all_by_kind": dict(in_all),
    }


class Trace:
    """A traced simulator's spans (``bench/sim_server.py --trace FILE``), asked for with
    SIGUSR1; ``kinds`` renames them (``gc0``..``gc2``, ``tick``)."""

    def __init__(self, sim: ServerProcess, path: str, kinds: dict[str, str]) -> None:
        self.sim, self.path, self.kinds = sim, path, kinds

    async def take(self) -> tuple[list[Span], list[tuple[float, float]]]:
        """The spans since the last take, and the commands' (start, end)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        assert self.sim.proc is not None
        self.sim.proc.send_signal(signal.SIGUSR1)
        for _ in range(250):
            await asyncio.sleep(0.02)
            with contextlib.suppress(FileNotFoundError, ValueError):
                text = await asyncio.to_thread(Path(self.path).read_text, encoding="utf-8")
                raw = json.loads(text)
                kinds = self.kinds
                spans = [
                    (kinds.get(kind, kinds.get(kind[:2], "")), a, b)
                    for kind, a, b, _ in raw
                    if kinds.get(kind, kinds.get(kind[:2]))
                ]
                return spans, [(a, b) for kind, a, b, _ in raw if kind == "command"]
        raise RuntimeError(f"the simulator wrote no trace to {self.path}")


OWN = {"tick": "server_tick", "gc": "server_gc"}
BACKGROUND = {
    "busy": {"tick": "background_1ms_tick", "gc": "background_gc"},
    "slow": {"tick": "background_1s_tick", "gc": "background_gc"},
}


class ChildClient:
    """A client process (``python -m bench.read_tail --client``) with the library of
    ``src`` (None: this checkout's) on one simulator; :meth:`run` is :func:`timed_reads`
    there."""

    def __init__(
        self, src: str | None, address: str, tags_file: str, env: dict[str, str] | None = None
    ) -> None:
        self.src = src
        self.env = env or {}
        self.argv = [sys.executable, "-m", "bench.read_tail", "--client", address, tags_file]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, **self.env}
        paths = [str(REPO_ROOT)] if self.src is None else [self.src, str(REPO_ROOT)]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT),
            env=env,
            limit=1 << 24,
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


async def _client_process(address: str, tags_file: str) -> None:
    """``python -m bench.read_tail --client``: for each number N read from stdin, print
    the :func:`timed_reads` of N one-tag reads (one JSON line) and the library it ran. The
    read tag stays advised, as ``bench opcua``'s write rows leave it during its reads."""
    tags, values = load_tags(tags_file, 10)
    loop = asyncio.get_running_loop()
    async with stream_session(address) as lib:
        mx = Mx(lib, tags, values)
        await mx.setup()
        await mx.begin_writes()
        try:
            while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
                result = await timed_reads(mx.read_one, int(line))
                result["library"] = _library()
                print(json.dumps(result), flush=True)
        finally:
            await mx.end_writes()


class Background:
    """The other simulators ``bench opcua`` keeps busy while it measures single calls: one
    at a 1 ms scan with one tag advised, one at a 1 s scan with ``n`` tags advised;
    :meth:`on` and :meth:`off` advise and unadvise them."""

    def __init__(self, busy: Mx, slow: Mx, n: int) -> None:
        self.busy, self.slow, self.n = busy, slow, n
        self.active = False

    async def on(self) -> None:
        await self.busy.begin_writes()
        await self.slow.advise(self.n)
        self.active = True
        await asyncio.sleep(1.2)  # a tick of the slow one's before the reads

    async def off(self) -> None:
        if self.active:
            self.active = False
            await self.busy.end_writes()
            await self.slow.unadvise()


def legs_over_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`legs` of the rounds: medians of the medians and excesses, the counts summed."""
    runs = [r for r in runs if r]
    if not runs:
        return {}
    return {
        "legs_median_us": {
            leg: rnd(median([r["median_us"][leg] for r in runs]), 1) for leg in LEGS
        },
        "legs_slow_excess_us": {
            leg: rnd(median([r["slow_excess_us"][leg] for r in runs]), 1) for leg in LEGS
        },
        "legs_slow_largest_excess": {
            leg: sum(r["slow_largest_excess"][leg] for r in runs) for leg in LEGS
        },
    }


def summarise(
    runs: dict[str, dict[str, list[dict[str, Any]]]],
) -> dict[str, Any]:
    """Per condition and side: medians over rounds, p99 ratios to asyncua per round, and
    the slow reads' tags summed."""
    out: dict[str, Any] = {}
    for condition, sides in runs.items():
        table: dict[str, Any] = {}
        for side, rounds in sides.items():
            slow: Counter[str] = Counter()
            in_slow: Counter[str] = Counter()
            in_all: Counter[str] = Counter()
            for r in rounds:
                slow.update(r["slow"])
                in_slow.update(r["slow_by_kind"])
                in_all.update(r["all_by_kind"])
            n_slow = sum(slow.values())
            n_all = sum(r["reads"] for r in rounds)
            row: dict[str, Any] = {
                "median_us": rnd(median([r["median_us"] for r in rounds]), 1),
                "p99_us": rnd(median([r["p99_us"] for r in rounds]), 1),
                "p99_us_by_round": [r["p99_us"] for r in rounds],
                "client_gcs_total": sum(r["client_gcs"] for r in rounds),
                "slow_reads_by_tag": dict(slow.most_common()),
                **legs_over_rounds([r["legs"] for r in rounds]),
                # Per kind: its share of the slowest reads / its share of all reads.
                "overlap_share_slow_vs_all": {
                    kind: [rnd(in_slow[kind] / n_slow, 3), rnd(in_all[kind] / n_all, 3)]
                    for kind in sorted(in_all)
                },
            }
            ua = sides.get("asyncua")
            if ua:
                for key in ("median_us", "p99_us"):
                    ratios = [r[key] / u[key] for r, u in zip(rounds, ua, strict=True)]
                    row[f"{key}_ratio"] = rnd(median(ratios), 3)
                    row[f"{key}_ratio_min"] = rnd(min(ratios), 3)
                    row[f"{key}_ratio_max"] = rnd(max(ratios), 3)
            table[side] = row
        out[condition] = table
    return out


async def measure(p: dict[str, Any], base: str | None) -> dict[str, Any]:
    """Start the servers and clients, run the rounds, return the summary."""
    objects = int(p["objects"])
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        tags_file = os.path.join(tmp, "tags.txt")
        here = os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
        sources: list[tuple[str, str | None, str]] = [("library", None, here)]
        if base is not None:
            there = os.pathsep.join([base, os.environ.get("PYTHONPATH", "")])
            sources.append(("base", base, there))
        servers: dict[str, ServerProcess] = {}
        traces: dict[str, str] = {}
        for side, _src, path in sources:
            traces[side] = os.path.join(tmp, f"{side}-trace.json")
            sim = sim_server(
                galaxy_objects=objects,
                scan_ms=200,
                event_loop="auto",
                tags_out=tags_file,
                env={"PYTHONPATH": path, "GRPC_EXPERIMENTS": None},
                extra=["--trace", traces[side]],
            )
            assert sim is not None
            servers[side] = sim
        for name, sim in (
            ("busy", keep_up_server(objects, tags_file + ".busy", tags_file + ".stats")),
            ("slow", sim_server(galaxy_objects=objects, scan_ms=1000)),
        ):
            assert sim is not None
            traces[name] = os.path.join(tmp, f"{name}-trace.json")
            sim.argv += ["--trace", traces[name]]
            servers[name] = sim
        async with contextlib.AsyncExitStack() as stack:
            for sim in servers.values():
                await stack.enter_async_context(sim)
            opc = await stack.enter_async_context(opcua_server(10))
            tags, values = load_tags(tags_file, int(p["background_tags"]))
            background_sessions: dict[str, Mx] = {}
            for name in ("busy", "slow"):
                lib = await stack.enter_async_context(stream_session(servers[name].address))
                mx = Mx(lib, tags, values)
                await mx.setup()
                background_sessions[name] = mx
            background = Background(
                background_sessions["busy"], background_sessions["slow"], int(p["background_tags"])
            )
            stack.push_async_callback(background.off)
            trace = {
                name: Trace(servers[name], path, BACKGROUND.get(name, OWN))
                for name, path in traces.items()
            }
            ua = Ua(opc.info["address"], int(opc.info["namespace"]), 1)
            await ua.connect()
            stack.push_async_callback(ua.close)
            children: dict[str, ChildClient] = {}
            clients: list[tuple[str, str | None, str, dict[str, str]]] = [
                (side, src, side, {}) for side, src, _path in sources
            ]
            # The host's choice that removes gRPC core's event-engine threads from the
            # client's reply path (docs/client.md), against this checkout's simulator.
            no_ee = {"GRPC_EXPERIMENTS": "-event_engine_client"}
            clients.insert(1, (NO_EE_SIDE, None, "library", no_ee))
            for side, src, server, env in clients:
                child = ChildClient(src, servers[server].address, tags_file, env)
                await child.start()
                stack.push_async_callback(child.close)
                children[side] = child
            sides = (*children, "asyncua")
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                c: {side: [] for side in sides} for c in CONDITIONS
            }
            libraries: dict[str, Any] = {}
            # What the other simulators cost the machine while the reads ran: their CPU
            # share and wake-ups (voluntary context switches) a second.
            costs: dict[str, dict[str, list[float]]] = {c: {} for c in CONDITIONS}
            pids = {}
            for name in ("busy", "slow"):
                proc = servers[name].proc
                assert proc is not None
                pids[name] = proc.pid
            for r in range(int(p["rounds"])):
                condition = CONDITIONS[r % 2]
                if condition == "background":
                    await background.on()
                order = sides if (r // 2) % 2 == 0 else sides[::-1]
                for side in order:
                    for t in trace.values():  # start afresh
                        await t.take()
                    commands: list[tuple[float, float]] = []
                    before = {
                        name: (time.perf_counter(), schedstat_cpu_s(pid), thread_sleeps(pid))
                        for name, pid in pids.items()
                    }
                    if side in children:
                        got = await children[side].run(int(p["calls"]))
                        libraries[side] = got.get("library")
                    else:
                        got = await timed_reads(ua.read_one, int(p["calls"]))
                    spans: list[Span] = [(k, a, b) for k, a, b in got["spans"]]
                    for name, pid in pids.items():
                        t0, cpu0, sleeps0 = before[name]
                        wall = time.perf_counter() - t0
                        cpu, sleeps = schedstat_cpu_s(pid) - cpu0, thread_sleeps(pid)
                        woke = sum(sleeps.values()) - sum(sleeps0.values())
                        got_costs = costs[condition].setdefault(name, [])
                        got_costs.append(rnd(cpu / wall, 3))
                        costs[condition].setdefault(f"{name}_wakeups", []).append(
                            rnd(woke / wall, 0)
                        )
                    own = "library" if side == NO_EE_SIDE else side
                    if own in trace:
                        more, commands = await trace[own].take()
                        spans += more
                    for name in ("busy", "slow"):
                        spans += (await trace[name].take())[0]
                    runs[condition][side].append(summary(got["calls"], spans, commands))
                if condition == "background":
                    await background.off()
    out = summarise(runs)
    for condition, by_name in costs.items():
        out[condition]["other_simulators"] = {
            (
                f"{name.removesuffix('_wakeups')}_wakeups_per_s"
                if name.endswith("_wakeups")
                else f"{name}_cpu_share"
            ): rnd(median(values), 3)
            for name, values in by_name.items()
        }
    for side, library in libraries.items():
        for condition in CONDITIONS:
            out[condition][side]["library"] = library
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench readtail``."""
    report, p = begin("readtail", quick, QUICK, FULL)
    if cannot_run(report, asyncua=True, simulator=True):
        return report.to_json()
    base = os.environ.get(BASE_ENV) or None
    if base is not None:
        report.results["base_src"] = base
        report.results["base_commit"] = _commit(base)
        report.results["commit"] = _commit(str(REPO_ROOT))
    report.results["slow_share"] = SLOW_SHARE
    report.results["conditions"] = asyncio.run(measure(dict(p), base))
    report.results["load_after"] = load()
    quiet = report.results["conditions"]["quiet"]["library"]
    report.target(
        "one-tag read p99 vs asyncua's, quiet rounds (median of per-round ratios)",
        "ratio <= 1.0",
        quiet.get("p99_us_ratio"),
        quiet.get("p99_us_ratio", 2.0) <= 1.0,
    )
    report.notes.append(
        "Each run's slowest reads are tagged with what overlapped them on the shared "
        "monotonic clock: client_gc, server_gc, server_tick (the simulator read from), "
        "background (the other simulators' ticks and collections), none (the machine)."
    )
    return report.to_json()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        asyncio.run(_client_process(sys.argv[2], sys.argv[3]))
