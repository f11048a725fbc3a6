"""The scan clock says when the plant cannot keep its scan (issue 15 §2).

A plant that falls behind starts the next tick at once instead of bursting to catch up, so
values change less often than the scan says; ``Plant.late_scans`` / ``skipped_scans`` count
that and a rate-limited warning tells the operator, instead of falling behind silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from simhelpers import wait_for

from mxgateway_sim import builtin_catalog
from mxgateway_sim._plant import Plant


async def test_a_plant_that_cannot_keep_its_scan_counts_it_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plant = Plant(builtin_catalog(), scan_interval_ms=1, flaky_one_in=0)
    real_tick = plant._tick

    def slow_tick(now: float) -> Iterator[None]:
        time.sleep(0.02)  # each tick holds the loop for 20 scans of 1 ms
        yield from real_tick(now)

    plant._tick = slow_tick  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="mxgateway_sim.plant")
    plant.start()
    try:
        await wait_for(lambda: plant.scans >= 6)
    finally:
        await plant.stop()
    stats = plant.scan_stats()
    assert stats["scans"] >= 6
    # Every tick after the first starts at least 19 ms (19 scans) late.
    assert stats["late_scans"] >= stats["scans"] - 2
    assert stats["skipped_scans"] >= 10 * stats["late_scans"]
    assert stats["max_behind_ms"] >= 10
    lines = [r.getMessage() for r in caplog.records if "cannot keep its" in r.getMessage()]
    assert len(lines) == 1, lines  # rate-limited: one line per LATE_SCAN_LOG_INTERVAL_S
    assert "cannot keep its 1 ms scan" in lines[0]


def test_scan_stats_start_at_zero() -> None:
    plant = Plant(builtin_catalog(), scan_interval_ms=200)
    assert plant.scan_stats() == {
        "scan_interval_ms": 200.0,
        "scans": 0,
        "late_scans": 0,
        "skipped_scans": 0,
        "max_behind_ms": 0.0,
        "advised_attributes": 0,
    }


async def test_the_scan_counters_are_in_the_status_and_the_metrics() -> None:
    from mxgateway_sim import GatewaySimulator
    from mxgateway_sim._metrics import MetricsExporter
    from mxgateway_sim._opstatus import snapshot

    async with GatewaySimulator(catalog=builtin_catalog(), scan_interval_ms=5) as sim:
        assert sim.plant is not None
        plant = sim.plant
        await wait_for(lambda: plant.scans >= 3)
        plant._late(0.05, 0.0)  # as the scan clock counts a tick that starts 50 ms late
        status = snapshot(sim)
        assert status.scan["late_scans"] >= 1 and status.scan["skipped_scans"] >= 10
        text = MetricsExporter(lambda: snapshot(sim)).render("text/plain")[0].decode()
        late = [line for line in text.splitlines() if line.startswith("mxgw_plant_late_scans")]
        assert late and float(late[-1].split()[-1]) >= 1
        assert "mxgw_plant_skipped_scans_total" in text
        assert "mxgw_plant_max_behind_seconds" in text
