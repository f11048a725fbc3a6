"""Where the worker hop's floor is on this machine (``python -m bench worker_floor``).

The hop of ``--session-isolation process`` is a round trip over a pair of pipes between the
gateway's event loop and a sleeping worker process. This measures that round trip from an
event loop (uvloop where installed, what ``mxgw-sim serve`` runs) against three peers:

* ``cat``: C, a read and a write per round trip and nothing else (the system's floor);
* ``python_echo``: a Python process on uvloop that echoes what it reads (the loop's floor);
* ``worker``: a real ``mxgw-worker`` answering ``WorkerRuntime.ping()`` (the hop itself,
  without gRPC: the same path as a command's).

Each with both processes pinned to the same CPU and to two different CPUs (Linux's
``sched_setaffinity``; the scheduler puts a woken process on an idle CPU when it has one,
so the hop in ``python -m bench worker_hop`` is mostly the second case), with 0.7 ms of
sleep between calls (a gRPC client's calls leave gaps like it: the CPUs idle meanwhile)
and back to back. For ``cat`` also with this process polling the pipe for up to 200 µs
after each write instead of sleeping in the loop (its CPU never idles while it waits).
Per call: median wall time, the peer's CPU and this process's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench._common import Report, rnd

GAP_S = 0.0007
"""Sleep between calls (the gap a client's calls leave)."""
SPIN_S = 0.0002
"""How long the polling variant polls the pipe after a write."""
MESSAGE = b"x" * 80
"""About a ping's command frame."""

_ECHO = """
import asyncio, os, sys
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
loop = asyncio.new_event_loop()
os.set_blocking(0, False)
buffer = bytearray(65536)
def ready():
    n = os.readv(0, (buffer,))
    if not n:
        loop.stop()
        return
    os.write(1, bytes(buffer[:n]))
loop.add_reader(0, ready)
loop.run_forever()
"""


def _cpu(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _pin(placement: str, peer: int) -> None:
    """This process on CPU 0, the peer on CPU 0 (``same``) or CPU 1 (``cross``)."""
    os.sched_setaffinity(0, {0})
    os.sched_setaffinity(peer, {0 if placement == "same" else 1})


async def _timed(
    call: Callable[[], Awaitable[None]], peer: int, n: int, gap: float
) -> dict[str, float]:
    for _ in range(min(200, n)):  # warm up
        await call()
    times = []
    peer0, own0 = _cpu(peer), time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t0)
        if gap:
            time.sleep(gap)  # noqa: ASYNC251  # the loop idles too, as between a client's calls
    return {
        "median_us": rnd(statistics.median(times) * 1e6),
        "peer_cpu_us": rnd((_cpu(peer) - peer0) / n * 1e6),
        "own_cpu_us": rnd((time.process_time() - own0) / n * 1e6),
    }


async def _pipe_peer(
    argv: list[str], placement: str, n: int, gap: float, spin: float = 0.0
) -> dict[str, float]:
    """Round trips of :data:`MESSAGE` through a process that echoes its stdin."""
    loop = asyncio.get_running_loop()
    proc = subprocess.Popen(  # noqa: ASYNC220  # returns at once; no loop to hold
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
    )
    assert proc.stdin is not None and proc.stdout is not None
    out_fd, in_fd = proc.stdout.fileno(), proc.stdin.fileno()
    os.set_blocking(out_fd, False)
    waiting: list[asyncio.Future[None]] = []
    got = 0

    def readable() -> None:
        nonlocal got
        got += len(os.read(out_fd, 65536))
        if got >= len(MESSAGE) and waiting and not waiting[0].done():
            waiting[0].set_result(None)

    async def call() -> None:
        nonlocal got
        got = 0
        fut = loop.create_future()
        waiting[:] = [fut]
        os.write(in_fd, MESSAGE)
        end = time.perf_counter() + spin
        while spin and time.perf_counter() < end:
            with contextlib.suppress(BlockingIOError):
                got += len(os.read(out_fd, 65536))
            if got >= len(MESSAGE):
                return
        await fut

    loop.add_reader(out_fd, readable)
    try:
        _pin(placement, proc.pid)
        return await _timed(call, proc.pid, n, gap)
    finally:
        loop.remove_reader(out_fd)
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()


async def _worker(placement: str, n: int, gap: float) -> dict[str, float]:
    """``WorkerRuntime.ping()`` round trips to a real ``mxgw-worker``."""
    from mxgateway_sim import Plant, SessionManager, SessionOptions, builtin_catalog
    from mxgateway_sim._simconfig import SimSettings
    from mxgateway_sim._simruntime import DEFAULT_USERS
    from mxgateway_sim._workerclient import WorkerSettings
    from mxgateway_sim._workers import ProcessIsolation

    plant = Plant(builtin_catalog(), scan_interval_ms=200, flaky_one_in=0)
    settings = SimSettings(scan_interval_ms=200, flaky_one_in=0)
    workers = ProcessIsolation(WorkerSettings(pool_size=0))
    workers.prepare(plant, DEFAULT_USERS, settings)
    plant.start()
    manager = SessionManager(workers.runtime, SessionOptions())
    try:
        session = await manager.open("bench-floor")
        runtime: Any = session.runtime
        _pin(placement, runtime.pid)
        return await _timed(runtime.ping, runtime.pid, n, gap)
    finally:
        await manager.shutdown()
        await plant.stop()
        workers.cleanup()


async def run_async(quick: bool) -> dict[str, Any]:
    """Every peer, placement and gap; the floor of the hop."""
    report = Report("worker_floor", quick)
    n = 100 if quick else 2_000
    report.results["load_avg_before"] = list(os.getloadavg())
    report.results["event_loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        report.skip("worker_floor", "needs Linux's sched_setaffinity and two CPUs")
        return report.to_json()
    cat = shutil.which("cat")
    peers: dict[str, Callable[[str, float], Awaitable[dict[str, float]]]] = {
        "python_echo": lambda p, g: _pipe_peer([sys.executable, "-c", _ECHO], p, n, g),
        "worker": lambda p, g: _worker(p, n, g),
    }
    if cat is not None:
        peers = {"cat": lambda p, g: _pipe_peer([cat], p, n, g), **peers}
    else:
        report.skip("cat", "no cat on PATH")
    cpus = os.sched_getaffinity(0)
    rows: dict[str, Any] = {}
    try:
        for name, measure in peers.items():
            for gap in (GAP_S, 0.0):
                for placement in ("same", "cross"):
                    key = f"{placement}_cpu_{'gap' if gap else 'back_to_back'}"
                    rows.setdefault(name, {})[key] = await measure(placement, gap)
        if cat is not None:
            rows["cat"]["cross_cpu_gap_polling"] = await _pipe_peer(
                [cat], "cross", n, GAP_S, spin=SPIN_S
            )
    finally:
        os.sched_setaffinity(0, cpus)
    report.results["round_trip"] = rows
    report.results["load_avg_after"] = list(os.getloadavg())
    worker, floor = rows["worker"], rows.get("cat", rows["python_echo"])
    report.results["worker_above_floor_us"] = {
        key: rnd(worker[key]["median_us"] - floor[key]["median_us"]) for key in worker
    }
    report.notes.append(
        "cross_cpu_gap is the hop as python -m bench worker_hop sees it: the woken process "
        "goes to the idle CPU"
    )
    return report.to_json()


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point of ``python -m bench worker_floor`` (uvloop where installed)."""
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        return uvloop.run(run_async(quick))
    return asyncio.run(run_async(quick))
