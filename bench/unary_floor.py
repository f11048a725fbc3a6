"""The floor of a unary ``Invoke``, side by side with asyncua, in one run (issue 15).

Against one simulator started as ``mxgw-sim serve`` starts by default (``bench.opcua``'s
single-call simulator: uvloop where installed, 200 ms scan) and one asyncua server, in
interleaved rounds (the order alternating), sequential calls of:

* ``bare_read`` / ``bare_ping``: the generated stub's ``Invoke`` with a request built once
  (one-tag ReadBulk, Ping) on a plain ``grpc.aio`` channel of its own: no library;
* ``lib_read`` / ``lib_ping``: ``Session.read_bulk`` of one tag and ``Session.ping`` through
  unary ``Invoke`` (``ClientOptions(command_stream=False)``);
* ``health``: a bare health check on the plain channel (no key, the smallest messages);
* ``grpc_floor``: the bare stub's Ping to ``bench/floor_server.py``, a grpc.aio server that
  answers every ``Invoke`` with canned bytes (no key check, no body gate, no work): the
  floor of a unary call with grpc.aio on both ends;
* ``ua_read``: asyncua's ``Node.read_value`` of one Double.

Per mode: latency median and p99, the client's CPU per call (``time.process_time()`` of
this process, where only one of them runs at a time) and the server's (user + system
time of its process, read from the kernel: 10 ms ticks, so a figure is good to about
10 ms / calls), and each round's median over asyncua's read in the same round; the
median of those ratios with its spread. The machine's load is recorded before and after.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import _client
from bench._common import (
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
from bench.opcua import BareStub, Mx, Ua, opcua_server

FULL = {"rounds": 5, "calls": 400}
QUICK = {"rounds": 1, "calls": 20}

MODES = ("bare_read", "lib_read", "bare_ping", "lib_ping", "health", "grpc_floor", "ua_read")


async def measure(
    call: Callable[[], Awaitable[None]], calls: int, server_cpu: Callable[[], float | None]
) -> dict[str, Any]:
    """``calls`` sequential calls after a warm-up: latencies, client and server CPU."""
    for _ in range(max(5, calls // 10)):
        await call()
    latencies: list[float] = []
    s0, c0 = server_cpu(), time.process_time()
    clock = time.perf_counter
    for _ in range(calls):
        t0 = clock()
        await call()
        latencies.append((clock() - t0) * 1e6)
    c1, s1 = time.process_time(), server_cpu()
    return {
        "latencies": latencies,
        "client_cpu_us": (c1 - c0) / calls * 1e6,
        "server_cpu_us": (s1 - s0) / calls * 1e6 if s0 is not None and s1 is not None else None,
    }


def summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per mode over the rounds: pooled latency median and p99, median CPU figures, and
    the median (min-max) of each round's latency median over asyncua's read."""
    out: dict[str, Any] = {}
    for mode in MODES:
        lat = [x for r in rounds for x in r[mode]["latencies"]]
        server = [r[mode]["server_cpu_us"] for r in rounds if r[mode]["server_cpu_us"] is not None]
        ratios = [median(r[mode]["latencies"]) / median(r["ua_read"]["latencies"]) for r in rounds]
        out[mode] = {
            "median_us": rnd(median(lat)),
            "p99_us": rnd(pct(lat, 99)),
            "client_cpu_us_per_call": rnd(median([r[mode]["client_cpu_us"] for r in rounds])),
            "server_cpu_us_per_call": rnd(median(server)) if server else None,
            "ratio_to_ua_read": rnd(median(ratios), 3),
            "ratio_min": rnd(min(ratios), 3),
            "ratio_max": rnd(max(ratios), 3),
        }
    return out


async def run_async(quick: bool) -> dict[str, Any]:
    """Start both servers, run the interleaved rounds, return the JSON document."""
    report, p = begin("unary_floor", quick, QUICK, FULL)
    if cannot_run(report, asyncua=True):
        return report.to_json()
    import logging

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        tags_file = os.path.join(tmp, "tags.txt")
        sim = sim_server(galaxy_objects=300, scan_ms=200, event_loop="auto", tags_out=tags_file)
        if sim is None:
            report.skip("everything", "mxgateway_sim is missing")
            return report.to_json()
        floor = ServerProcess([sys.executable, "-m", "bench.floor_server"])
        async with sim, opcua_server(10) as opc, floor:
            tags, values = load_tags(tags_file, 10)
            async with _client.library_session(sim.address) as lib:
                assert lib is not None
                mx = Mx(lib, tags, values)
                await mx.setup()
                bare = BareStub(sim.address, mx)
                floor_stub = BareStub(floor.address, mx)  # the same Ping, canned answer
                health_request = health_pb2.HealthCheckRequest()
                check = health_pb2_grpc.HealthStub(bare.channel).Check
                ua = Ua(opc.info["address"], int(opc.info["namespace"]), 10)
                await ua.connect()

                async def health() -> None:
                    await check(health_request, timeout=30)

                calls: dict[str, Callable[[], Awaitable[None]]] = {
                    "bare_read": bare.read_one,
                    "lib_read": mx.read_one,
                    "bare_ping": bare.ping,
                    "lib_ping": mx.ping,
                    "health": health,
                    "grpc_floor": floor_stub.ping,
                    "ua_read": ua.read_one,
                }
                rounds: list[dict[str, dict[str, Any]]] = []
                try:
                    for r in range(int(p["rounds"])):
                        order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
                        rounds.append(
                            {
                                mode: await measure(
                                    calls[mode],
                                    int(p["calls"]),
                                    {"ua_read": opc, "grpc_floor": floor}.get(
                                        mode, sim
                                    ).cpu_seconds,
                                )
                                for mode in order
                            }
                        )
                finally:
                    await ua.close()
                    await bare.close()
                    await floor_stub.close()
    report.results["modes"] = summary(rounds)
    report.results["load_after"] = load()
    report.notes.append(
        "bare_*: the generated stub's Invoke, request built once, plain grpc.aio channel; "
        "lib_*: the library through unary Invoke; ratios: each round's latency median "
        "over asyncua's read in the same round, median (min-max) of the rounds."
    )
    return report.to_json()


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench unary_floor``."""
    return asyncio.run(run_async(quick))
