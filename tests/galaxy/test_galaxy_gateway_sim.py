"""The Galaxy client against the whole simulator (``mxgateway_sim.GatewaySimulator``).

The same three spec examples as in test_galaxy_client.py, but behind the simulator's real
auth interceptor, plus scope denial by that interceptor.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from galaxy_helpers import EXAMPLE_BROWSE, EXAMPLE_ITER, EXAMPLE_WATCH, wait_for

import mxgateway
from mxgateway import GalaxyRepositoryClient, MxGatewayPermissionError
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
from mxgateway_sim import ApiKeyStore, GatewaySimulator, new_key
from mxgateway_sim.galaxy import deploy


def _example(source: str, endpoint: str, key: str) -> Any:
    code = source.replace("localhost:5000", endpoint).replace("<key>", key)
    namespace: dict[str, Any] = vars(mxgateway).copy()
    exec(f"async def _example():\n{textwrap.indent(code, '    ')}\n", namespace)
    return namespace["_example"]


class Sim:
    def __init__(self, sim: GatewaySimulator, db: Path, key: str, reader: str) -> None:
        self.sim, self.db, self.key, self.no_metadata_key = sim, db, key, reader


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    full, reader = new_key(), new_key()
    store = ApiKeyStore()
    store.add(full)
    store.add(reader, scopes=["session:open", "invoke:read"])
    db = tmp_path / "galaxy.db"
    async with GatewaySimulator(
        key_store=store, galaxy_db=db, galaxy_poll_interval=0.05
    ) as simulator:
        assert simulator.galaxy_available
        yield Sim(simulator, db, full, reader)


async def test_spec_examples_against_the_simulator(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    await _example(EXAMPLE_BROWSE, sim.sim.endpoint, sim.key)()
    browse = capsys.readouterr().out.splitlines()
    assert browse[0].startswith("last deploy: 2026-01-05 06:00:00")
    assert "   Level -> L1_Tank01.Level" in browse
    await _example(EXAMPLE_ITER, sim.sim.endpoint, sim.key)()
    listed = capsys.readouterr().out.splitlines()
    assert listed == [line for line in browse[1:] if not line.startswith(" ")]

    task = asyncio.ensure_future(_example(EXAMPLE_WATCH, sim.sim.endpoint, sim.key)())
    printed: list[str] = []

    def have(n: int) -> Any:
        async def check() -> bool:
            printed.extend(capsys.readouterr().out.splitlines())
            if task.done():
                task.result()
            return len(printed) >= n

        return check

    try:
        await wait_for(have(1), what="the bootstrap event")
        assert printed[0].startswith("#1 deploy=")
        await asyncio.to_thread(deploy, sim.db, add=1)
        await wait_for(have(2), what="the deploy event")
        assert printed[1].startswith("#2 deploy=")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_missing_metadata_scope_is_denied_by_the_simulator(sim: Sim) -> None:
    async with await GalaxyRepositoryClient.connect(
        endpoint=sim.sim.endpoint, api_key=sim.no_metadata_key, plaintext=True
    ) as galaxy:
        with pytest.raises(MxGatewayPermissionError):
            await galaxy.test_connection()
        with pytest.raises(MxGatewayPermissionError):
            await galaxy.discover_hierarchy()
        with pytest.raises(MxGatewayPermissionError):
            async for _ in galaxy.watch_deploy_events():
                pass


async def test_galaxy_page_bytes_reaches_the_simulators_galaxy(tmp_path: Path) -> None:
    """``GatewaySimulator(galaxy_page_bytes=...)`` (``--galaxy-page-bytes``) bounds pages."""
    async with (
        GatewaySimulator(galaxy_db=tmp_path / "g.db", galaxy_page_bytes=4000) as small,
        grpc.aio.insecure_channel(small.endpoint) as channel,
    ):
        stub = gr_grpc.GalaxyRepositoryStub(channel)
        md = (("authorization", f"Bearer {small.api_key}"),)
        request = gr.DiscoverHierarchyRequest(page_size=5000, root_tag_name="Line1")
        first = await stub.DiscoverHierarchy(request, metadata=md)
        assert 1 <= len(first.objects) < first.total_object_count and first.next_page_token
        async with await GalaxyRepositoryClient.connect(
            endpoint=small.endpoint, api_key=small.api_key, plaintext=True
        ) as galaxy:
            objects = await galaxy.discover_hierarchy(page_size=5000, root_tag_name="Line1")
        assert len(objects) == first.total_object_count
