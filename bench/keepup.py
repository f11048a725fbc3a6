"""The simulator keeping up on each event loop: asyncio's own and uvloop, in one run.

uvloop's clock counts whole milliseconds, and the plant's default scan for this check is
1 ms, so whether the plant still keeps its scan on uvloop is a question of its own
(``mxgw-sim serve --event-loop``, docs/simulator.md). Each round starts a simulator
(``bench/sim_server.py``, 1 ms scan) on one loop, subscribes one raw batch stream to 2,000
tags for ``keepup_s`` and reads the changes/s, the lag of the last change at the end and
the plant's scan counters (the same measurement as ``python -m bench opcua``'s keep-up
row: :func:`bench.opcua.keep_up`); the loops alternate between rounds, so a change in the
machine's load falls on both. Goal per round: >= 150,000 changes/s and a lag under 1 s.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import tempfile
from typing import Any

from bench import _client
from bench._common import Report, begin, cannot_run, load, load_tags, rnd
from bench.opcua import add_keep_up_target, keep_up, keep_up_server, scan_stats

FULL = {"rounds": 2, "keepup_s": 20.0, "objects": 2_600, "tags": 2_000}
QUICK = {"rounds": 1, "keepup_s": 1.0, "objects": 300, "tags": 2_000}


async def one_round(event_loop: str, p: dict[str, Any], tmp: str) -> dict[str, Any]:
    """Start a simulator on ``event_loop`` and measure one keep-up window against it."""
    tags_file = os.path.join(tmp, f"tags-{event_loop}.txt")
    stats_file = os.path.join(tmp, f"stats-{event_loop}.json")
    sim = keep_up_server(int(p["objects"]), tags_file, stats_file, event_loop)
    assert sim is not None
    async with sim, _client.library_session(sim.address) as lib:
        assert lib is not None
        tags, _ = load_tags(tags_file, int(p["tags"]))
        before = await scan_stats(sim, stats_file)
        keep = await keep_up(lib, tags, float(p["keepup_s"]), sim)
        after = await scan_stats(sim, stats_file)
    for key in ("scans", "late_scans", "skipped_scans"):
        keep[key] = after.get(key, 0) - before.get(key, 0)
    keep["max_behind_ms"] = after.get("max_behind_ms")
    keep["event_loop"] = event_loop
    return keep


async def run_async(quick: bool) -> dict[str, Any]:
    """Alternate the loops over the rounds; one keep-up target per round."""
    report, p = begin("keepup", quick, QUICK, FULL)
    if cannot_run(report, simulator=True):
        return report.to_json()
    loops = ["asyncio"]
    if importlib.util.find_spec("uvloop") is not None:
        loops.append("uvloop")
    else:
        report.skip("uvloop", "uvloop is not installed")
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        for i in range(int(p["rounds"])):
            order = loops if i % 2 == 0 else loops[::-1]
            for event_loop in order:
                keep = await one_round(event_loop, p, tmp)
                keep["round"] = i
                rounds.append(keep)
                sub = Report("keepup", quick)
                add_keep_up_target(sub, keep)
                for target in sub.targets:
                    target["name"] = f"{target['name']} ({event_loop}, round {i + 1})"
                    report.targets.append(target)
    report.results["rounds"] = rounds
    for event_loop in loops:
        mine = [r for r in rounds if r["event_loop"] == event_loop]
        rates = [r["changes_per_s"] for r in mine if r.get("changes_per_s") is not None]
        report.results[f"{event_loop}_min_changes_per_s"] = rnd(min(rates), 0) if rates else None
    report.results["load_after"] = load()
    return report.to_json()


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench keepup``."""
    return asyncio.run(run_async(quick))
