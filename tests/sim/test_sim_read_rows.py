"""ReadBulk from the session's row cache answers exactly what the uncached path answers.

The simulated runtime encodes ReadBulk rows itself and keeps them per session
(``mxgateway_sim._readrows``); ``--read-cache-bytes 0`` (here: the session's cache switched
off) takes the generic path, ``SimulatedRuntime.read`` + ``read_reply_bytes``. Both are read
through the public client on real gRPC, on one plant frozen between ticks, and their rows
compared byte for byte: advised rows, rows another session keeps current, array elements,
unknown objects and attributes, malformed references, repeats; after a tick, an unadvise,
a redeploy and with the cache too small to hold the rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from mxgateway import GatewayClient, Session
from mxgateway_sim import GatewaySimulator, InMemoryCatalog, SessionOptions, builtin_catalog
from mxgateway_sim._simruntime import SimulatedRuntime

KEPT = ["Tank01.Level", "Pump01.Running", "Pump01.StartCount", "Line01.State"]
"""Advised in the session that reads them (answered from the advise: ``was_cached``)."""
OTHER = ["Pump01.Speed", "Tank01.Temperature", "Line01.Counter", "Tank01.LevelHistory[3]"]
"""Advised in another session only: this session reads the plant's current value."""
FRESH = [
    "Tank01.LevelSetpoint",
    "Tank01.Description",
    "Pump01.Mode",
    "Tank01.ProductCodes[]",
    "Line01.Setpoints[2]",
    "Pump01.LastStart",
    "Pump01.RunTime",
    "Line01.Recipe",
]
"""Advised nowhere: computed when read (their timestamps are the read's time)."""
FAILING = [
    "Nope01.Level",  # unknown object
    "Tank01.Nope",  # unknown attribute of a known object
    "Tank01.LevelHistory",  # an array without [] or [N]
    "Tank01.Level[2]",  # an index on a scalar
    "Line01.Setpoints[9]",  # out of range
    "bad ref",  # malformed
    "Me.Level",  # relative without a context
    "",
]
ALL = [*KEPT, *OTHER, *FRESH, *FAILING, *KEPT[:2], *OTHER[:1], *FRESH[:1], *FAILING[:2]]


class Catalog(InMemoryCatalog):
    """The builtin plant, redeployable (a test double: the version is what a redeploy
    changes)."""

    def redeploy(self, *drop: str) -> None:
        self._tags = [t for t in self._tags if t.full_tag_reference not in drop]
        self._by_ref = {t.full_tag_reference.lower(): t for t in self._tags}
        self._version += 1


@pytest.fixture
async def catalog() -> Catalog:
    return Catalog(builtin_catalog().all_tags())


async def _open(sim: GatewaySimulator) -> AsyncIterator[tuple[GatewayClient, Session]]:
    async with (
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
        await client.open_session(client_session_name="rows") as session,
    ):
        yield client, session


def _runtime(sim: GatewaySimulator, session: Session) -> SimulatedRuntime:
    found = sim.sessions.get(session.session_id)
    assert found is not None
    runtime = found.runtime
    assert isinstance(runtime, SimulatedRuntime)
    return runtime


def _fresh_row(row: Any, shared: Sequence[str]) -> bool:
    """A row computed at the read (nobody advises it): its timestamp is the read's time.
    ``shared``: references another session advises (the plant keeps their sample)."""
    return row.was_successful and not row.was_cached and row.tag_address not in shared


async def _compare(
    sim: GatewaySimulator, session: Session, hlmx: int, tags: list[str], shared: Sequence[str] = ()
) -> None:
    """Read ``tags`` with the cache (twice: building, then reusing) and without it."""
    runtime = _runtime(sim, session)
    cache = runtime._read_rows
    assert cache is not None
    first = await session.read_bulk(hlmx, tags)
    again = await session.read_bulk(hlmx, tags)
    runtime._read_rows = None  # the generic path
    try:
        plain = await session.read_bulk(hlmx, tags)
    finally:
        runtime._read_rows = cache
    assert [r.tag_address for r in plain] == tags
    for a, b, c in zip(first, again, plain, strict=True):
        if _fresh_row(c, shared):
            # Computed at each read: the same value, the read's own time.
            for row in (a, b, c):
                row.ClearField("timestamp")
        assert a.SerializeToString() == c.SerializeToString(), (a, c)
        assert b.SerializeToString() == c.SerializeToString(), (b, c)


async def test_cached_rows_are_the_uncached_rows(catalog: Catalog) -> None:
    async with GatewaySimulator(catalog=catalog, scan_interval_ms=3_600_000, flaky_one_in=0) as sim:
        async for _, other in _open(sim):
            other_h = await other.register("other")
            await other.subscribe_bulk(other_h, [*OTHER, *KEPT[:1]])
            async for _, session in _open(sim):
                hlmx = await session.register("rows")
                rows = await session.subscribe_bulk(hlmx, KEPT)
                assert all(r.was_successful for r in rows)
                plant = sim.plant
                assert plant is not None
                await _compare(sim, session, hlmx, ALL, OTHER)
                read = await session.read_bulk(hlmx, ALL)
                assert [r.was_cached for r in read[: len(KEPT)]] == [True] * len(KEPT)
                assert not any(r.was_cached for r in read[len(KEPT) : len(KEPT) + 8])
                assert [r.was_successful for r in read[-len(FAILING[:2]) :]] == [False, False]
                # The rows one read computes carry one time (as one scan tick's do).
                fresh = {r.timestamp.SerializeToString() for r in read if r.tag_address in FRESH}
                assert len(fresh) == 1

                # Advised here after being read: the same sample, now was_cached.
                await session.subscribe_bulk(hlmx, [OTHER[0]])
                await _compare(sim, session, hlmx, ALL, OTHER)
                read = await session.read_bulk(hlmx, [OTHER[0]])
                assert read[0].was_cached

                plant.step()  # new samples for the advised tags
                await _compare(sim, session, hlmx, ALL, OTHER)

                # Unadvised: the same references now read the plant's value, not cached.
                await session.unsubscribe_bulk(hlmx, [r.item_handle for r in rows[:2]])
                await _compare(sim, session, hlmx, ALL, OTHER)
                read = await session.read_bulk(hlmx, KEPT[:2])
                assert [r.was_cached for r in read] == [False, False]

                # Redeployed without Line01.Recipe (read before: its row fails now) and
                # Line01.State (advised: its item's last value goes Bad, and once
                # unadvised the reference fails like any unknown one).
                catalog.redeploy("Line01.Recipe", KEPT[3])
                await _compare(sim, session, hlmx, ALL, OTHER)
                plant.step()
                await _compare(sim, session, hlmx, ALL, OTHER)
                read = await session.read_bulk(hlmx, ["Line01.Recipe", KEPT[3]])
                assert [r.was_successful for r in read] == [False, False]
                assert [r.was_cached for r in read] == [False, True]
                await session.unsubscribe_bulk(hlmx, [rows[3].item_handle])
                await _compare(sim, session, hlmx, ALL, OTHER)
                read = await session.read_bulk(hlmx, [KEPT[3]])
                assert (read[0].was_successful, read[0].was_cached) == (False, False)


async def test_a_cache_too_small_for_the_rows_still_answers_them(catalog: Catalog) -> None:
    options = SessionOptions(read_cache_bytes=2_000)  # about three rows
    async with GatewaySimulator(
        catalog=catalog, scan_interval_ms=3_600_000, flaky_one_in=0, session_options=options
    ) as sim:
        async for _, session in _open(sim):
            hlmx = await session.register("rows")
            await session.subscribe_bulk(hlmx, KEPT)
            await _compare(sim, session, hlmx, ALL)
            cache = _runtime(sim, session)._read_rows
            assert cache is not None
            assert 0 < cache.bytes <= 2_000 and len(cache) < len(set(ALL))


async def test_flaky_qualities_and_statuses_encode_alike() -> None:
    """A plant where some attributes go Bad or Uncertain (rows with failed statuses)."""
    async with GatewaySimulator(
        catalog=builtin_catalog(), scan_interval_ms=3_600_000, flaky_one_in=1
    ) as sim:
        plant = sim.plant
        assert plant is not None
        async for _, session in _open(sim):
            hlmx = await session.register("rows")
            await session.subscribe_bulk(hlmx, KEPT + OTHER)
            seen: set[bool] = set()
            for _ in range(12):  # walk the flaky windows
                for _ in range(25):
                    plant.step()
                await _compare(sim, session, hlmx, KEPT + OTHER)
                seen.update(r.was_successful for r in await session.read_bulk(hlmx, KEPT))
            assert seen == {True, False}
