"""Where a 10,000-tag ReadBulk of tags nobody advises spends its CPU: client or simulator.

Issue 15's ``bulk_read_10000`` row (``python -m bench opcua``) reads 10,000 tags nobody
advised from a simulator at a 1 ms scan: every row changed since the last read, so the
simulator computes and encodes each. That row's wall time mixes both processes and the
machine's load; this benchmark splits it, in CPU time, which a busy machine disturbs far
less than wall time:

- ``client_cpu_ms``: the bench process's CPU per read (``time.process_time``): building
  and sending the request, decoding the reply, the 10,000 ``BulkReadResult`` rows the
  user gets;
- ``server_cpu_ms``: the simulator process's CPU per read (its ``/proc`` counters, Linux
  only): the handler, gRPC, and the plant's 1 ms scan ticks meanwhile;
  ``server_idle_cpu_ms`` is the simulator's CPU over an idle window as long as one read
  and its pause (the scan ticks alone), ``server_cpu_ms_net`` the difference;
  ``server_loop_thread_cpu_ms`` is its event loop's thread (the handler, grpc.aio's Python
  side, the scan), ``server_other_threads_cpu_ms`` gRPC core's own threads.

The simulator is the one ``python -m bench opcua`` reads (``bench.opcua.keep_up_server``:
2,600 objects, 1 ms scan, asyncio), the client the library on its command stream. Each
read is followed by a 5 ms pause (the scan changes every row meanwhile).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import Report, begin, cannot_run, load, load_tags, rnd
from bench.opcua import keep_up_server, stream_session

FULL = {"reads": 60, "tags": 10_000, "objects": 2_600}
QUICK = {"reads": 5, "tags": 1_000, "objects": 300}
PAUSE_S = 0.005
"""Pause after each read."""


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each thread of process ``pid`` so far, by thread id
    (empty where /proc is missing; a thread that ended meanwhile is left out)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


async def measure(p: dict[str, Any], report: Report) -> dict[str, Any]:
    """Start the simulator, read ``p["reads"]`` times, split the CPU."""
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        sim = keep_up_server(
            int(p["objects"]), os.path.join(tmp, "tags.txt"), os.path.join(tmp, "stats.json")
        )
        assert sim is not None
        async with sim, stream_session(sim.address) as lib:
            assert lib is not None and sim.proc is not None
            pid = sim.proc.pid
            tags, _ = load_tags(os.path.join(tmp, "tags.txt"), int(p["tags"]))
            session = lib.session
            hlmx = await session.register("bench-read-cpu")
            for _ in range(3):  # parse, resolve and remember the call's rows
                await session.read_bulk(hlmx, tags)
            walls: list[float] = []
            client: list[float] = []
            threads0 = thread_cpu_s(pid)
            server0, t0 = process_cpu_s(pid), time.perf_counter()
            for _ in range(int(p["reads"])):
                w0, c0 = time.perf_counter(), time.process_time()
                rows = await session.read_bulk(hlmx, tags)
                client.append(time.process_time() - c0)
                walls.append(time.perf_counter() - w0)
                await asyncio.sleep(PAUSE_S)
            server1, span = process_cpu_s(pid), time.perf_counter() - t0
            threads1 = thread_cpu_s(pid)
            if not all(r.was_successful for r in rows) or len(rows) != len(tags):
                raise RuntimeError("a read did not answer every tag")
            idle0 = process_cpu_s(pid)
            await asyncio.sleep(span)
            idle1 = process_cpu_s(pid)
    reads = int(p["reads"])
    out: dict[str, Any] = {
        "tags": len(tags),
        "reads": reads,
        "wall_ms_min": rnd(min(walls) * 1e3, 2),
        "wall_ms_median": rnd(statistics.median(walls) * 1e3, 2),
        "client_cpu_ms": rnd(statistics.median(client) * 1e3, 2),
    }
    if None in (server0, server1, idle0, idle1):
        report.skip("server_cpu_ms", "no /proc: the simulator's CPU cannot be read here")
        return out
    assert server0 is not None and server1 is not None and idle0 is not None
    assert idle1 is not None
    server = (server1 - server0) / reads
    idle = (idle1 - idle0) / reads
    out["server_cpu_ms"] = rnd(server * 1e3, 2)
    if pid in threads0 and pid in threads1:
        # The event loop's thread (the handler, grpc.aio's Python side, the scan) against
        # gRPC core's own threads (the poller, the event engine's).
        main = threads1[pid] - threads0[pid]
        others = sum(threads1.values()) - sum(threads0.get(t, 0.0) for t in threads1) - main
        out["server_loop_thread_cpu_ms"] = rnd(main / reads * 1e3, 2)
        out["server_other_threads_cpu_ms"] = rnd(max(others, 0.0) / reads * 1e3, 2)
    out["server_idle_cpu_ms"] = rnd(idle * 1e3, 2)
    out["server_cpu_ms_net"] = rnd((server - idle) * 1e3, 2)
    return out


def source() -> dict[str, Any]:
    """Which simulator and library were measured: the package's folder and, in a git
    checkout, its commit (``PYTHONPATH=<another checkout>/src`` measures another one), and
    whether the simulator's read plans take the numpy path (``MXGW_SIM_NUMPY=0``: not)."""
    import mxgateway_sim

    folder = Path(mxgateway_sim.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    try:  # whether its read plans take the numpy path (MXGW_SIM_NUMPY; None: no such path)
        from mxgateway_sim import _readvec

        numpy_path: bool | None = _readvec.ENABLED
    except ImportError:
        numpy_path = None
    return {"package": str(folder), "commit": commit or None, "numpy_path": numpy_path}


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench readcpu``."""
    report, p = begin("readcpu", quick, QUICK, FULL)
    report.results["source"] = source()
    if cannot_run(report, simulator=True):
        return report.to_json()
    report.results["read"] = asyncio.run(measure(p, report))
    report.results["load_after"] = load()
    report.notes.append(
        "CPU per read: client = time.process_time() of the bench process around each "
        "read_bulk (median); server = the simulator process's /proc CPU over all reads and "
        "pauses divided by the reads (its scan ticks included; _idle: the same span idle)."
    )
    return report.to_json()
