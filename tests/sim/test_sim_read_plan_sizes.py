"""A remembered ReadBulk whose chunk holds a single row is planned and answered as any; a
chunk of a few rows is read row by row; a plan whose rows miscount fails the read."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_sim_bulk_fast_paths import _fast_and_plain, _library_sessions, _model_catalog, _runtime_of

from mxgateway import MxGatewayInternalError, Session
from mxgateway_sim import GatewaySimulator, Plant
from mxgateway_sim import _simruntime as simruntime
from mxgateway_sim._readplan import _Group
from mxgateway_sim._readrows import MEMO_CHUNK_ROWS

SCALARS = [f"Obj{i:03d}.{n}" for i in range(120) for n in ("Level", "Count", "Flag")]
"""360 scalar attributes only their models drive (so a remembered read of them is planned)."""


@contextlib.asynccontextmanager
async def _reader() -> AsyncIterator[tuple[GatewaySimulator, Plant, Session, int]]:
    """A simulator whose scan never ticks on its own (the test steps the plant), and a
    session of the library with a registration: (simulator, plant, session, hLMX)."""
    async with GatewaySimulator(
        catalog=_model_catalog(120), scan_interval_ms=3_600_000, flaky_one_in=0
    ) as sim:
        plant = sim.plant
        assert plant is not None
        async with _library_sessions(sim, "reader") as (session,):
            yield sim, plant, session, await session.register("reader")


async def test_a_chunk_of_one_row_is_planned_and_answered_as_the_plain_path(
    monkeypatch: pytest.MonkeyPatch, numpy_path: bool
) -> None:
    # A plan puts a chunk's rows in order with one call; a chunk of one row (a poller of
    # one tag, or the last row of a list one longer than whole chunks) takes its own way
    # there, and must answer the row, in a list, as the plain path does. (The simulator
    # plans no chunk of fewer than PLAN_MIN_ROWS rows: lowered here so the plan's own
    # handling of one row stays tested.)
    monkeypatch.setattr(simruntime, "PLAN_MIN_ROWS", 1)
    async with _reader() as (sim, plant, session, hlmx):
        runtime = _runtime_of(sim, session)
        cache = runtime._read_rows
        assert cache is not None
        for refs in (SCALARS[:1], (SCALARS * 3)[: MEMO_CHUNK_ROWS + 1]):
            states = {r: plant.state(r) for r in refs}
            for steps in (0, 0, 1, 0, 30):  # remembered, planned, kept, computed anew
                for _ in range(steps):
                    plant.step()
                await _fast_and_plain(session, runtime, hlmx, refs, states)
            plans = [plan for _, plan in cache.plans.values()]
            assert plans and all(plan is not None for plan in plans)
            assert len(plans[-1].order) == 1  # type: ignore[union-attr]


async def test_a_chunk_of_a_few_rows_is_read_row_by_row_and_answered_as_the_plain_path() -> None:
    # A poller of one tag (or a few) repeats its ReadBulk: a plan's bookkeeping would cost
    # it more than it saves, so chunks of fewer than PLAN_MIN_ROWS rows have none; one of
    # PLAN_MIN_ROWS rows has one. Both answer as the plain path does.
    few = simruntime.PLAN_MIN_ROWS - 1
    async with _reader() as (sim, plant, session, hlmx):
        runtime = _runtime_of(sim, session)
        cache = runtime._read_rows
        assert cache is not None
        for refs, planned in (
            (SCALARS[:1], False),
            (SCALARS[:few], False),
            (SCALARS[: few + 1], True),
        ):
            cache.plans.clear()
            states = {r: plant.state(r) for r in refs}
            for steps in (0, 0, 1, 0, 30):  # remembered, (planned), kept, computed anew
                for _ in range(steps):
                    plant.step()
                await _fast_and_plain(session, runtime, hlmx, refs, states)
            plans = [plan for _, plan in cache.plans.values()]
            assert bool(plans) is planned, (len(refs), plans)


async def test_a_plan_whose_rows_miscount_fails_the_read_instead_of_misplacing_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A plan puts its groups' rows in order by position in one run: a group that answered
    # one row too many would shift every row after it under another tag's name (one too
    # few fails anyway: the last position is past the run). The read fails (INTERNAL, an
    # incident id) instead of answering wrong rows.
    async with _reader() as (_, plant, session, hlmx):
        first = await session.read_bulk(hlmx, SCALARS)  # remembered
        again = await session.read_bulk(hlmx, SCALARS)  # planned
        assert [r.tag_address for r in again] == [r.tag_address for r in first]
        answer = _Group.answer

        def one_more(self: _Group, *args: Any) -> list[bytes]:
            rows = answer(self, *args)
            return [rows[0], *rows]

        monkeypatch.setattr(_Group, "answer", one_more)
        plant.step()
        with pytest.raises(MxGatewayInternalError):
            await session.read_bulk(hlmx, SCALARS)


async def test_a_generator_s_groups_across_chunks_are_computed_together_as_the_plain_path(
    numpy_path: bool,
) -> None:
    # The numpy path computes the values of one generator's groups of every chunk of a
    # remembered call by one array call a read (_readvec.SharedValues), each chunk's group
    # taking its slice: the rows must be those of the row-by-row path, byte for byte, on
    # every chunk (a slice one row off puts a neighbour's value in a row).
    refs = [f"Obj{i:03d}.{n}" for i in range(900) for n in ("Level", "Count", "Flag", "Gauge")]
    async with GatewaySimulator(
        catalog=_model_catalog(900), scan_interval_ms=3_600_000, flaky_one_in=0
    ) as sim:
        plant = sim.plant
        assert plant is not None
        async with _library_sessions(sim, "reader") as (session,):
            hlmx = await session.register("reader")
            runtime = _runtime_of(sim, session)
            cache = runtime._read_rows
            assert cache is not None
            states = {r: plant.state(r) for r in refs}
            for steps in (0, 0, 1, 0, 30, 7):  # remembered, planned, kept, computed anew
                for _ in range(steps):
                    plant.step()
                await _fast_and_plain(session, runtime, hlmx, refs, states)
            plans = [plan for _, plan in cache.plans.values()]
            assert len(plans) == -(-len(refs) // MEMO_CHUNK_ROWS) >= 3
            call = cache.calls[cache.memo_key]
            chunks = [len(shared.params) for shared in call.shared.values()]
            if numpy_path:  # most generators show up in every chunk
                assert chunks and max(chunks) == len(plans), chunks
            else:
                assert chunks == []
