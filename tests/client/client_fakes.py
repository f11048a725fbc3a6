"""In-process fake gateway for the client tests: what a real server cannot do on demand.

The fake records the metadata of every call, answers with scripted replies, drops or ends
streams when told to, answers UNIMPLEMENTED for the batch stream when asked, and notes
when the client cancelled a call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from mxgateway import GatewayClient, Session
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pbg

SESSION_ID = "session-0123456789abcdef0123456789abcdef"


def ok_status() -> pb.ProtocolStatus:
    return pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_OK)


def data_change(seq: int, value: int = 0, session_id: str = SESSION_ID) -> pb.MxEvent:
    ev = pb.MxEvent(
        session_id=session_id,
        worker_sequence=seq,
        family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE,
    )
    dc = ev.on_data_change
    dc.server_handle = 1
    dc.item_handle = 2
    dc.value.int32_value = value
    dc.value.data_type = pb.MX_DATA_TYPE_INTEGER
    dc.value.variant_type = pb.VT_I4
    dc.quality = 192
    dc.timestamp.seconds = 1_700_000_000 + seq
    dc.timestamp.nanos = 123_456_000
    dc.statuses.add(success=1, category=pb.MX_STATUS_CATEGORY_OK)
    return ev


@dataclass
class Recorder:
    """What the fake saw."""

    metadata: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    requests: list[Any] = field(default_factory=list)
    stream_requests: list[pb.StreamEventsRequest] = field(default_factory=list)
    cancelled: dict[str, int] = field(default_factory=dict)
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.metadata.setdefault(method, []).append(md)

    def note_cancel(self, method: str) -> None:
        self.cancelled[method] = self.cancelled.get(method, 0) + 1
        self.cancel_event.set()


StreamPlan = Callable[[pb.StreamEventsRequest, int], AsyncIterator[Any]]


class FakeGateway(pbg.MxAccessGatewayServicer):
    """A scriptable servicer; set the attributes to change its behaviour."""

    def __init__(self) -> None:
        self.rec = Recorder()
        # Invoke: function(request) -> MxCommandReply (default: OK with a register reply).
        self.invoke_handler: Callable[[pb.MxCommandRequest], pb.MxCommandReply] | None = None
        # Errors to abort with: method name -> (code, details)
        self.abort: dict[str, tuple[grpc.StatusCode, str]] = {}
        # Unary calls that hang until cancelled.
        self.hang: set[str] = set()
        # Event streams: called with (request, attempt) -> async iterator of messages
        # (MxEvent for StreamEvents, MxEventBatch for StreamEventBatches); raising
        # grpc.RpcError-like via `StreamAbort` aborts the stream with that code.
        self.events_plan: StreamPlan | None = None
        self.batches_plan: StreamPlan | None = None
        self.batches_unimplemented = False
        # OpenSession: a scripted reply instead of the default OK one.
        self.open_session_reply: pb.OpenSessionReply | None = None
        self.attempts: dict[str, int] = {}

    async def _common(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.rec.note(name, context)
        if name in self.abort:
            code, details = self.abort[name]
            await context.abort(code, details)
        if name in self.hang:
            self.rec.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.rec.note_cancel(name)
                raise

    async def OpenSession(self, request: Any, context: Any) -> pb.OpenSessionReply:
        await self._common("OpenSession", context)
        self.rec.requests.append(request)
        if self.open_session_reply is not None:
            return self.open_session_reply
        return pb.OpenSessionReply(
            session_id=SESSION_ID,
            backend_name="fake",
            gateway_protocol_version=3,
            protocol_status=ok_status(),
        )

    async def CloseSession(self, request: Any, context: Any) -> pb.CloseSessionReply:
        await self._common("CloseSession", context)
        self.rec.requests.append(request)
        return pb.CloseSessionReply(
            session_id=request.session_id,
            final_state=pb.SESSION_STATE_CLOSED,
            protocol_status=ok_status(),
        )

    async def Invoke(self, request: Any, context: Any) -> pb.MxCommandReply:
        await self._common("Invoke", context)
        self.rec.requests.append(request)
        if self.invoke_handler is not None:
            return self.invoke_handler(request)
        reply = pb.MxCommandReply(
            session_id=request.session_id,
            kind=request.command.kind,
            protocol_status=ok_status(),
        )
        reply.register.server_handle = 7
        return reply

    async def _stream(
        self, name: str, plan: StreamPlan | None, request: Any, context: Any
    ) -> AsyncIterator[Any]:
        await self._common(name, context)
        self.rec.stream_requests.append(request)
        attempt = self.attempts.get(name, 0)
        self.attempts[name] = attempt + 1
        self.rec.started.set()
        try:
            if plan is None:
                await asyncio.Event().wait()
                return
            async for msg in plan(request, attempt):
                if isinstance(msg, StreamAbort):
                    await context.abort(msg.code, msg.details)
                yield msg
        except asyncio.CancelledError:
            self.rec.note_cancel(name)
            raise

    async def StreamEvents(self, request: Any, context: Any) -> AsyncIterator[pb.MxEvent]:
        async for msg in self._stream("StreamEvents", self.events_plan, request, context):
            yield msg

    async def StreamEventBatches(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.MxEventBatch]:
        if self.batches_unimplemented:
            self.rec.note("StreamEventBatches", context)
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        async for msg in self._stream("StreamEventBatches", self.batches_plan, request, context):
            yield msg


@dataclass
class StreamAbort:
    """Yield from a stream plan to abort the stream with ``code``."""

    code: grpc.StatusCode
    details: str = ""


class FakeServer:
    """A grpc.aio server on 127.0.0.1:0 running a :class:`FakeGateway`."""

    def __init__(
        self,
        servicer: FakeGateway | None = None,
        *,
        tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        """``tls`` is (certificate chain PEM, private key PEM) to serve TLS."""
        self.servicer = servicer or FakeGateway()
        self.server = grpc.aio.server()
        pbg.add_MxAccessGatewayServicer_to_server(self.servicer, self.server)
        if tls is None:
            port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials([(tls[1], tls[0])])
            port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.endpoint = f"127.0.0.1:{port}"

    async def __aenter__(self) -> FakeServer:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(None)


@contextlib.asynccontextmanager
async def attached(servicer: FakeGateway, session_id: str = SESSION_ID) -> AsyncIterator[Session]:
    """``session_id`` attached through a plaintext client of a :class:`FakeServer` running
    ``servicer`` (both closed after)."""
    async with (
        FakeServer(servicer) as server,
        await GatewayClient.connect(endpoint=server.endpoint, plaintext=True) as client,
    ):
        yield client.attach_session(session_id)
