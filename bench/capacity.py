"""Simulator capacity: sessions x advised items x change rate with no sequence gap.

For each step of a ladder (sessions, items per session, change rate), start ``mxgw-sim
serve`` in a subprocess, open the sessions, advise the items, subscribe one
``StreamEventBatches`` per session and count, for a fixed window, delivered events, gaps in
``worker_sequence`` and stream notices (``EVENT_QUEUE_OVERFLOW``). The ladder goes up until
a step drops; that step is reported as where it starts to drop, not hidden.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench import _client
from bench._common import Report


async def run_async(quick: bool) -> dict[str, Any]:
    """Run the ladder; returns the JSON document."""
    report = Report("capacity", quick)
    ok, why = await _client.sim_event_source_available()
    if not ok:
        report.skip("simulator capacity ladder", why)
        return report.to_json()
    report.results = await _client.capacity_ladder(quick)
    return report.to_json()


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench capacity``."""
    return asyncio.run(run_async(quick))
