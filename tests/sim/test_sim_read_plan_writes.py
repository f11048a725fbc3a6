"""A remembered ReadBulk's plan never groups an attribute pinned by a write."""

from __future__ import annotations

from test_sim_bulk_fast_paths import _library_sessions, _model_catalog

from mxgateway import from_mx_value
from mxgateway_sim import GatewaySimulator

WRITTEN = "Obj007.Count"


async def test_a_written_attribute_stays_written_when_its_chunk_is_planned_again() -> None:
    # A plan groups the attributes only their models drive and computes a group's values
    # together. An attribute a write pinned is not one of them, even once nobody advises
    # it: after the writer unadvises it, a row-by-row read has computed it (dirty cleared)
    # and another session's advise makes the chunk's plan again, its row must still carry
    # the written value in every period, never its model's.
    async with GatewaySimulator(
        catalog=_model_catalog(120), scan_interval_ms=3_600_000, flaky_one_in=0
    ) as sim:
        plant = sim.plant
        assert plant is not None
        refs = [f"Obj{i:03d}.{name}" for i in range(120) for name in ("Count", "Level", "Flag")]
        at = refs.index(WRITTEN)
        async with _library_sessions(sim, "reader", "other") as (session, other):
            reader = await session.register("reader")
            writer = await other.register("other")
            for _ in range(2):  # remembered, then planned
                rows = await session.read_bulk(reader, refs)
            before = from_mx_value(rows[at].value)
            assert isinstance(before, int)
            (added,) = await other.subscribe_bulk(writer, [WRITTEN])  # a write needs advise
            written = before + 4242
            await other.write(writer, added.item_handle, written, wait=True)
            await other.unadvise(writer, added.item_handle)

            async def read() -> object:
                rows = await session.read_bulk(reader, refs)
                assert [r.tag_address for r in rows] == refs
                return from_mx_value(rows[at].value)

            assert await read() == written  # row by row (dirty), the plan made again
            plant.step()
            assert await read() == written
            # Another session's advise changes the plant's pins: every plan is made again,
            # now with the written attribute clean (computed since the write).
            await other.subscribe_bulk(writer, ["Obj050.Level"])
            for steps in (0, 30, 1, 60):  # the same period, then new ones
                for _ in range(steps):
                    plant.step()
                assert await read() == written, steps
