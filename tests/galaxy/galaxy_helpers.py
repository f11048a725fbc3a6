"""Helpers for the Galaxy tests: a real grpc.aio server on loopback and deadline polling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
from mxgateway_sim.galaxy import GalaxyService
from support import wait_for as wait_for


@dataclass
class GalaxyServer:
    """A running Galaxy servicer (no auth) and a stub bound to it."""

    service: GalaxyService
    address: str
    stub: gr_grpc.GalaxyRepositoryStub
    db_path: Path


async def start_server(
    db_path: Path,
    *,
    objects: int | None = None,
    poll_interval: float = 0.05,
    interceptors: list[grpc.aio.ServerInterceptor] | None = None,
    servicer: object | None = None,
) -> tuple[grpc.aio.Server, GalaxyService, str]:
    svc = await GalaxyService.open(db_path, objects=objects, poll_interval=poll_interval)
    server = grpc.aio.server(interceptors=interceptors or [])
    gr_grpc.add_GalaxyRepositoryServicer_to_server(
        servicer or svc.servicer,  # type: ignore[arg-type]
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, svc, f"127.0.0.1:{port}"


FULL_KEY = "mxgw_galaxytest_s3cretFull0123456789"
NO_SCOPE_KEY = "mxgw_noscope_s3cretNone0123456789"
_SCOPES = {FULL_KEY: {"metadata:read"}, NO_SCOPE_KEY: {"invoke:read"}}


class ScopeInterceptor(grpc.aio.ServerInterceptor):
    """A tiny stand-in for the gateway's auth: Bearer key -> scopes; Galaxy needs metadata:read."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        auth = str(metadata.get("authorization", ""))
        key = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if key is None or key not in _SCOPES:
            code, msg = grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key"
        elif "metadata:read" not in _SCOPES[key]:
            code, msg = grpc.StatusCode.PERMISSION_DENIED, "API key lacks scope metadata:read"
        else:
            return handler

        async def deny_unary(request: object, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
            await context.abort(code, msg)

        async def deny_stream(request: object, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def, type-arg]
            await context.abort(code, msg)
            yield  # pragma: no cover

        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                deny_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            deny_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


# The three Galaxy examples of the client spec (python-client-readme.md), verbatim.
EXAMPLE_BROWSE = """
from mxgateway import GalaxyRepositoryClient

async with await GalaxyRepositoryClient.connect(
    endpoint="localhost:5000",
    api_key="<key>",
    plaintext=True,
) as galaxy:
    if not await galaxy.test_connection():
        raise RuntimeError("gateway cannot reach the Galaxy Repository DB")

    last_deploy = await galaxy.get_last_deploy_time()
    print(f"last deploy: {last_deploy}")

    for obj in await galaxy.discover_hierarchy():
        print(obj.tag_name, obj.contained_name)
        for attr in obj.attributes:
            print("  ", attr.attribute_name, "->", attr.full_tag_reference)
"""

EXAMPLE_ITER = """
async with await GalaxyRepositoryClient.connect(
    endpoint="localhost:5000",
    api_key="<key>",
    plaintext=True,
) as galaxy:
    async for obj in galaxy.iter_hierarchy():
        print(obj.tag_name, obj.contained_name)
"""

EXAMPLE_WATCH = """
from datetime import datetime, timezone

from mxgateway import DeployEvent, GalaxyRepositoryClient

async with await GalaxyRepositoryClient.connect(
    endpoint="localhost:5000",
    api_key="<key>",
    plaintext=True,
) as galaxy:
    last_seen: datetime | None = None
    async for event in galaxy.watch_deploy_events(last_seen_deploy_time=last_seen):
        assert isinstance(event, DeployEvent)
        print(
            f"#{event.sequence} deploy={event.time_of_last_deploy.ToDatetime(tzinfo=timezone.utc)} "
            f"objects={event.object_count} attributes={event.attribute_count}"
        )
        if event.time_of_last_deploy_present:
            last_seen = event.time_of_last_deploy.ToDatetime(tzinfo=timezone.utc)
"""
