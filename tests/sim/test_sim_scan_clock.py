"""The scan clock says when the plant cannot keep its scan (issue 15 §2).

A plant that falls behind starts the next tick at once instead of bursting to catch up, so
values change less often than the scan says; ``Plant.late_scans`` / ``skipped_scans`` count
that and a rate-limited warning tells the operator, instead of falling behind silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest
from simhelpers import wait_for

from mxgateway_sim import builtin_catalog
from mxgateway_sim._domain import TagSample
from mxgateway_sim._plant import Plant


async def test_a_plant_that_cannot_keep_its_scan_counts_it_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plant = Plant(builtin_catalog(), scan_interval_ms=1, flaky_one_in=0)
    _advise_one(plant)  # else the idle clock parks: no tick, nothing late
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


class _Sink:
    """An advised item's stand-in: counts what the ticks deliver."""

    def __init__(self) -> None:
        self.samples: list[TagSample] = []

    def deliver(self, sample: TagSample) -> None:
        self.samples.append(sample)


def _advise_one(plant: Plant, reference: str = "Tank01.Level") -> _Sink:
    state = plant.state(reference)
    assert state is not None
    sink = _Sink()
    plant.subscribe(state, sink)
    return sink


async def test_an_idle_clock_parks_and_an_advise_wakes_it() -> None:
    """A 1 ms scan with nothing advised stops waking the loop (each wake-up costs about
    what a tick does) and runs no tick, yet its tick number goes on with the clock as the
    scans would have counted it: a read computes the values of the tick it is in. An
    advise wakes it, and its ticks go on from that number; a redeploy while parked is
    taken when a read looks."""
    catalog = builtin_catalog()
    plant = Plant(catalog, scan_interval_ms=1, flaky_one_in=0)
    real_tick = plant._tick
    ticks: list[int] = []

    def counted_tick(now: float) -> Iterator[None]:
        ticks.append(plant.tick + 1)
        yield from real_tick(now)

    plant._tick = counted_tick  # type: ignore[method-assign]
    plant.start()
    try:
        await wait_for(lambda: plant._parked_at is not None)
        ran, start = len(ticks), plant.tick
        await asyncio.sleep(0.15)
        assert len(ticks) == ran  # parked: no tick ran
        assert plant.tick >= start + 100  # ~150 scans of 1 ms went by all the same
        assert plant.scans >= plant.tick - 1
        state = plant.state("Tank01.Level")
        assert state is not None and state.period == 1
        before = plant.tick
        sample = plant.current(state)
        # The tick the read was in (bracketed: the clock goes on while the test looks).
        assert before <= state.computed_at <= plant.tick
        assert sample.value == state.gen(state.computed_at)
        sink = _advise_one(plant)
        await wait_for(lambda: len(sink.samples) >= 3)
        assert plant._parked_at is None
        assert ticks[ran] >= start + 100  # the ticks go on from the parked count
        assert ticks[ran:] == list(range(ticks[ran], ticks[ran] + len(ticks) - ran))
        plant.unsubscribe(plant.state("Tank01.Level"), sink)  # type: ignore[arg-type]
        await wait_for(lambda: plant._parked_at is not None)
        version = plant.resolve_epoch()
        kept = [t for t in catalog.all_tags() if t.tag_name != "Tank01"]
        catalog.__init__(kept, catalog.version + 1)  # type: ignore[misc]  # a redeploy
        parked = len(ticks)
        assert plant.resolve_epoch() == (catalog.version, catalog.version) != version  # taken
        assert plant.state("Tank01.Level") is None
        assert len(ticks) == parked and plant._parked_at is not None
    finally:
        await plant.stop()


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
