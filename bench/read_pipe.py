"""Wall time of a 10,000-tag ``read_bulk`` (tags nobody advised, simulator at a 1 ms scan),
this checkout against another, interleaved (issue 15's ``bulk_read_10000`` row).

A large read is sent in several requests, pipelined: written back to back on the command
stream (concurrent ``Invoke`` calls without it), so the client decodes one reply while the
simulator computes the next. What that buys can only be seen next to the code without it,
at the same moment on the same machine: with ``MXGW_BENCH_BASE_SRC`` naming another
checkout's ``src`` folder (``git worktree add /tmp/base <commit>``, then
``MXGW_BENCH_BASE_SRC=/tmp/base/src``), two client processes run side by side, ``base``
with that checkout's library and simulator and ``this`` with this one's, each with its own
simulator (``bench.opcua.keep_up_server``: 2,600 objects, 1 ms scan, asyncio). Rounds
alternate which goes first; each side reads ``reads`` times a round on its command stream
and as many on unary ``Invoke`` (``command_stream=False``), with a 5 ms pause after each.

Per side and path: wall time per read (min and median over all reads), the client
process's CPU per read (``time.process_time``) and the simulator's (every thread's
``/proc/<pid>/task/*/schedstat``, nanoseconds), and per round the ratio this/base of the
median walls (their median is the figure). Without ``MXGW_BENCH_BASE_SRC`` only ``this``
runs. ``MXGW_BENCH_PIPE_CHUNKS=N`` has ``this`` pipeline a read in up to N requests instead
of the library's choice (``mxgateway._session._PIPE_CHUNKS``), to compare choices, and
``MXGW_BENCH_BASE_PIPE_CHUNKS=N`` has ``base`` do so (``1``: one request, as before
pipelining, so that a checkout of the same code measures what the pipelining alone does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench._common import REPO_ROOT, Report, rnd
from bench.read_client import _commit
from bench.wakeups import schedstat_cpu_s

BASE_ENV = "MXGW_BENCH_BASE_SRC"
CHUNKS_ENV = "MXGW_BENCH_PIPE_CHUNKS"
BASE_CHUNKS_ENV = "MXGW_BENCH_BASE_PIPE_CHUNKS"
FULL = {"rounds": 12, "reads": 8, "tags": 10_000, "objects": 2_600}
QUICK = {"rounds": 2, "reads": 2, "tags": 1_000, "objects": 300}
PAUSE_S = 0.005
PATHS = ("stream", "invoke")


async def _worker(p: dict[str, Any]) -> None:
    """One side: its simulator, a client on the command stream and one on ``Invoke``; reads
    on request (a line ``<path> <n>`` on stdin, one JSON line back)."""
    import mxgateway
    from bench._client import library_session
    from bench._common import load_tags
    from bench.opcua import keep_up_server

    chunks = p.get("chunks")
    if chunks is not None:
        from mxgateway import _session

        _session._PIPE_CHUNKS = int(chunks)
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        sim = keep_up_server(
            int(p["objects"]), os.path.join(tmp, "tags.txt"), os.path.join(tmp, "stats.json")
        )
        assert sim is not None
        async with (
            sim,
            library_session(sim.address, command_stream=True) as stream,
            library_session(sim.address, command_stream=False) as unary,
        ):
            assert stream is not None and unary is not None and sim.proc is not None
            pid = sim.proc.pid
            tags, _ = load_tags(os.path.join(tmp, "tags.txt"), int(p["tags"]))
            sides = {"stream": stream.session, "invoke": unary.session}
            handles = {path: await s.register("bench-read-pipe") for path, s in sides.items()}
            for path, session in sides.items():
                for _ in range(3):  # parse, resolve and remember the call's rows
                    await session.read_bulk(handles[path], tags)
            print(json.dumps({"ready": True, "library": mxgateway.__file__}), flush=True)
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line.strip():
                    return
                path, count = line.split()
                session, hlmx = sides[path], handles[path]
                walls: list[float] = []
                cpu: list[float] = []
                server: list[float] = []
                bad = 0
                for _ in range(int(count)):
                    s0 = schedstat_cpu_s(pid)
                    w0, c0 = time.perf_counter(), time.process_time()
                    rows = await session.read_bulk(hlmx, tags)
                    walls.append(time.perf_counter() - w0)
                    cpu.append(time.process_time() - c0)
                    server.append(schedstat_cpu_s(pid) - s0)
                    if len(rows) != len(tags) or [r.tag_address for r in rows] != tags:
                        bad += 1
                    await asyncio.sleep(PAUSE_S)
                out = {"walls": walls, "cpu": cpu, "server": server, "bad": bad}
                print(json.dumps(out), flush=True)


class _Side:
    """A worker process (``python -m bench.read_pipe --worker``) with ``src`` first on its
    path (None: this checkout)."""

    def __init__(self, name: str, src: str | None, p: dict[str, Any]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            x for x in (src, str(REPO_ROOT), env.get("PYTHONPATH", "")) if x
        )
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.read_pipe", "--worker", json.dumps(p)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(REPO_ROOT),
        )
        self.library = ""

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker ended")
        result: dict[str, Any] = json.loads(line)
        return result

    def ready(self) -> None:
        self.library = str(self._reply()["library"])

    def read(self, path: str, count: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{path} {count}\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [w for r in runs for w in r["walls"]]
    return {
        "reads": len(walls),
        "wall_ms_min": rnd(min(walls) * 1e3, 2),
        "wall_ms_median": rnd(statistics.median(walls) * 1e3, 2),
        "client_cpu_ms": rnd(statistics.median(c for r in runs for c in r["cpu"]) * 1e3, 2),
        "server_cpu_ms": rnd(statistics.median(s for r in runs for s in r["server"]) * 1e3, 2),
        "bad_reads": sum(r["bad"] for r in runs),
    }


def measure(p: dict[str, Any], report: Report) -> None:
    """Start the sides, run the interleaved rounds, summarise."""
    base = os.environ.get(BASE_ENV)
    chunks = os.environ.get(CHUNKS_ENV)
    sides = [_Side("this", None, p if chunks is None else {**p, "chunks": int(chunks)})]
    if base:
        base_chunks = os.environ.get(BASE_CHUNKS_ENV)
        sides.insert(
            0, _Side("base", base, p if base_chunks is None else {**p, "chunks": int(base_chunks)})
        )
    else:
        report.skip("base", f"{BASE_ENV} is not set: only this checkout is measured")
    try:
        for side in sides:
            side.ready()
        report.results["library"] = {side.name: side.library for side in sides}
        report.results["commit"] = {
            side.name: _commit(os.path.dirname(side.library)) for side in sides
        }
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            s.name: {path: [] for path in PATHS} for s in sides
        }
        for r in range(int(p["rounds"])):
            for path in PATHS:
                for side in reversed(sides) if r % 2 else sides:
                    runs[side.name][path].append(side.read(path, int(p["reads"])))
    finally:
        for side in sides:
            side.close()
    out: dict[str, Any] = {}
    for path in PATHS:
        out[path] = {name: _summary(by_path[path]) for name, by_path in runs.items()}
        if base:
            ratios = [
                statistics.median(t["walls"]) / statistics.median(b["walls"])
                for t, b in zip(runs["this"][path], runs["base"][path], strict=True)
            ]
            out[path]["ratio_this_to_base"] = {
                "median": rnd(statistics.median(ratios), 3),
                "min": rnd(min(ratios), 3),
                "max": rnd(max(ratios), 3),
            }
    report.results["read"] = out


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench readpipe``."""
    report = Report("readpipe", quick)
    p = QUICK if quick else FULL
    report.results["load_before"] = [round(x, 2) for x in os.getloadavg()]
    report.results["parameters"] = dict(p)
    report.results["base_src"] = os.environ.get(BASE_ENV)
    report.results["pipe_chunks"] = os.environ.get(CHUNKS_ENV)
    report.results["base_pipe_chunks"] = os.environ.get(BASE_CHUNKS_ENV)
    # Both sides' simulators inherit it: MXGW_SIM_NUMPY=0 keeps their read plans off numpy.
    report.results["sim_numpy_env"] = os.environ.get("MXGW_SIM_NUMPY")
    measure(p, report)
    report.results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    report.notes.append(
        "wall: perf_counter around each read_bulk; client CPU: process_time of the client "
        "process; server CPU: the simulator's threads' schedstat over the read; ratio: "
        "this/base of each round's median wall, the median over rounds."
    )
    return report.to_json()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        asyncio.run(_worker(json.loads(sys.argv[2])))
    else:
        print(json.dumps(run("--quick" in sys.argv), indent=2))
