"""Helpers of the fault tests: raw stubs for the server side, a public client for the client."""

from __future__ import annotations

from typing import Any

import grpc

from mxgateway import ClientOptions, GatewayClient
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as rpc
from mxgateway_sim import GatewaySimulator, InMemoryCatalog
from mxgateway_sim._builtin import tag
from mxgateway_sim._domain import MX_DOUBLE
from support import wait_for as wait_for

SCAN_MS = 20
DEADLINE = 20.0
"""Generous bound of every wait: a test fails instead of hanging."""


def command(payload: str, **fields: Any) -> pb.MxCommand:
    """An MxCommand whose kind matches ``payload`` (the oneof member name)."""
    kind = pb.MxCommandKind.Value("MX_COMMAND_KIND_" + payload.upper())
    message_type = pb.MxCommand.DESCRIPTOR.fields_by_name[payload].message_type
    return pb.MxCommand(kind=kind, **{payload: getattr(pb, message_type.name)(**fields)})


class Raw:
    """Raw generated stubs plus an authorization header, for one channel."""

    def __init__(self, channel: grpc.aio.Channel, key: str | None) -> None:
        self.channel = channel
        self.stub = rpc.MxAccessGatewayStub(channel)
        self.md: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {key}"),) if key else ()

    async def open(self, name: str = "faults") -> str:
        reply = await self.stub.OpenSession(
            pb.OpenSessionRequest(client_session_name=name), metadata=self.md
        )
        return reply.session_id

    async def invoke(self, sid: str, payload: str, **fields: Any) -> pb.MxCommandReply:
        request = pb.MxCommandRequest(session_id=sid, command=command(payload, **fields))
        return await self.stub.Invoke(request, metadata=self.md)

    async def ok(self, sid: str, payload: str, **fields: Any) -> pb.MxCommandReply:
        reply = await self.invoke(sid, payload, **fields)
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK, reply
        return reply


def analog_catalog(n: int, prefix: str = "Dev") -> InMemoryCatalog:
    """``n`` analog attributes (``DevNNNNN.PV``) whose values change on every scan."""
    return InMemoryCatalog(tag(f"{prefix}{i:05d}", "PV", MX_DOUBLE) for i in range(n))


def analog_refs(n: int, prefix: str = "Dev") -> list[str]:
    return [f"{prefix}{i:05d}.PV" for i in range(n)]


def options(sim: GatewaySimulator, **changes: Any) -> ClientOptions:
    """Plaintext options for the simulator (fast reconnects after a restart)."""
    base = ClientOptions(
        endpoint=sim.endpoint,
        api_key=sim.api_key,
        plaintext=True,
        timeout=10.0,
        channel_options=(
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ),
    )
    return base.replace(**changes) if changes else base


async def connect(sim: GatewaySimulator, **changes: Any) -> GatewayClient:
    return await GatewayClient.connect(options=options(sim, **changes))
