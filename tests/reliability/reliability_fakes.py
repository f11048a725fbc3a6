"""Helpers of the reliability tests: a scriptable fake gateway and a freezing TCP proxy.

The fake accepts frequent client keepalive pings (the settings a gateway needs for clients
that ping every few seconds), fails ``Invoke`` with UNAVAILABLE a given number of times per
command kind, and streams an endless, resumable sequence of data changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pbg

SESSION_ID = "session-0123456789abcdef0123456789abcdef"

# Server settings that let clients ping every second (grpc core refuses pings more often
# than every 5 minutes by default and answers with a too_many_pings GOAWAY).
PERMISSIVE_KEEPALIVE = [
    ("grpc.http2.min_ping_interval_without_data_ms", 100),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 0),
]


def data_change(seq: int, item_handle: int = 1) -> pb.MxEvent:
    ev = pb.MxEvent(
        session_id=SESSION_ID, worker_sequence=seq, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE
    )
    dc = ev.on_data_change
    dc.server_handle = 1
    dc.item_handle = item_handle
    dc.value.int32_value = seq
    dc.value.data_type = pb.MX_DATA_TYPE_INTEGER
    dc.value.variant_type = pb.VT_I4
    dc.quality = 192
    dc.timestamp.seconds = 1_700_000_000 + seq
    return ev


class FlakyGateway(pbg.MxAccessGatewayServicer):
    """``Invoke`` fails with UNAVAILABLE ``fail_times[kind]`` times, then answers OK."""

    def __init__(self) -> None:
        self.fail_times: dict[int, int] = {}
        self.fail_code = grpc.StatusCode.UNAVAILABLE
        self.fail_all_open_session = False
        self.calls: Counter[int] = Counter()
        self.open_session_calls = 0
        self.stream_requests: list[pb.StreamEventsRequest] = []
        self.event_interval = 0.01
        self.subscribed: list[str] = []

    async def OpenSession(self, request: Any, context: Any) -> pb.OpenSessionReply:
        self.open_session_calls += 1
        if self.fail_all_open_session:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted failure")
        return pb.OpenSessionReply(
            session_id=SESSION_ID,
            protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_OK),
        )

    async def Invoke(self, request: Any, context: Any) -> pb.MxCommandReply:
        kind = request.command.kind
        self.calls[kind] += 1
        left = self.fail_times.get(kind, 0)
        if left:
            self.fail_times[kind] = left - 1
            await context.abort(self.fail_code, "scripted failure")
        reply = pb.MxCommandReply(
            session_id=request.session_id,
            kind=kind,
            protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_OK),
        )
        if kind == pb.MX_COMMAND_KIND_GET_SESSION_STATE:
            reply.session_state.state = pb.SESSION_STATE_READY
        elif kind == pb.MX_COMMAND_KIND_REGISTER:
            reply.register.server_handle = 1
        elif kind == pb.MX_COMMAND_KIND_SUBSCRIBE_BULK:
            tags = request.command.subscribe_bulk.tag_addresses
            for tag in tags:
                self.subscribed.append(tag)
                reply.bulk_subscribe.results.add(
                    server_handle=1,
                    tag_address=tag,
                    item_handle=len(self.subscribed),
                    was_successful=True,
                )
        return reply

    async def StreamEventBatches(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.MxEventBatch]:
        """An endless sequence: resumes after ``after_worker_sequence``."""
        self.stream_requests.append(request)
        seq = request.after_worker_sequence if request.HasField("after_worker_sequence") else 0
        while True:
            seq += 1
            item = (seq - 1) % max(len(self.subscribed), 1) + 1
            yield pb.MxEventBatch(events=[data_change(seq, item)])
            await asyncio.sleep(self.event_interval)


class FlakyGalaxy(gr_grpc.GalaxyRepositoryServicer):
    """``TestConnection`` fails with UNAVAILABLE ``fail_times`` times, then answers ok."""

    def __init__(self) -> None:
        self.fail_times = 0
        self.calls = 0

    async def TestConnection(self, request: Any, context: Any) -> gr.TestConnectionReply:
        self.calls += 1
        if self.fail_times:
            self.fail_times -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted failure")
        return gr.TestConnectionReply(ok=True)


class FakeGatewayServer:
    """A grpc.aio server on 127.0.0.1:0 with permissive keepalive settings."""

    def __init__(self, servicer: FlakyGateway | None = None) -> None:
        self.servicer = servicer or FlakyGateway()
        self.galaxy = FlakyGalaxy()
        self.server = grpc.aio.server(options=PERMISSIVE_KEEPALIVE)
        pbg.add_MxAccessGatewayServicer_to_server(self.servicer, self.server)
        gr_grpc.add_GalaxyRepositoryServicer_to_server(self.galaxy, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{port}"

    async def __aenter__(self) -> FakeGatewayServer:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(None)


class FreezingProxy:
    """TCP proxy on 127.0.0.1:0; :meth:`freeze` makes the open connections half-open,
    :meth:`drop_all` resets them, and ``refusing = True`` resets new ones at once (the
    network is down).

    A frozen connection stays open on both sides but forwards nothing any more (a cable
    pulled behind a router, a NAT entry dropped): only keepalive can notice it. Connections
    made after the freeze forward normally.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._conns: list[tuple[asyncio.Event, list[asyncio.StreamWriter]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.refusing = False
        self.endpoint = ""

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for _, writers in self._conns:
            for w in writers:
                w.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        frozen = asyncio.Event()
        self._conns.append((frozen, [writer, up_writer]))
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, frozen)),
            asyncio.ensure_future(self._pump(up_reader, writer, frozen)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.wait(pumps)
            self._tasks.difference_update(pumps)
            for w in (writer, up_writer):
                w.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frozen: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if frozen.is_set():
                    await asyncio.Event().wait()  # swallow everything, never close
                writer.write(data)
                await writer.drain()

    def drop_all(self) -> None:
        """Reset every open connection (both sides see the reset)."""
        for _, writers in self._conns:
            for w in writers:
                w.transport.abort()
        self._conns.clear()

    def freeze(self) -> int:
        """Freeze every connection open now; returns how many."""
        for frozen, _ in self._conns:
            frozen.set()
        return len(self._conns)
