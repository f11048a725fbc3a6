"""A remembered ReadBulk whose chunk holds a single row is planned and answered as any."""

from __future__ import annotations

from test_sim_bulk_fast_paths import _fast_and_plain, _model_catalog

from mxgateway import GatewayClient
from mxgateway_sim import GatewaySimulator, SimulatedRuntime
from mxgateway_sim._readrows import MEMO_CHUNK_ROWS


async def test_a_chunk_of_one_row_is_planned_and_answered_as_the_plain_path() -> None:
    # A plan puts a chunk's rows in order with one call; a chunk of one row (a poller of
    # one tag, or the last row of a list one longer than whole chunks) takes its own way
    # there, and must answer the row, in a list, as the plain path does.
    async with GatewaySimulator(
        catalog=_model_catalog(120), scan_interval_ms=3_600_000, flaky_one_in=0
    ) as sim:
        plant = sim.plant
        assert plant is not None
        scalars = [f"Obj{i:03d}.{n}" for i in range(120) for n in ("Level", "Count", "Flag")]
        async with (
            await GatewayClient.connect(
                endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
            ) as client,
            await client.open_session(client_session_name="reader") as session,
        ):
            hlmx = await session.register("reader")
            found = sim.sessions.get(session.session_id)
            assert found is not None and isinstance(found.runtime, SimulatedRuntime)
            runtime = found.runtime
            cache = runtime._read_rows
            assert cache is not None
            for refs in (scalars[:1], (scalars * 3)[: MEMO_CHUNK_ROWS + 1]):
                states = {r: plant.state(r) for r in refs}
                for steps in (0, 0, 1, 0, 30):  # remembered, planned, kept, computed anew
                    for _ in range(steps):
                        plant.step()
                    await _fast_and_plain(session, runtime, hlmx, refs, states)
                plans = [plan for _, plan in cache.plans.values()]
                assert plans and all(plan is not None for plan in plans)
                assert len(plans[-1].order) == 1  # type: ignore[union-attr]
