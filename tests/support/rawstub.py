"""The gateway through its raw generated stubs, for tests of what the server does with any
request (the library would refuse or reshape some): a command by its payload member, and
the stubs of one channel with a key's authorization header."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as rpc

__all__ = ["RawStub", "command", "read_to_end"]


def command(payload: str, **fields: Any) -> pb.MxCommand:
    """An MxCommand whose kind matches ``payload`` (the oneof member name)."""
    kind = pb.MxCommandKind.Value("MX_COMMAND_KIND_" + payload.upper())
    message_type = pb.MxCommand.DESCRIPTOR.fields_by_name[payload].message_type
    return pb.MxCommand(kind=kind, **{payload: getattr(pb, message_type.name)(**fields)})


class RawStub:
    """Raw generated stubs plus an authorization header, for one channel."""

    session_name = "test"
    """The client session name :meth:`open` gives by default."""

    def __init__(self, channel: grpc.aio.Channel, key: str | None) -> None:
        self.channel = channel
        self.stub = rpc.MxAccessGatewayStub(channel)
        self.md: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {key}"),) if key else ()

    async def open(self, name: str | None = None) -> str:
        reply = await self.stub.OpenSession(
            pb.OpenSessionRequest(client_session_name=name or self.session_name),
            metadata=self.md,
        )
        return reply.session_id

    async def invoke(self, sid: str, payload: str, **fields: Any) -> pb.MxCommandReply:
        request = pb.MxCommandRequest(session_id=sid, command=command(payload, **fields))
        return await self.stub.Invoke(request, metadata=self.md)

    async def ok(self, sid: str, payload: str, **fields: Any) -> pb.MxCommandReply:
        reply = await self.invoke(sid, payload, **fields)
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK, reply
        return reply


async def read_to_end(
    call: grpc.aio.UnaryStreamCall[Any, Any], *, batched: bool, timeout: float = 30.0
) -> tuple[list[int], grpc.StatusCode]:
    """Read a raw event stream (``StreamEventBatches`` when ``batched``, else
    ``StreamEvents``) to its end: the stream-fault kinds it carried and its final status
    (OK when it ended cleanly). Each read waits at most ``timeout`` seconds."""
    kinds: list[int] = []
    try:
        while (message := await asyncio.wait_for(call.read(), timeout)) is not grpc.aio.EOF:
            events = message.events if batched else [message]
            kinds += [e.stream_fault.kind for e in events if e.HasField("stream_fault")]
    except grpc.aio.AioRpcError as exc:
        return kinds, exc.code()
    return kinds, grpc.StatusCode.OK
