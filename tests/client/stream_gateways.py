"""Gateways for the command-stream tests: a plain ``grpc.server`` on its own threads, whose
answers race the client as a remote gateway's do, and a servicer that answers every command
OK and records what each carriage carried (tests override what they need to change)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from mxgateway import ClientOptions
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pbg

PING = pb.MxCommand(kind=pb.MX_COMMAND_KIND_PING, ping=pb.PingCommand())
WRITE = pb.MxCommand(
    kind=pb.MX_COMMAND_KIND_WRITE,
    write=pb.WriteCommand(server_handle=7, item_handle=1, value=pb.MxValue(int32_value=1)),
)


def ok_reply(request: pb.MxCommandRequest, **fields: Any) -> pb.MxCommandReply:
    """The OK reply of ``request`` (its session and kind), with ``fields`` set."""
    return pb.MxCommandReply(
        session_id=request.session_id,
        kind=request.command.kind,
        protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_OK),
        **fields,
    )


@contextlib.contextmanager
def threaded_gateway(
    gateway: pbg.MxAccessGatewayServicer | Callable[[grpc.Server], None],
) -> Iterator[ClientOptions]:
    """A plain ``grpc.server`` on its own threads serving ``gateway`` (a servicer, or a
    function that registers the handlers); yields the options of a plaintext client."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    if isinstance(gateway, pbg.MxAccessGatewayServicer):
        pbg.add_MxAccessGatewayServicer_to_server(gateway, server)
    else:
        gateway(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield ClientOptions(endpoint=f"127.0.0.1:{port}", plaintext=True, timeout=30)
    finally:
        server.stop(None).wait()


class RecordingGateway(pbg.MxAccessGatewayServicer):
    """Answers every command OK on either carriage (``stream_reply`` on the stream); records
    the kinds each carried, the streams opened and how each stream ended (the client
    half-closed it, or it was cancelled)."""

    def __init__(self) -> None:
        self.streamed: list[int] = []
        self.invoked: list[int] = []
        self.streams = 0
        self.ends: list[str] = []

    def stream_reply(self, index: int, request: pb.MxCommandRequest) -> pb.MxCommandReply:
        """The reply to the stream's ``index``-th command (from 0)."""
        return ok_reply(request)

    def Invoke(self, request: pb.MxCommandRequest, context: Any) -> pb.MxCommandReply:
        self.invoked.append(request.command.kind)
        return ok_reply(request)

    def InvokeStream(self, request_iterator: Any, context: Any) -> Any:
        self.streams += 1
        for i, request in enumerate(request_iterator):
            self.streamed.append(request.command.kind)
            yield self.stream_reply(i, request)
        self.ends.append("half-closed" if context.is_active() else "cancelled")
