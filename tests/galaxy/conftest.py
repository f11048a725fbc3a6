"""Fixtures: the simulator's Galaxy service behind a real grpc.aio server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from galaxy_helpers import GalaxyServer, start_server

from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc


@pytest.fixture
async def galaxy(tmp_path: Path) -> AsyncIterator[GalaxyServer]:
    """The default seeded plant, served over gRPC."""
    db = tmp_path / "galaxy.db"
    server, svc, address = await start_server(db)
    channel = grpc.aio.insecure_channel(address)
    try:
        yield GalaxyServer(svc, address, gr_grpc.GalaxyRepositoryStub(channel), db)
    finally:
        await channel.close()
        await server.stop(None)
        await svc.close()
