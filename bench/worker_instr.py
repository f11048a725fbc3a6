"""Instructions per command across the worker hop, gateway side and worker side (callgrind).

``python -m bench worker_instr`` (valgrind needed; a few minutes; only when named). A
script in a subprocess opens a session through ``--session-isolation process``'s
machinery (``SessionManager`` + ``ProcessIsolation``, no pool, scan 3,600 s so that no
scan runs meanwhile) and calls ``WorkerRuntime.ping()``, ``read_bytes`` of one advised tag
and ``write`` of a Double from its event loop, without gRPC; the script runs under
``valgrind --tool=callgrind`` and so does its worker (``WorkerSettings.command``). Each
side's instructions per command come from four runs that differ in how many of each
command they make (a base run and one with ``EXTRA`` more of one command): the start-up
and everything else cancel out, and, unlike time, the counts repeat under load.

``MXGW_BENCH_BASE_SRC`` naming another checkout's ``src`` folder adds the side ``base``
(that checkout's gateway and worker code, the same script), measured in the same run.
``MXGW_BENCH_LOOP=uvloop`` runs the gateway script on uvloop (default asyncio). The
collector is off in both processes (a collection would land in one run and not another).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BASE_ENV = "MXGW_BENCH_BASE_SRC"
LOOP_ENV = "MXGW_BENCH_LOOP"
KEEP_ENV = "MXGW_BENCH_KEEP"
"""A folder to copy the callgrind output files to (for callgrind_annotate)."""
ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("ping", "read", "write")
WARM = 100
"""Calls of each command before the counted ones (first values, caches, specialisation)."""
FULL = {"base": 200, "extra": 800}
QUICK = {"base": 50, "extra": 200}

_WORKER = (
    "import gc, sys; import mxgateway_sim._gcpolicy as policy; "
    "policy.apply_to_worker_process = gc.disable; "
    "from mxgateway_sim.worker import main; raise SystemExit(main())"
)
"""The worker as ``mxgw-worker`` runs it, but with the collector off (as in the script):
a collection lands in one run and not in another and would swamp the difference."""

_SCRIPT = r"""
import gc
gc.disable()
import asyncio, json, sys
from mxgateway_sim import Plant, SessionManager, SessionOptions, builtin_catalog
from mxgateway_sim._domain import WriteRequest
from mxgateway_sim._simconfig import SimSettings
from mxgateway_sim._simruntime import DEFAULT_USERS
from mxgateway_sim._workerclient import WorkerSettings
from mxgateway_sim._workers import ProcessIsolation

counts = json.loads(sys.argv[1])
worker_prefix = json.loads(sys.argv[2])
loop_kind = sys.argv[3]
worker_code = sys.argv[4]

async def main():
    plant = Plant(builtin_catalog(), scan_interval_ms=3_600_000, flaky_one_in=0)
    settings = SimSettings(scan_interval_ms=3_600_000, flaky_one_in=0)
    command = (*worker_prefix, sys.executable, "-c", worker_code)
    workers = ProcessIsolation(
        WorkerSettings(command=command, pool_size=0, startup_timeout_s=600.0,
                       heartbeat_s=3600.0, heartbeat_grace_s=7200.0)
    )
    workers.prepare(plant, DEFAULT_USERS, settings)
    manager = SessionManager(workers.runtime, SessionOptions())
    try:
        session = await manager.open("instr")
        rt = session.runtime
        h = await rt.register("instr")
        tag = "Tank01.Level"
        item = await rt.add_item(h, tag)
        await rt.advise(h, item, supervisory=False)
        request = WriteRequest(1.5)
        calls = {
            "ping": lambda: rt.ping(),
            "read": lambda: rt.read_bytes(h, [tag], 5.0),
            "write": lambda: rt.write(h, item, request),
        }
        for name, call in calls.items():
            for _ in range(counts["warm"]):
                await call()
        for name, call in calls.items():
            for _ in range(counts[name]):
                await call()
        await manager.shutdown()
    finally:
        workers.cleanup()

if loop_kind == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def _total(path: Path) -> int:
    """The ``summary:`` (or ``totals:``) instruction count of a callgrind output file."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {path}")


def _run(src: str, counts: dict[str, int], loop_kind: str) -> tuple[int, int]:
    """(gateway, worker) instructions of one run of the script with ``counts`` calls."""
    with tempfile.TemporaryDirectory(prefix="mxgw-instr-") as tmp:
        gw_out = Path(tmp) / "gateway.out"
        wk_out = Path(tmp) / "worker.out"
        valgrind = ["valgrind", "--tool=callgrind", "--quiet"]
        env = dict(os.environ, PYTHONPATH=src, PYTHONHASHSEED="0")
        subprocess.run(
            [
                *valgrind,
                f"--callgrind-out-file={gw_out}",
                sys.executable,
                "-c",
                _SCRIPT,
                json.dumps(counts),
                json.dumps([*valgrind, f"--callgrind-out-file={wk_out}"]),
                loop_kind,
                _WORKER,
            ],
            env=env,
            check=True,
            timeout=1800,
        )
        keep = os.environ.get(KEEP_ENV)
        if keep:
            tag = "-".join(f"{k}{v}" for k, v in counts.items())
            for out in (gw_out, wk_out):
                shutil.copy(out, Path(keep) / f"{Path(src).parent.name}-{tag}-{out.name}")
        return _total(gw_out), _total(wk_out)


def _side(src: str, p: dict[str, int], loop_kind: str) -> dict[str, Any]:
    """Instructions per command of each side, from a base run and one run per command."""
    base = {"warm": WARM, **{c: p["base"] for c in COMMANDS}}
    g0, w0 = _run(src, base, loop_kind)
    out: dict[str, Any] = {"gateway": {}, "worker": {}}
    for command in COMMANDS:
        g1, w1 = _run(src, {**base, command: p["base"] + p["extra"]}, loop_kind)
        out["gateway"][command] = round((g1 - g0) / p["extra"])
        out["worker"][command] = round((w1 - w0) / p["extra"])
    return out


def _commit(src: str) -> str:
    """The commit of the checkout holding ``src`` (and '+dirty' with local changes)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", src, *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain") else "")


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point of ``python -m bench worker_instr``."""
    from bench._common import Report, load

    report = Report("worker_instr", quick)
    if shutil.which("valgrind") is None:
        report.skip("everything", "valgrind is not installed")
        return report.to_json()
    p = QUICK if quick else FULL
    loop_kind = os.environ.get(LOOP_ENV, "asyncio")
    report.results["load_before"] = load()
    report.results["parameters"] = {**p, "warm": WARM, "gateway_loop": loop_kind}
    sides = {"library": str(ROOT / "src")}
    if base := os.environ.get(BASE_ENV):
        sides["base"] = base
    for name, src in sides.items():
        report.results[name] = {"src": src, "commit": _commit(src), **_side(src, p, loop_kind)}
    report.results["load_after"] = load()
    report.notes.append(
        "instructions per call, callgrind, WorkerRuntime called from the gateway's event loop "
        "without gRPC; gateway = the calling process (its loop's turns included), worker = "
        "mxgw-worker on its default loop; (run with extra calls - base run) / extra"
    )
    return report.to_json()
