"""Unary round trip: library helper vs ``invoke_raw`` vs the bare generated stub.

All three use the same gRPC channel (the library's own), against the same server, and run
interleaved in blocks so that drift hits them equally. Reported: median and p99 latency over
sequential calls, and throughput with 16 concurrent callers. The command is REGISTER (a
``Session.register``-style helper: build the command, Invoke, check the status, return the
handle). Servers: the replay server (canned replies: the client's cost dominates) and the
simulator (when it has landed).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from bench import _client
from bench._common import (
    METADATA,
    Report,
    aio_channel,
    median,
    pct,
    ratio,
    replay_server,
    rnd,
    simulator,
)
from bench._events import SESSION_ID
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pb_grpc

Call = Callable[[int], Awaitable[int]]
_names = itertools.count()


def bare_register(channel: grpc.aio.Channel, session_id: str) -> Call:
    """The generated stub doing what a register helper does: build, Invoke, check, extract."""
    stub = pb_grpc.MxAccessGatewayStub(channel)
    invoke = stub.Invoke

    async def call(i: int) -> int:
        req = pb.MxCommandRequest(session_id=session_id)
        cmd = req.command
        cmd.kind = pb.MX_COMMAND_KIND_REGISTER
        cmd.register.client_name = f"bench-{next(_names)}"
        reply = await invoke(req, metadata=METADATA, timeout=30)
        if reply.protocol_status.code != pb.PROTOCOL_STATUS_CODE_OK:
            raise RuntimeError(f"register failed: {reply.protocol_status}")
        return reply.register.server_handle

    return call


async def sequential(call: Call, n: int) -> list[float]:
    """Latencies (µs) of ``n`` sequential calls."""
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        await call(i)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


async def concurrent(call: Call, callers: int, per_caller: int) -> tuple[float, float]:
    """(calls/s, client CPU µs per call) with ``callers`` tasks of ``per_caller`` calls."""

    async def worker() -> None:
        for i in range(per_caller):
            await call(i)

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(callers)))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    total = callers * per_caller
    return total / wall, cpu / total * 1e6


async def compare(calls: dict[str, Call], quick: bool) -> dict[str, Any]:
    """Interleaved latency blocks, then interleaved throughput rounds, per mode.

    Besides the pooled figures, every round yields a ratio to the bare stub measured
    right next to it; the median of those paired ratios is what the targets use, because
    it cancels the drift of a shared 2-core machine.
    """
    blocks = 2 if quick else 8
    per_block = 50 if quick else 500
    tp_rounds = 1 if quick else 9
    per_caller = 10 if quick else 100
    for call in calls.values():  # warm-up
        await sequential(call, 20 if quick else 200)
    lat: dict[str, list[float]] = {name: [] for name in calls}
    block_medians: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(blocks):
        for name, call in calls.items():
            block = await sequential(call, per_block)
            lat[name].extend(block)
            block_medians[name].append(median(block))
    tp: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(tp_rounds):
        for name, call in calls.items():
            rate, us = await concurrent(call, 16, per_caller)
            tp[name].append(rate)
            cpu[name].append(us)
    out: dict[str, Any] = {}
    for name in calls:
        out[name] = {
            "calls": len(lat[name]),
            "median_us": rnd(median(lat[name])),
            "p99_us": rnd(pct(lat[name], 99)),
            "throughput_16_callers_per_s": rnd(median(tp[name]), 0),
            "cpu_us_per_call_16_callers": rnd(median(cpu[name])),
        }
    if "bare_stub" in calls:

        def paired(series: dict[str, list[float]], name: str) -> float | None:
            rs = [a / b for a, b in zip(series[name], series["bare_stub"], strict=True) if b]
            return round(median(rs), 3) if rs else None

        for name, r in out.items():
            r["median_vs_bare"] = paired(block_medians, name)
            r["p99_vs_bare"] = ratio(r["p99_us"], out["bare_stub"]["p99_us"])
            r["throughput_vs_bare"] = paired(tp, name)
            r["cpu_per_call_vs_bare"] = paired(cpu, name)
    return out


def add_targets(report: Report, results: dict[str, Any], where: str) -> None:
    """Target: the helper within 10% of the bare stub (median latency and throughput)."""
    helper = results.get("helper_register")
    if not helper:
        report.target(
            f"{where}: helper within 10% of bare stub", "median ratio <= 1.10", None, None
        )
        return
    r = helper.get("median_vs_bare")
    report.target(
        f"{where}: helper median latency within 10% of bare stub",
        "median ratio <= 1.10",
        r,
        None if r is None else r <= 1.10,
    )
    t = helper.get("throughput_vs_bare")
    report.target(
        f"{where}: helper 16-caller throughput within 10% of bare stub",
        "throughput ratio >= 0.90",
        t,
        None if t is None else t >= 0.90,
    )


async def run_server(report: Report, where: str, address: str, quick: bool) -> None:
    """Measure every available mode against one server."""
    async with _client.library_session(address) as lib:
        if lib is None:
            report.skip(f"{where}: helper and invoke_raw", _client.event_modes()[1])
            async with aio_channel(address) as channel:
                session_id = SESSION_ID
                if where == "simulator":
                    session_id = await _client.bare_open_session(channel)
                calls: dict[str, Call] = {"bare_stub": bare_register(channel, session_id)}
                results = await compare(calls, quick)
        else:
            channel = _client.session_channel(lib)
            calls = {"bare_stub": bare_register(channel, _client.session_id(lib))}
            calls.update(_client.unary_calls(lib))
            results = await compare(calls, quick)
    report.results[where] = results
    add_targets(report, results, where)


class _FakeInvoke:
    """Stands in for ``stub.Invoke``: answers a canned reply at once, no network."""

    def __init__(self, reply: pb.MxCommandReply) -> None:
        self.reply = reply

    async def __call__(self, request: Any, *, timeout: Any = None, metadata: Any = None) -> Any:
        return self.reply


async def library_overhead(report: Report, address: str, quick: bool) -> None:
    """The library's own CPU per call, without gRPC: the same three modes with the
    generated stub's ``Invoke`` replaced by a coroutine that answers a canned reply
    (the bare mode awaits the same coroutine). Deterministic, unlike round trips."""
    reply = pb.MxCommandReply(kind=pb.MX_COMMAND_KIND_REGISTER)
    reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_OK
    reply.register.server_handle = 1
    fake = _FakeInvoke(reply)
    async with _client.library_session(address) as lib:
        if lib is None or not hasattr(lib.client, "_stub"):
            report.skip("library overhead", "no library client (or its stub) to instrument")
            return
        real_stub = lib.client._stub

        class _Stub:
            Invoke = fake

        session_id = _client.session_id(lib)

        async def bare(i: int) -> int:
            req = pb.MxCommandRequest(session_id=session_id)
            cmd = req.command
            cmd.kind = pb.MX_COMMAND_KIND_REGISTER
            cmd.register.client_name = f"bench-{next(_names)}"
            r = await fake(req, metadata=METADATA, timeout=30)
            if r.protocol_status.code != pb.PROTOCOL_STATUS_CODE_OK:
                raise RuntimeError("register failed")
            return int(r.register.server_handle)

        calls: dict[str, Call] = {"bare_stub": bare, **_client.unary_calls(lib)}
        n = 2_000 if quick else 50_000
        best: dict[str, float] = {}
        lib.client._stub = _Stub()
        try:
            for _ in range(3 if quick else 5):
                for name, call in calls.items():
                    c0 = time.process_time()
                    for i in range(n):
                        await call(i)
                    us = (time.process_time() - c0) / n * 1e6
                    best[name] = min(best.get(name, us), us)
        finally:
            lib.client._stub = real_stub
    report.results["library_overhead_without_grpc"] = {
        name: {"cpu_us_per_call": rnd(us, 2), "added_vs_bare_us": rnd(us - best["bare_stub"], 2)}
        for name, us in best.items()
    }


async def run_async(quick: bool) -> dict[str, Any]:
    """Replay server, then simulator; returns the JSON document."""
    report = Report("unary", quick)
    async with replay_server(10, 10) as server:
        await library_overhead(report, server.address, quick)
    async with replay_server(10, 10) as server:
        await run_server(report, "replay", server.address, quick)
    sim = simulator()
    if sim is None:
        report.skip("simulator", "mxgateway_sim (mxgw-sim serve) has not landed yet")
    else:
        try:
            async with sim:
                await run_server(report, "simulator", sim.address, quick)
        except Exception as exc:
            report.skip("simulator", f"{type(exc).__name__}: {exc}"[:500])
    report.notes.append(
        "Latency: sequential calls in interleaved blocks, per-call perf_counter_ns. "
        "*_vs_bare ratios are medians of per-block / per-round ratios to the bare stub "
        "measured next to it (p99_vs_bare is pooled). "
        "Throughput: 16 asyncio tasks on one channel, median of interleaved rounds; "
        "cpu_us_per_call is this process's CPU (gRPC threads included) per call."
    )
    return report.to_json()


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench unary``."""
    return asyncio.run(run_async(quick))
