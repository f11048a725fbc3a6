"""Which methods the simulator registers with gRPC core, and that every method is served.

grpc.aio's server waits for the next call of each registered method and of the rest at
once and pays for that on every call it accepts, so only the health check (kept apart from
a flood of other calls) is registered; every other method goes through the generic
handlers. Over real gRPC on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from simhelpers import Gw

from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
from mxgateway_sim import GatewaySimulator
from mxgateway_sim._server import REGISTERED_METHODS


async def test_only_the_health_check_is_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: list[str] = []
    register = aio._server.Server.add_registered_method_handlers  # type: ignore[attr-defined]

    def record(self: Any, service: str, handlers: dict[str, Any]) -> None:
        registered.extend(f"/{service}/{method}" for method in handlers)
        register(self, service, handlers)

    monkeypatch.setattr(aio._server.Server, "add_registered_method_handlers", record)  # type: ignore[attr-defined]
    async with GatewaySimulator(galaxy_db=tmp_path / "galaxy.db") as sim:
        assert sim.galaxy_available  # the Galaxy service was added too
    assert registered == ["/grpc.health.v1.Health/Check"]
    assert set(registered) == REGISTERED_METHODS


async def test_the_health_check_and_every_galaxy_method_are_served(tmp_path: Path) -> None:
    async with (
        GatewaySimulator(galaxy_db=tmp_path / "galaxy.db") as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        check = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING

        md = Gw(channel, sim.api_key).md
        galaxy = gr_grpc.GalaxyRepositoryStub(channel)
        assert (await galaxy.TestConnection(gr.TestConnectionRequest(), metadata=md)).ok
        await galaxy.GetLastDeployTime(gr.GetLastDeployTimeRequest(), metadata=md)
        hierarchy = await galaxy.DiscoverHierarchy(
            gr.DiscoverHierarchyRequest(page_size=10), metadata=md
        )
        assert hierarchy.objects
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await galaxy.BrowseChildren(
                gr.BrowseChildrenRequest(parent_tag_name="NoSuchObject"), metadata=md
            )
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        events = galaxy.WatchDeployEvents(gr.WatchDeployEventsRequest(), metadata=md)
        await events.wait_for_connection()
        events.cancel()
