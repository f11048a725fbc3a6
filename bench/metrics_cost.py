"""What ``--metrics-listen`` costs the event path (issue 17: events/s within 5 %).

``python -m bench metrics [--quick] [--out FILE]`` starts two simulators in subprocesses
(``bench/sim_server.py``, 1 ms scan), one without metrics and one with ``--metrics-listen``,
and in each opens one session advising the same tags (as many as a batch stream can carry:
the server is the bottleneck). Rounds alternate between the two servers (off, on, off, on
...), each streaming ``StreamEventBatches`` with the generated stub until it has counted its
events; meanwhile the metrics server is scraped every second (``/metrics``) and its status
page fetched every 5 s, far more often than Prometheus would. Reported per side: the median
events/s and the server's CPU per delivered event; the target is the ratio of the medians.
The per-event path is the same in both (delivered events are counted once per batch in
either case); what metrics add is the timing of each command and the scrapes themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from typing import Any

from bench import _client
from bench._common import (
    JSON,
    Report,
    ServerProcess,
    load_tags,
    median,
    ratio,
    rnd,
    sim_server,
)
from bench.events import StreamContext, bare_stream_event_batches, measure

FULL = {"galaxy_objects": 1_500, "tags": 2_000, "events": 100_000, "rounds": 5}
QUICK = {"galaxy_objects": 300, "tags": 200, "events": 3_000, "rounds": 1}
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


async def _round(server: ServerProcess, ctx: StreamContext, n: int) -> dict[str, float]:
    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    result = await measure(bare_stream_event_batches, ctx, n)
    cpu1 = server.cpu_seconds()
    if cpu0 is not None and cpu1 is not None and result["events"]:
        result["server_cpu_us_per_event"] = (cpu1 - cpu0) / result["events"] * 1e6
        result["server_cpu_share"] = (cpu1 - cpu0) / (time.perf_counter() - t0)
    return result


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
        sides: dict[str, tuple[ServerProcess, StreamContext]] = {}
        for name, server, lib in (("metrics_off", off, lib_off), ("metrics_on", on, lib_on)):
            hlmx = await lib.session.register("bench-metrics")
            rows = await lib.session.subscribe_bulk(hlmx, tags)
            assert all(r.was_successful for r in rows)
            ctx = StreamContext(_client.session_channel(lib), _client.session_id(lib), lib)
            sides[name] = (server, ctx)
        endpoint = str(on.info.get("metrics"))
        scrapes: dict[str, Any] = {"scrapes": 0, "scrape_ms": []}
        scraper = asyncio.get_running_loop().create_task(_scraper(endpoint, scrapes))
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        try:
            for _ in range(size["rounds"]):
                for name, (server, ctx) in sides.items():
                    rounds[name].append(await _round(server, ctx, size["events"]))
        finally:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
    results: JSON = {"advised_tags": len(tags), "scan_interval_ms": 1, "events_per_round": size}
    for name, runs in rounds.items():
        results[name] = {
            "events_per_s_median": rnd(median([r["events_per_s"] for r in runs]), 0),
            "events_per_s_rounds": [rnd(r["events_per_s"], 0) for r in runs],
            "server_cpu_us_per_event_median": rnd(
                median([r.get("server_cpu_us_per_event", float("nan")) for r in runs]), 2
            ),
            "disconnects": sum(int(r["disconnects"]) for r in runs),
        }
    results["scrapes"] = {
        "count": scrapes["scrapes"],
        "median_ms": rnd(median(scrapes["scrape_ms"]), 2) if scrapes["scrape_ms"] else None,
        "metrics_bytes": scrapes.get("metrics_bytes"),
        "status_page_bytes": scrapes.get("page_bytes"),
    }
    on_rate = results["metrics_on"]["events_per_s_median"]
    off_rate = results["metrics_off"]["events_per_s_median"]
    measured = ratio(on_rate, off_rate)
    results["events_per_s_ratio_on_off"] = rnd(measured, 3) if measured is not None else None
    report.results.update(results)
    report.target(
        "metrics_events_per_s_ratio",
        f"events/s with --metrics-listen >= {TARGET_RATIO:.0%} of without",
        results["events_per_s_ratio_on_off"],
        None if measured is None else measured >= TARGET_RATIO,
    )


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
    report.notes.append(
        "Rounds alternate between the two servers; both run on the same (shared) machine, so "
        "the rounds' spread is the noise to compare the ratio with."
    )
    return report.to_json()
