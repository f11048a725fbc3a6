"""What ``--metrics-listen`` costs the event path (issue 17: events/s within 5 %).

``python -m bench metrics [--quick] [--out FILE]`` starts two simulators in subprocesses
(``bench/sim_server.py``, 1 ms scan), one without metrics and one with ``--metrics-listen``,
and opens one session on each. Each round advises the same tags in both sessions (more
changes than a batch stream carries: the server is the bottleneck), then streams
``StreamEventBatches`` from both servers **at the same time** for the same number of
seconds (generated stub), so both see the same load of this shared machine; the on/off
ratio of the two rates is that round's sample, and the target is the median of the
samples. Meanwhile the metrics server is scraped every second (``/metrics``) and its status
page fetched every 5 s, far more often than Prometheus would. Also reported: the servers'
CPU per event, and in-process costs (one scrape and one status page with 64 sessions, and
what the command timing adds to one Invoke). The per-event path is the same with and
without metrics (delivered events are counted once per batch in both); what metrics add
is the timing of each command and the scrapes themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from typing import Any

import grpc

from bench import _client
from bench._common import (
    JSON,
    METADATA,
    Report,
    ServerProcess,
    load_tags,
    median,
    ratio,
    rnd,
    sim_server,
)
from bench.events import StreamContext
from mxgateway.generated import mxaccess_gateway_pb2 as pb

FULL = {"galaxy_objects": 1_500, "tags": 1_000, "seconds": 3, "rounds": 12}
QUICK = {"galaxy_objects": 300, "tags": 200, "seconds": 1, "rounds": 2}
SCRAPE_INTERVAL_S = 1.0
PAGE_INTERVAL_S = 5.0
TARGET_RATIO = 0.95


async def _get(endpoint: str, path: str) -> int:
    """GET ``path`` on ``endpoint``; the body's size."""
    host, _, port = endpoint.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {endpoint}\r\n\r\n".encode())
        await writer.drain()
        return len(await reader.read())
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _scraper(endpoint: str, stats: dict[str, Any]) -> None:
    """Scrape ``/metrics`` every second and the page every 5 s until cancelled."""
    last_page = 0.0
    while True:
        t0 = time.perf_counter()
        stats["metrics_bytes"] = await _get(endpoint, "/metrics")
        stats["scrapes"] += 1
        stats["scrape_ms"].append((time.perf_counter() - t0) * 1000)
        if t0 - last_page >= PAGE_INTERVAL_S:
            stats["page_bytes"] = await _get(endpoint, "/")
            last_page = t0
        await asyncio.sleep(SCRAPE_INTERVAL_S)


async def _count_for(ctx: StreamContext, seconds: float) -> int:
    """Events received on ``StreamEventBatches`` (generated stub) in ``seconds``."""
    call = ctx.stub.StreamEventBatches(
        pb.StreamEventsRequest(session_id=ctx.session_id), metadata=METADATA
    )
    count = 0
    deadline = time.perf_counter() + seconds
    try:
        async for batch in call:
            count += len(batch.events)
            if time.perf_counter() >= deadline:
                break
    except grpc.aio.AioRpcError as exc:
        if not ctx.overflowed(exc):
            raise
    finally:
        call.cancel()
    return count


class _Side:
    """One server, its session and what its rounds measured."""

    def __init__(self, server: ServerProcess, ctx: StreamContext) -> None:
        self.server = server
        self.ctx = ctx
        self.rates: list[float] = []
        self.cpu_us: list[float] = []

    async def advise(self, tags: list[str]) -> tuple[int, list[int]]:
        session = self.ctx.lib.session
        hlmx: int = await session.register("bench-metrics")
        rows = await session.subscribe_bulk(hlmx, tags)
        return hlmx, [r.item_handle for r in rows if r.was_successful]

    async def unadvise(self, hlmx: int, handles: list[int]) -> None:
        session = self.ctx.lib.session
        await session.unsubscribe_bulk(hlmx, handles)
        await session.unregister(hlmx)

    async def stream(self, seconds: float) -> None:
        cpu0 = self.server.cpu_seconds()
        t0 = time.perf_counter()
        events = await _count_for(self.ctx, seconds)
        wall = time.perf_counter() - t0
        cpu1 = self.server.cpu_seconds()
        self.rates.append(events / wall)
        if cpu0 is not None and cpu1 is not None and events:
            self.cpu_us.append((cpu1 - cpu0) / events * 1e6)


async def _rounds(sides: dict[str, _Side], tags: list[str], size: dict[str, int]) -> None:
    """Each round streams from both servers at once for the same time, so both see the
    same machine load; the ratio of the two rates is one sample."""
    for _ in range(size["rounds"]):
        advised = {name: await side.advise(tags) for name, side in sides.items()}
        try:
            await asyncio.sleep(0.2)  # both scans running before either stream counts
            await asyncio.gather(*(side.stream(size["seconds"]) for side in sides.values()))
        finally:
            for name, side in sides.items():
                await side.unadvise(*advised[name])


async def _measure(report: Report, size: dict[str, int], tags_file: str) -> None:
    extra = ["--event-queue-limit", "2000000", "--event-queue-bytes", str(1 << 30)]
    off = sim_server(
        galaxy_objects=size["galaxy_objects"], scan_ms=1, tags_out=tags_file, extra=extra
    )
    on = sim_server(galaxy_objects=size["galaxy_objects"], scan_ms=1, extra=[*extra, "--metrics"])
    if off is None or on is None:
        report.skip("metrics cost", "mxgateway_sim is not installed")
        return
    async with (
        off,
        on,
        _client.library_session(off.address) as lib_off,
        _client.library_session(on.address) as lib_on,
    ):
        assert lib_off is not None and lib_on is not None
        tags, _ = load_tags(tags_file, size["tags"])
        sides: dict[str, _Side] = {}
        for name, server, lib in (("metrics_off", off, lib_off), ("metrics_on", on, lib_on)):
            ctx = StreamContext(_client.session_channel(lib), _client.session_id(lib), lib)
            sides[name] = _Side(server, ctx)
        endpoint = str(on.info.get("metrics"))
        scrapes: dict[str, Any] = {"scrapes": 0, "scrape_ms": []}
        scraper = asyncio.get_running_loop().create_task(_scraper(endpoint, scrapes))
        try:
            await _rounds(sides, tags, size)
        finally:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
    results: JSON = {
        "advised_tags": len(tags),
        "scan_interval_ms": 1,
        "rounds": size["rounds"],
        "seconds_per_round": size["seconds"],
    }
    for name, side in sides.items():
        results[name] = {
            "events_per_s_median": rnd(median(side.rates), 0),
            "events_per_s_rounds": [rnd(r, 0) for r in side.rates],
            "server_cpu_us_per_event_median": rnd(median(side.cpu_us), 2) if side.cpu_us else None,
            "disconnects": side.ctx.disconnects,
        }
    results["scrapes"] = {
        "count": scrapes["scrapes"],
        "median_ms": rnd(median(scrapes["scrape_ms"]), 2) if scrapes["scrape_ms"] else None,
        "metrics_bytes": scrapes.get("metrics_bytes"),
        "status_page_bytes": scrapes.get("page_bytes"),
    }
    on_rates, off_rates = sides["metrics_on"].rates, sides["metrics_off"].rates
    pairs = [a / b for a, b in zip(on_rates, off_rates, strict=True) if b]
    measured = median(pairs) if pairs else None
    results["events_per_s_pair_ratios"] = [rnd(r, 3) for r in pairs]
    results["events_per_s_ratio_on_off"] = rnd(measured, 3) if measured is not None else None
    results["events_per_s_ratio_of_medians"] = ratio(
        results["metrics_on"]["events_per_s_median"], results["metrics_off"]["events_per_s_median"]
    )
    results["server_cpu_per_event_ratio_on_off"] = ratio(
        results["metrics_on"]["server_cpu_us_per_event_median"],
        results["metrics_off"]["server_cpu_us_per_event_median"],
    )
    report.results.update(results)
    report.target(
        "metrics_events_per_s_ratio",
        f"events/s with --metrics-listen >= {TARGET_RATIO:.0%} of without",
        results["events_per_s_ratio_on_off"],
        None if measured is None else measured >= TARGET_RATIO,
    )


async def _micro(report: Report, quick: bool) -> None:
    """In-process costs: one scrape and one status page with 64 open sessions, and what
    the command timing adds to one Invoke."""
    from mxgateway.generated import mxaccess_gateway_pb2 as pb
    from mxgateway_sim import GatewaySimulator, SessionOptions, builtin_catalog
    from mxgateway_sim._metrics import MetricsExporter
    from mxgateway_sim._stats import GatewayStats, timed_invoke
    from mxgateway_sim._statuspage import render_status_page

    sessions = 64
    options = SessionOptions(max_sessions=sessions, max_sessions_per_key=sessions)
    async with GatewaySimulator(catalog=builtin_catalog(), session_options=options) as sim:
        assert sim.sessions is not None
        for i in range(sessions):
            session = await sim.sessions.open(f"client {i}", "bench")
            sh = await session.runtime.register("bench")
            for tag in ("Tank01.Level", "Pump01.Speed", "Line01.State"):
                ih = await session.runtime.add_item(sh, tag, "")
                await session.runtime.advise(sh, ih, supervisory=False)
        await asyncio.sleep(0.5)  # some events in the rings
        exporter = MetricsExporter(sim.status)
        n = 20 if quick else 200
        t0 = time.process_time()
        for _ in range(n):
            body, _ = exporter.render("")
        scrape_ms = (time.process_time() - t0) / n * 1000
        t0 = time.process_time()
        for _ in range(n):
            page = render_status_page(sim.status())
        page_ms = (time.process_time() - t0) / n * 1000

    request = pb.MxCommandRequest(command=pb.MxCommand(kind=pb.MX_COMMAND_KIND_PING))
    reply = pb.MxCommandReply(protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_OK))

    async def invoke(req: Any, ctx: Any) -> Any:
        return reply

    timed = timed_invoke(invoke, GatewayStats())
    calls = 20_000 if quick else 200_000
    costs = {}
    for name, fn in (("plain", invoke), ("timed", timed)):
        t0 = time.process_time()
        for _ in range(calls):
            await fn(request, None)
        costs[name] = (time.process_time() - t0) / calls * 1e6
    report.results["in_process"] = {
        "open_sessions": sessions,
        "scrape_cpu_ms": rnd(scrape_ms, 2),
        "scrape_bytes": len(body),
        "status_page_cpu_ms": rnd(page_ms, 2),
        "status_page_bytes": len(page),
        "command_timing_us_per_invoke": rnd(costs["timed"] - costs["plain"], 2),
    }


def run(quick: bool = False) -> JSON:
    """The benchmark's JSON document."""
    report = Report("metrics", quick)
    why = _client.missing_reason()
    if why:
        report.skip("metrics cost", why)
        return report.to_json()
    size = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        asyncio.run(_measure(report, size, os.path.join(tmp, "tags.txt")))
    asyncio.run(_micro(report, quick))
    report.notes.append(
        "Both servers stream at once in each round; the target is the median of the "
        "rounds' on/off ratios. The machine is shared: the spread of the ratios is the "
        "noise to read the median against."
    )
    return report.to_json()
