"""Cost of the worker hop (``--session-isolation process``) against the inline runtime.

Three figures, each measured with the session's runtime inline and in an ``mxgw-worker``:

* ``startup``: OpenSession + CloseSession over gRPC, on three servers at once (inline;
  process with the default pool of started workers; process without a pool), the opens
  interleaved and 1 s apart (the pool refills in the background meanwhile).
* ``commands``: ``Invoke`` latency over gRPC (Ping, a one-tag ReadBulk of an advised tag, a
  Write) at the default 200 ms scan, on an inline and a process server running at the same
  time: rounds of 50 of each command on one server then the other (alternating which goes
  first), so a change in the machine's load hits both alike; the hop's cost is the
  difference of the medians. Measured twice: with both servers on asyncio (as every run
  before), then on uvloop (what ``mxgw-sim serve`` runs, with either isolation; the
  workers run on uvloop in both cases, their default). Also each server's CPU per
  command (gateway and worker, user and system, psutil), and the hop alone, without gRPC:
  a runtime call from the gateway's event loop (``WorkerRuntime`` vs ``SimulatedRuntime``),
  in this process.
* ``events``: one subscriber on ``StreamEventBatches`` (bare stub, counting) at a 1 ms scan
  with as many advised tags as one stream carries; events/s and the server's CPU
  (gateway and workers) per event.

With ``MXGW_BENCH_BASE_SRC`` naming another checkout's ``src`` folder (``git worktree add
/tmp/base <commit>``, then ``MXGW_BENCH_BASE_SRC=/tmp/base/src``), both paired timings run a
third server, ``process_base``: process isolation with that checkout's gateway and workers,
in the same rounds (before and after a change under the same load).

The client is this process; on a 2-core machine the client, the gateways and the workers
share the cores. Targets: the hop adds under 200 µs median to a command; one subscriber
through a worker gets 100,000+ events/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

from bench._common import (
    METADATA,
    Report,
    aio_channel,
    load_tags,
    median,
    pct,
    rnd,
    sim_server,
)
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pb_grpc

MODES = ("inline", "process")
EVENT_TAGS = 2_000
COMMAND_TARGET_US = 200.0
OPEN_TARGET_MS = 100.0
ROUND = 50
"""Commands of each kind per server in one round of the paired command timing."""
STARTUP_GAP_S = 1.0
EVENTS_TARGET = 100_000.0
BASE_ENV = "MXGW_BENCH_BASE_SRC"
"""Another checkout's ``src``: its process isolation runs as a third server (``process_base``)."""


@contextlib.asynccontextmanager
async def _base_server(event_loop: str) -> AsyncIterator[Any]:
    """The ``process_base`` server (None without :data:`BASE_ENV`): its gateway and workers
    import that checkout (first on their ``PYTHONPATH``, which the workers inherit)."""
    src = os.environ.get(BASE_ENV)
    if not src:
        yield None
        return
    server = sim_server(scan_ms=200, session_isolation="process", event_loop=event_loop)
    assert server is not None
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, saved) if p)
    try:
        await server.__aenter__()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def _with_base(
    event_loop: str, servers: dict[str, Any], stubs: dict[str, Any]
) -> AsyncIterator[None]:
    """Adds ``process_base`` (when asked for) to ``servers`` and ``stubs`` for the block."""
    async with _base_server(event_loop) as base:
        if base is None:
            yield
            return
        async with aio_channel(base.address) as channel:
            servers["process_base"] = base
            stubs["process_base"] = pb_grpc.MxAccessGatewayStub(channel)
            yield


def _base_figures(times: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """``process_base``'s latencies and what its hop added (empty without it)."""
    if "process_base" not in times:
        return {}
    base = _latencies(times["process_base"])
    inline = _latencies(times["inline"])["commands_us_median"]
    return {
        "src": os.environ.get(BASE_ENV),
        **base,
        "added_us_median": {k: rnd(v - inline[k]) for k, v in base["commands_us_median"].items()},
    }


def _cmd(payload: str, **fields: Any) -> pb.MxCommand:
    kind = pb.MxCommandKind.Value("MX_COMMAND_KIND_" + payload.upper())
    body_type = pb.MxCommand.DESCRIPTOR.fields_by_name[payload].message_type
    assert body_type is not None  # every payload of MxCommand is a message
    return pb.MxCommand(kind=kind, **{payload: getattr(pb, body_type.name)(**fields)})


async def _invoke(stub: Any, sid: str, command: pb.MxCommand) -> pb.MxCommandReply:
    request = pb.MxCommandRequest(session_id=sid, command=command)
    reply: pb.MxCommandReply = await stub.Invoke(request, metadata=METADATA, timeout=30)
    if reply.protocol_status.code != pb.PROTOCOL_STATUS_CODE_OK:
        raise RuntimeError(f"{command.kind}: {reply.protocol_status.message}")
    return reply


async def _startup(stubs: dict[str, Any], n: int) -> dict[str, list[tuple[float, float]]]:
    """(open, close) seconds of ``n`` sessions per server, opened and closed one after the
    other, the servers interleaved, 1 s apart (a pool refills meanwhile)."""
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in stubs}
    for _ in range(n):
        for name, stub in stubs.items():
            await asyncio.sleep(STARTUP_GAP_S)
            t0 = time.perf_counter()
            reply = await stub.OpenSession(
                pb.OpenSessionRequest(client_session_name="bench-hop"),
                metadata=METADATA,
                timeout=60,
            )
            t1 = time.perf_counter()
            await stub.CloseSession(
                pb.CloseSessionRequest(session_id=reply.session_id), metadata=METADATA, timeout=60
            )
            out[name].append((t1 - t0, time.perf_counter() - t1))
    return out


async def _command_session(stub: Any, tag: str) -> tuple[str, dict[str, pb.MxCommand]]:
    """A session with one advised tag, and the commands to time on it."""
    opened = await stub.OpenSession(
        pb.OpenSessionRequest(client_session_name="bench-hop"), metadata=METADATA, timeout=60
    )
    sid = opened.session_id
    h = (await _invoke(stub, sid, _cmd("register", client_name="hop"))).register.server_handle
    item = (
        await _invoke(stub, sid, _cmd("add_item", server_handle=h, item_definition=tag))
    ).add_item.item_handle
    await _invoke(stub, sid, _cmd("advise", server_handle=h, item_handle=item))
    return sid, {
        "ping": _cmd("ping"),
        "read_bulk_1_cached": _cmd("read_bulk", server_handle=h, tag_addresses=[tag]),
        "write": _cmd(
            "write",
            server_handle=h,
            item_handle=item,
            value=pb.MxValue(data_type=pb.MX_DATA_TYPE_DOUBLE, double_value=1.5),
        ),
    }


def _cpu(server: Any) -> dict[int, tuple[float, float]]:
    """User and system CPU seconds of a bench server (key 0) and of each of its children."""
    import psutil

    root = psutil.Process(server.proc.pid)
    out: dict[int, tuple[float, float]] = {}
    for proc in (root, *root.children()):
        times = proc.cpu_times()
        out[0 if proc is root else proc.pid] = (times.user, times.system)
    return out


def _spent(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
) -> list[float]:
    """Gateway user, gateway system, workers' user, workers' system seconds between two
    :func:`_cpu` readings (processes present in both)."""
    out = [0.0] * 4
    for pid, (user, system) in after.items():
        if pid in before:
            k = 0 if pid == 0 else 2
            out[k] += user - before[pid][0]
            out[k + 1] += system - before[pid][1]
    return out


async def _commands(
    servers: dict[str, Any], stubs: dict[str, Any], tag: str, n: int
) -> dict[str, Any]:
    """Latencies of each command on each server, interleaved in rounds; CPU per command."""
    sessions = {name: await _command_session(stub, tag) for name, stub in stubs.items()}
    for name, (sid, commands) in sessions.items():  # warm up (first value, caches)
        for command in commands.values():
            for _ in range(20):
                await _invoke(stubs[name], sid, command)
    times: dict[str, dict[str, list[float]]] = {
        name: {c: [] for c in commands} for name, (_, commands) in sessions.items()
    }
    cpu: dict[str, list[float]] = {}
    names = list(stubs)
    for r in range(max(1, n // ROUND)):
        for name in names if r % 2 else names[::-1]:
            sid, commands = sessions[name]
            stub, before = stubs[name], _cpu(servers[name])
            for _ in range(ROUND):
                for command_name, command in commands.items():
                    t0 = time.perf_counter()
                    await _invoke(stub, sid, command)
                    times[name][command_name].append(time.perf_counter() - t0)
            spent = _spent(before, _cpu(servers[name]))
            total = cpu.setdefault(name, [0.0] * 4)
            for k in range(4):
                total[k] += spent[k]
    for name, (sid, _) in sessions.items():
        await stubs[name].CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=METADATA)
    count = max(1, n // ROUND) * ROUND * 3
    return {
        "times": times,
        "cpu_us_per_command": {
            name: dict(
                zip(
                    ("gateway_user", "gateway_system", "worker_user", "worker_system"),
                    (rnd(v / count * 1e6, 1) for v in total),
                    strict=True,
                )
            )
            for name, total in cpu.items()
        },
    }


def _latencies(times: dict[str, list[float]]) -> dict[str, Any]:
    return {
        "commands_us_median": {k: rnd(median(v) * 1e6, 1) for k, v in times.items()},
        "commands_us_p99": {k: rnd(pct(v, 99) * 1e6, 1) for k, v in times.items()},
    }


async def _commands_on_uvloop(tags_file: str, n: int) -> dict[str, Any]:
    """The paired command timing with both servers on uvloop (``mxgw-sim serve``'s loop)."""
    inline = sim_server(scan_ms=200, session_isolation="inline", event_loop="uvloop")
    process = sim_server(scan_ms=200, session_isolation="process", event_loop="uvloop")
    assert inline is not None and process is not None
    async with (
        inline,
        process,
        aio_channel(inline.address) as c_inline,
        aio_channel(process.address) as c_process,
    ):
        stubs = {
            "inline": pb_grpc.MxAccessGatewayStub(c_inline),
            "process": pb_grpc.MxAccessGatewayStub(c_process),
        }
        tags, _ = load_tags(tags_file, 1)
        servers = {"inline": inline, "process": process}
        async with _with_base("uvloop", servers, stubs):
            measured = await _commands(servers, stubs, tags[0], n)
    out: dict[str, Any] = {mode: _latencies(measured["times"][mode]) for mode in MODES}
    if base := _base_figures(measured["times"]):
        out["process_base"] = base
    out["server_cpu_us_per_command"] = measured["cpu_us_per_command"]
    medians = [out[mode]["commands_us_median"] for mode in MODES]
    out["added_us_median"] = {k: rnd(medians[1][k] - medians[0][k]) for k in medians[0]}
    return out


async def _events(stub: Any, server: Any, tags: list[str], n: int) -> dict[str, Any]:
    opened = await stub.OpenSession(
        pb.OpenSessionRequest(client_session_name="bench-hop-events"), metadata=METADATA
    )
    sid = opened.session_id
    try:
        h = (await _invoke(stub, sid, _cmd("register", client_name="hop"))).register.server_handle
        await _invoke(stub, sid, _cmd("subscribe_bulk", server_handle=h, tag_addresses=tags))
        call = stub.StreamEventBatches(pb.StreamEventsRequest(session_id=sid), metadata=METADATA)
        count = 0
        overflowed = False
        t0 = c0 = 0.0
        try:
            async for batch in call:
                if not t0:  # start the clock once the stream flows
                    t0, c0 = time.perf_counter(), server.cpu_seconds() or 0.0
                    continue
                for ev in batch.events:
                    if ev.worker_sequence:
                        count += 1
                    elif ev.HasField("stream_fault"):
                        overflowed = True
                if count >= n or overflowed:
                    break
        finally:
            call.cancel()
        wall = time.perf_counter() - t0
        cpu = (server.cpu_seconds() or 0.0) - c0
        return {
            "events": count,
            "events_per_s": rnd(count / wall, 0) if wall else 0.0,
            "server_cpu_us_per_event": rnd(cpu / count * 1e6, 2) if count else None,
            "server_cpu_share": rnd(cpu / wall, 3) if wall else None,
            "overflowed": overflowed,
        }
    finally:
        await stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=METADATA)


async def _hop_alone(n: int) -> dict[str, Any]:
    """A runtime call from the gateway's loop, without gRPC: inline vs through a worker."""
    from mxgateway_sim import Plant, SessionManager, SessionOptions, builtin_catalog
    from mxgateway_sim._simconfig import SimSettings
    from mxgateway_sim._simruntime import DEFAULT_USERS
    from mxgateway_sim._workerclient import WorkerSettings
    from mxgateway_sim._workers import ProcessIsolation

    plant = Plant(builtin_catalog(), scan_interval_ms=200, flaky_one_in=0)
    settings = SimSettings(scan_interval_ms=200, flaky_one_in=0)
    workers = ProcessIsolation(WorkerSettings())
    workers.prepare(plant, DEFAULT_USERS, settings)
    out: dict[str, Any] = {}
    try:
        plant.start()
        for mode, factory in (
            ("inline", lambda: settings.runtime(plant, DEFAULT_USERS)),
            ("process", workers.runtime),
        ):
            manager = SessionManager(factory, SessionOptions())
            t0 = time.perf_counter()
            session = await manager.open("bench")
            opened = time.perf_counter() - t0
            rt = session.runtime
            h = await rt.register("bench")
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                await rt.ping()
                times.append(time.perf_counter() - t0)
            reads = []
            for _ in range(n // 4):
                t0 = time.perf_counter()
                await rt.read(h, ["Tank01.Level"], 5.0)
                reads.append(time.perf_counter() - t0)
            await manager.shutdown()
            out[mode] = {
                "open_ms": rnd(opened * 1e3, 2),
                "ping_us_median": rnd(median(times) * 1e6, 1),
                "ping_us_p99": rnd(pct(times, 99) * 1e6, 1),
                "read_1_uncached_us_median": rnd(median(reads) * 1e6, 1),
            }
    finally:
        await plant.stop()
        workers.cleanup()
    out["ping_added_us"] = rnd(out["process"]["ping_us_median"] - out["inline"]["ping_us_median"])
    return out


async def run_async(quick: bool) -> dict[str, Any]:
    """Every figure, for both modes."""
    report = Report("worker_hop", quick)
    n_commands = 100 if quick else 2_000
    n_startup = 3 if quick else 10
    n_events = 20_000 if quick else 300_000
    tags_n = 200 if quick else EVENT_TAGS
    report.results["load_avg_before"] = list(os.getloadavg())
    report.results["hop_without_grpc"] = await _hop_alone(200 if quick else 5_000)
    per_mode: dict[str, Any] = {mode: {} for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-hop-") as tmp:
        tags_file = os.path.join(tmp, "tags.txt")
        # Commands at the default scan (200 ms), events at a 1 ms scan: a busy scan clock
        # would be measured along with the hop. Every server runs at once here.
        inline = sim_server(scan_ms=200, tags_out=tags_file, session_isolation="inline")
        pooled = sim_server(scan_ms=200, session_isolation="process")
        unpooled = sim_server(
            scan_ms=200, session_isolation="process", extra=["--worker-pool", "0"]
        )
        assert inline is not None and pooled is not None and unpooled is not None
        async with (
            inline,
            pooled,
            unpooled,
            aio_channel(inline.address) as c_inline,
            aio_channel(pooled.address) as c_pooled,
            aio_channel(unpooled.address) as c_unpooled,
        ):
            stubs = {
                "inline": pb_grpc.MxAccessGatewayStub(c_inline),
                "process": pb_grpc.MxAccessGatewayStub(c_pooled),
                "process_no_pool": pb_grpc.MxAccessGatewayStub(c_unpooled),
            }
            tags, _ = load_tags(tags_file, 1)
            starts = await _startup(stubs, n_startup)
            del stubs["process_no_pool"]
            servers = {"inline": inline, "process": pooled}
            async with _with_base("asyncio", servers, stubs):
                measured = await _commands(servers, stubs, tags[0], n_commands)
            if base := _base_figures(measured["times"]):
                report.results["process_base"] = base
        report.results["startup"] = {
            name: {
                "open_session_ms_median": rnd(median([s[0] for s in runs]) * 1e3, 2),
                "open_session_ms_max": rnd(max(s[0] for s in runs) * 1e3, 2),
                "close_session_ms_median": rnd(median([s[1] for s in runs]) * 1e3, 2),
            }
            for name, runs in starts.items()
        }
        report.results["server_cpu_us_per_command"] = measured["cpu_us_per_command"]
        for mode in MODES:
            per_mode[mode].update(_latencies(measured["times"][mode]))
        if importlib.util.find_spec("uvloop") is not None:
            report.results["commands_uvloop"] = await _commands_on_uvloop(tags_file, n_commands)
        else:  # Windows
            report.skip("commands on uvloop", "uvloop is not installed")
        for mode in MODES:
            server = sim_server(
                galaxy_objects=300 if quick else 1_500,
                scan_ms=1,
                tags_out=tags_file,
                session_isolation=mode,
            )
            assert server is not None
            async with server, aio_channel(server.address) as channel:
                stub = pb_grpc.MxAccessGatewayStub(channel)
                tags, _ = load_tags(tags_file, tags_n)
                events = [await _events(stub, server, tags, n_events) for _ in range(3)]
            per_mode[mode].update(
                {
                    "events_runs": events,
                    "events_per_s_median": rnd(
                        statistics.median(e["events_per_s"] for e in events), 0
                    ),
                    "advised_tags": len(tags),
                }
            )
    report.results["grpc"] = per_mode
    report.results["load_avg_after"] = list(os.getloadavg())
    inline_ms, process_ms = per_mode["inline"], per_mode["process"]
    added = {
        k: rnd(process_ms["commands_us_median"][k] - inline_ms["commands_us_median"][k])
        for k in inline_ms["commands_us_median"]
    }
    report.results["added_us_median"] = added
    worst = max(added.values())
    report.target(
        "worker hop adds < 200 µs median to a command (worst of ping, read, write; over gRPC, "
        "paired with inline; servers on asyncio)",
        "< 200 µs",
        worst,
        worst < COMMAND_TARGET_US,
    )
    if "commands_uvloop" in report.results:
        worst = max(report.results["commands_uvloop"]["added_us_median"].values())
        report.target(
            "worker hop adds < 200 µs median to a command (the same, servers on uvloop: what "
            "mxgw-sim serve runs)",
            "< 200 µs",
            worst,
            worst < COMMAND_TARGET_US,
        )
    hop = report.results["hop_without_grpc"]["ping_added_us"]
    report.target(
        "worker hop adds < 200 µs median to a runtime call (no gRPC)",
        "< 200 µs",
        hop,
        hop < COMMAND_TARGET_US,
    )
    opened = report.results["startup"]["process"]["open_session_ms_median"]
    report.target(
        "OpenSession with the worker pool: < 100 ms median (a started worker is handed out)",
        "< 100 ms",
        opened,
        opened < OPEN_TARGET_MS,
    )
    rate = process_ms["events_per_s_median"]
    report.target(
        "one subscriber through a worker: 100,000+ events/s",
        ">= 100000 events/s",
        rate,
        rate >= EVENTS_TARGET,
    )
    return report.to_json()


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point of ``python -m bench worker_hop``."""
    return asyncio.run(run_async(quick))
