"""Where time is lost: cProfile of the client side of the slowest paths.

Profiles, against the replay server (so only client code runs in this process):

* ``bare_stream_events``: one event per message, the slowest way to receive events,
* ``typed_events``: the library's typed ``Session.events()`` (when it has landed),
* ``bare_write_bulk_10000`` / ``library_write_bulk_10000``: building and sending a
  10,000-entry WRITE_BULK with the bare stub and with ``Session.write_bulk``,
* ``simulator_read_bulk_10000`` / ``simulator_write_bulk_10000``: the simulator serving
  10,000-tag bulk calls (in this process, so its side can be profiled): the slowest path
  measured (the bulk targets are missed because of it).

Each profile is summarised as the top functions by own time (tottime) and by cumulative
time, with the share of the profiled total.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import _client
from bench._common import API_KEY, Report, aio_channel, load_tags, replay_server, rnd
from bench._events import SESSION_ID
from bench.bulk import BareGateway
from bench.events import StreamContext, bare_stream_events
from bench.sim_server import select_tags

TOP = 12


def summarize(prof: cProfile.Profile, events: int) -> dict[str, Any]:
    """Top functions by tottime and cumtime, in µs per event and % of the total."""
    stats = pstats.Stats(prof)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1e-9

    def name(key: tuple[str, int, str]) -> str:
        filename, line, func = key
        short = filename
        for marker in ("site-packages/", "/work/main/", "/lib/python3"):
            if marker in filename:
                short = filename.split(marker, 1)[1]
                break
        return f"{short}:{line}({func})"

    def rows(index: int) -> list[dict[str, Any]]:
        ordered = sorted(raw.items(), key=lambda kv: kv[1][index], reverse=True)[:TOP]
        return [
            {
                "function": name(k),
                "calls": v[1],
                "tottime_us_per_event": rnd(v[2] / events * 1e6, 3),
                "cumtime_us_per_event": rnd(v[3] / events * 1e6, 3),
                "tottime_pct": rnd(100 * v[2] / total, 1),
            }
            for k, v in ordered
        ]

    return {
        "events": events,
        "profiled_total_us_per_event": rnd(total / events * 1e6, 3),
        "top_by_tottime": rows(2),
        "top_by_cumtime": rows(3),
    }


async def profile_call(fn: Callable[[], Awaitable[int]]) -> dict[str, Any]:
    """Profile one awaitable (the loop's own work is included: it runs in this thread)."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        n = await fn()
    finally:
        prof.disable()
    return summarize(prof, max(1, n))


async def profile_replay(report: Report, quick: bool) -> None:
    """Client-side profiles against the replay server."""
    single_n = 300 if quick else 5_000
    batch_n = 2_000 if quick else 100_000
    n = 100 if quick else 10_000
    handles = list(range(1, n + 1))
    values: list[object] = [i * 0.25 for i in range(n)]
    async with replay_server(batch_n, 500) as server:
        async with aio_channel(server.address) as channel:
            ctx = StreamContext(channel, SESSION_ID)
            await bare_stream_events(ctx, min(200, single_n))  # warm-up
            report.results["bare_stream_events"] = await profile_call(
                lambda: bare_stream_events(ctx, single_n)
            )
            bare = BareGateway(channel, SESSION_ID)
            await bare.open()
            await bare.write_bulk(handles, values)

            async def write_bulk() -> int:
                for _ in range(3):
                    await bare.write_bulk(handles, values)
                return 3 * n

            report.results["bare_write_bulk_10000"] = await profile_call(write_bulk)
        modes, why = _client.event_modes()
        typed = modes.get("typed_events")
        async with _client.library_session(server.address) as lib:
            if typed is None or lib is None:
                report.skip("library profiles", why or "typed events not available")
                return
            ctx = StreamContext(_client.session_channel(lib), SESSION_ID, lib)
            await typed(ctx, min(2_000, batch_n))
            report.results["typed_events"] = await profile_call(lambda: typed(ctx, batch_n))
            session = lib.session
            pairs = list(zip(handles, values, strict=True))
            await session.write_bulk(1, pairs)

            async def lib_write_bulk() -> int:
                for _ in range(3):
                    await session.write_bulk(1, pairs)
                return 3 * n

            report.results["library_write_bulk_10000"] = await profile_call(lib_write_bulk)


async def profile_simulator(report: Report, quick: bool) -> None:
    """The slowest measured path: READ_BULK / WRITE_BULK of 10,000 tags in the simulator.

    The simulator runs in this process (the only way to profile its side), so each
    profile holds client and server; the simulator's own functions dominate.
    """
    try:
        from mxgateway_sim import GatewaySimulator
    except ImportError:
        report.skip("simulator bulk profile", "mxgateway_sim has not landed yet")
        return
    n = 100 if quick else 10_000
    objects = 300 if quick else 2_600
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        sim = GatewaySimulator(
            api_keys=[API_KEY],
            galaxy_objects=objects,
            galaxy_db=Path(tmp) / "galaxy.db",
            flaky_one_in=0,
            galaxy_poll_interval=3600.0,
        )
        async with sim:
            assert sim.plant is not None
            lines = select_tags(sim.plant.catalog)[:n]
            tags_file = Path(tmp) / "tags.txt"
            tags_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
            tags, values = load_tags(str(tags_file), n)
            async with aio_channel(sim.endpoint) as channel:
                bare = BareGateway(channel)
                await bare.open()
                try:
                    handles = await bare.subscribe(tags)
                    await bare.read_bulk(tags)
                    await bare.write_bulk(handles, values)

                    async def read() -> int:
                        for _ in range(2):
                            await bare.read_bulk(tags)
                        return 2 * n

                    async def write() -> int:
                        for _ in range(2):
                            await bare.write_bulk(handles, values)
                        return 2 * n

                    report.results["simulator_read_bulk_10000"] = await profile_call(read)
                    report.results["simulator_write_bulk_10000"] = await profile_call(write)
                finally:
                    await bare.close()


async def run_async(quick: bool) -> dict[str, Any]:
    """Every profile; returns the JSON document (per-event figures are per tag for bulk)."""
    report = Report("profile", quick)
    await profile_replay(report, quick)
    await profile_simulator(report, quick)
    report.notes.append(
        "cProfile inflates pure-Python frames (roughly 2x); read the shares, not the "
        "absolute µs. Time inside gRPC's Cython/C core shows up as the Python frame that "
        "awaited it. For bulk profiles 'per event' means per tag."
    )
    return report.to_json()


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench profile``."""
    return asyncio.run(run_async(quick))
