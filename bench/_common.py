"""Shared plumbing for the benchmarks: machine info, statistics, subprocess servers.

Every benchmark starts what it needs in a subprocess on 127.0.0.1 (so the server's CPU is
not charged to the client), runs a bounded workload and returns a JSON-able dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import __version__ as protobuf_version

REPO_ROOT = Path(__file__).resolve().parent.parent
API_KEY = "mxgw_bench_" + "b3nch" * 6
"""The key every bench server is started with (admin scope on the simulator)."""
METADATA = (("authorization", f"Bearer {API_KEY}"),)

JSON = dict[str, Any]


def machine_info() -> JSON:
    """Cores, Python, grpcio/protobuf versions and the date: the context of every figure."""
    try:
        from google.protobuf.internal import api_implementation

        pb_impl = api_implementation.Type()
    except Exception:  # pragma: no cover - private API moved
        pb_impl = "unknown"
    info: JSON = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "protobuf": protobuf_version,
        "protobuf_implementation": pb_impl,
    }
    with contextlib.suppress(Exception), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return info


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) of ``values`` by nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    """Median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float | None:
    """``a / b`` rounded, or None when ``b`` is 0 or not a number."""
    if not b or b != b:
        return None
    return round(a / b, 3)


def rnd(x: float, digits: int = 1) -> float:
    """Round for the JSON report."""
    return round(float(x), digits)


@dataclass
class Report:
    """One benchmark's JSON document: results, targets (met or missed) and what was skipped."""

    name: str
    quick: bool
    results: JSON = field(default_factory=dict)
    targets: list[JSON] = field(default_factory=list)
    skipped: list[JSON] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def target(self, name: str, goal: str, measured: float | None, met: bool | None) -> None:
        """Record a target with its measured figure; ``met`` None means not measurable."""
        self.targets.append({"name": name, "goal": goal, "measured": measured, "met": met})

    def skip(self, what: str, why: str) -> None:
        """Record something that could not be measured, and why."""
        self.skipped.append({"what": what, "why": why})

    def to_json(self) -> JSON:
        """The document printed by ``python -m bench <name>``."""
        return {
            "benchmark": self.name,
            "quick": self.quick,
            "machine": machine_info(),
            "elapsed_s": rnd(time.perf_counter() - self.started, 2),
            "results": self.results,
            "targets": self.targets,
            "skipped": self.skipped,
            "notes": self.notes,
        }


def load() -> list[float]:
    """The machine's 1/5/15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


_Parameters = TypeVar("_Parameters", bound=Mapping[str, Any])


def begin(
    name: str, quick: bool, quick_parameters: _Parameters, full_parameters: _Parameters
) -> tuple[Report, _Parameters]:
    """The report of a run of ``name`` and the parameters it runs with (the quick or the
    full set), both recorded in the report with the machine's load before the run."""
    report = Report(name, quick)
    parameters = quick_parameters if quick else full_parameters
    report.results["load_before"] = load()
    report.results["parameters"] = dict(parameters)
    return report, parameters


def cannot_run(report: Report, *, asyncua: bool = False, simulator: bool = False) -> bool:
    """True when what the run needs is missing here (``asyncua``: the OPC UA side;
    ``simulator``: ``mxgateway_sim``), with everything recorded as skipped and why."""
    if asyncua and importlib.util.find_spec("asyncua") is None:
        report.skip("everything", "asyncua is not installed (pip install -e '.[bench]')")
        return True
    if simulator and sim_server() is None:
        report.skip("everything", "mxgateway_sim is missing")
        return True
    return False


class ServerProcess:
    """A gRPC server in a subprocess that prints one JSON line with its address on stdout.

    Used for the replay server and for ``mxgw-sim serve --json``. The process is killed on
    exit from the ``async with`` block, whatever happened inside it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        ready_timeout: float = 60.0,
        env: Mapping[str, str | None] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.ready_timeout = ready_timeout
        self.env = dict(env or {})
        """Changes to this process's environment for the server (None: removed)."""
        self.proc: asyncio.subprocess.Process | None = None
        self.info: JSON = {}
        self.address = ""
        self.stderr_tail = b""
        """The last bytes the server (and its workers) wrote to stderr."""
        self._drain: asyncio.Task[None] | None = None

    async def _drain_stderr(self) -> None:
        """Keep reading stderr: a full pipe would block the server (or a worker) mid-run."""
        stream = self.proc.stderr if self.proc is not None else None
        if stream is None:
            return
        while data := await stream.read(1 << 16):
            self.stderr_tail = (self.stderr_tail + data)[-8192:]

    async def __aenter__(self) -> ServerProcess:
        env = dict(os.environ)
        for name, value in self.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT),
            env=env,
        )
        try:
            assert self.proc.stdout is not None
            line = await asyncio.wait_for(self.proc.stdout.readline(), self.ready_timeout)
            if not line:
                err = b""
                if self.proc.stderr is not None:
                    err = await asyncio.wait_for(self.proc.stderr.read(), 5)
                raise RuntimeError(
                    f"{self.argv[0]} exited before it was ready: {err.decode()[-2000:]}"
                )
            self.info = json.loads(line)
            self.address = str(
                self.info.get("address") or self.info.get("listen") or self.info.get("endpoint")
            )
            self._drain = asyncio.get_running_loop().create_task(self._drain_stderr())
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Terminate (then kill) the process and reap it."""
        proc = self.proc
        drain, self._drain = self._drain, None
        if proc is None or proc.returncode is not None:
            if drain is not None:
                drain.cancel()
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the server process has used so far, if psutil can say."""
        if self.proc is None:
            return None
        try:
            import psutil

            process = psutil.Process(self.proc.pid)
            total = 0.0
            for p in (process, *process.children(recursive=True)):  # with its workers
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
            return total
        except Exception:
            return None


def replay_server(events: int, batch: int, *, values: str = "double") -> ServerProcess:
    """The bench replay server (``bench/replay_server.py``) in a subprocess."""
    return ServerProcess(
        [
            sys.executable,
            "-m",
            "bench.replay_server",
            "--listen",
            "127.0.0.1:0",
            "--events",
            str(events),
            "--batch",
            str(batch),
            "--values",
            values,
        ]
    )


def sim_server(
    *,
    galaxy_objects: int = 0,
    scan_ms: int = 200,
    tags_out: str = "",
    max_sessions: int = 64,
    event_queue_limit: int = 10_000,
    extra: Sequence[str] = (),
    session_isolation: str = "inline",
    event_loop: str = "asyncio",
    env: Mapping[str, str | None] | None = None,
) -> ServerProcess | None:
    """The simulator in a subprocess via ``bench/sim_server.py``, or None if it is missing
    (``env``: changes to its environment, see :class:`ServerProcess`)."""
    try:
        from mxgateway_sim import GatewaySimulator  # noqa: F401
    except ImportError:
        return None
    argv = [
        sys.executable,
        "-m",
        "bench.sim_server",
        "--galaxy-objects",
        str(galaxy_objects),
        "--scan-ms",
        str(scan_ms),
        "--max-sessions",
        str(max_sessions),
        "--event-queue-limit",
        str(event_queue_limit),
        "--session-isolation",
        session_isolation,
        "--event-loop",
        event_loop,
    ]
    if tags_out:
        argv += ["--tags-out", tags_out]
    argv += extra
    return ServerProcess(argv, ready_timeout=180.0, env=env)


def load_tags(path: str, n: int) -> tuple[list[str], list[object]]:
    """The first ``n`` tags of a ``--tags-out`` file and a value of the right type for each."""
    tags: list[str] = []
    values: list[object] = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if len(tags) >= n:
                break
            ref, _, dtype = line.rstrip("\n").partition("\t")
            if not ref:
                continue
            tags.append(ref)
            values.append({"1": i % 2 == 0, "2": i, "4": i * 0.25}.get(dtype, f"bench-{i}"))
    return tags, values


def sim_argv() -> list[str] | None:
    """How to start ``mxgw-sim serve`` on loopback, or None when the simulator has not landed."""
    try:
        import mxgateway_sim  # noqa: F401
    except ImportError:
        return None
    base: list[str]
    exe = shutil.which("mxgw-sim") or str(Path(sys.executable).parent / "mxgw-sim")
    if Path(exe).exists():
        base = [exe]
    else:
        try:
            import importlib.util

            if importlib.util.find_spec("mxgateway_sim.__main__") is None:
                return None
        except ImportError:
            return None
        base = [sys.executable, "-m", "mxgateway_sim"]
    return [
        *base,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--plaintext",
        "--api-key",
        API_KEY,
        "--json",
    ]


def simulator(extra: Sequence[str] = ()) -> ServerProcess | None:
    """``mxgw-sim serve`` in a subprocess, or None when it is not available yet."""
    argv = sim_argv()
    if argv is None:
        return None
    return ServerProcess([*argv, *extra])


@contextlib.asynccontextmanager
async def aio_channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    """A plaintext grpc.aio channel to ``address``, closed on exit."""
    channel = grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )
    try:
        await asyncio.wait_for(channel.channel_ready(), 30)
        yield channel
    finally:
        await channel.close(None)


class CpuClock:
    """Wall and process-CPU time of a code region (CPU includes gRPC's C-core threads)."""

    def __enter__(self) -> CpuClock:
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.wall = 0.0
        self.cpu = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
