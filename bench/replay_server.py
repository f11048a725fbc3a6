"""Replay server: a gRPC MxAccessGateway that streams pre-serialized events.

Run as ``python -m bench.replay_server --listen 127.0.0.1:0 --events N --batch B``; it
prints one JSON line ``{"address": ...}`` and serves until terminated. Responses go out
through a generic handler with an identity serializer, so the server does no protobuf work
per event and the client's own cost is what limits a stream.

* ``OpenSession`` always answers the same session id; ``CloseSession`` answers CLOSED.
* ``StreamEvents`` sends events ``after_worker_sequence + 1 .. N`` one per message,
  ``StreamEventBatches`` the same events ``B`` per batch; both then send a
  ``SESSION_CLOSED`` notice and end OK (so clients stop by themselves).
* ``Invoke`` answers every command kind OK with a canned reply (register -> handle 1,
  add_item -> handle 1, bulk read/write -> one OK row per entry). It does not check the
  API key: it measures the client, not authorization.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bench._events import SESSION_ID, batch_bytes, make_event, stream_fault_bytes
from mxgateway.generated import mxaccess_gateway_pb2 as pb

_Ctx = grpc.aio.ServicerContext[Any, Any]
SERVICE = "mxaccess_gateway.v1.MxAccessGateway"


def _identity(b: bytes) -> bytes:
    return b


class Replay:
    """The canned data and the handlers that send it."""

    def __init__(self, events: int, batch: int, values: str) -> None:
        self.events = [make_event(i + 1, values=values).SerializeToString() for i in range(events)]
        self.batch = max(1, batch)
        self.closed = stream_fault_bytes(pb.STREAM_FAULT_KIND_SESSION_CLOSED, "replay finished")
        self.batches = [
            batch_bytes(self.events[i : i + self.batch])
            for i in range(0, len(self.events), self.batch)
        ]
        self.closed_batch = batch_bytes([self.closed])
        self._invoke_cache: dict[tuple[int, int], bytes] = {}

    async def open_session(self, request: bytes, context: _Ctx) -> bytes:
        reply = pb.OpenSessionReply(
            session_id=SESSION_ID,
            backend_name="bench-replay",
            gateway_protocol_version=pb.GATEWAY_PROTOCOL_VERSION_CURRENT,
            worker_protocol_version=1,
        )
        reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_OK
        reply.lease_duration.seconds = 600
        return reply.SerializeToString()

    async def close_session(self, request: bytes, context: _Ctx) -> bytes:
        reply = pb.CloseSessionReply(session_id=SESSION_ID, final_state=pb.SESSION_STATE_CLOSED)
        reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_OK
        return reply.SerializeToString()

    async def invoke(self, request: bytes, context: _Ctx) -> bytes:
        req = pb.MxCommandRequest.FromString(request)
        cmd = req.command
        kind = int(cmd.kind)
        rows = 0
        if kind == pb.MX_COMMAND_KIND_READ_BULK:
            rows = len(cmd.read_bulk.tag_addresses)
        elif kind == pb.MX_COMMAND_KIND_WRITE_BULK:
            rows = len(cmd.write_bulk.entries)
        elif kind == pb.MX_COMMAND_KIND_SUBSCRIBE_BULK:
            rows = len(cmd.subscribe_bulk.tag_addresses)
        # Replies depend only on (kind, rows): the bench always sends the same tag prefix.
        key = (kind, rows)
        cached = self._invoke_cache.get(key)
        if cached is not None:
            return cached
        reply = pb.MxCommandReply(session_id=SESSION_ID, correlation_id="c", kind=kind)  # type: ignore[arg-type]
        reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_OK
        if kind == pb.MX_COMMAND_KIND_REGISTER:
            reply.register.server_handle = 1
        elif kind in (pb.MX_COMMAND_KIND_ADD_ITEM, pb.MX_COMMAND_KIND_ADD_ITEM2):
            reply.add_item.item_handle = 1
        elif kind == pb.MX_COMMAND_KIND_READ_BULK:
            for i, tag in enumerate(cmd.read_bulk.tag_addresses):
                r = reply.bulk_read.results.add(
                    tag_address=tag, quality=192, was_successful=True, was_cached=True
                )
                r.value.data_type = pb.MX_DATA_TYPE_DOUBLE
                r.value.variant_type = pb.VT_R8
                r.value.raw_data_type = 4
                r.value.double_value = i * 0.5
                r.timestamp.seconds = 1_764_000_000
        elif kind == pb.MX_COMMAND_KIND_SUBSCRIBE_BULK:
            for i, tag in enumerate(cmd.subscribe_bulk.tag_addresses):
                reply.bulk_subscribe.results.add(
                    server_handle=1, tag_address=tag, item_handle=i + 1, was_successful=True
                )
        elif kind == pb.MX_COMMAND_KIND_WRITE_BULK:
            for e in cmd.write_bulk.entries:
                reply.bulk_write.results.add(item_handle=e.item_handle, was_successful=True)
        data = reply.SerializeToString()
        self._invoke_cache[key] = data
        return data

    def _start(self, request: bytes) -> int:
        req = pb.StreamEventsRequest.FromString(request)
        return int(req.after_worker_sequence) if req.HasField("after_worker_sequence") else 0

    async def stream_events(self, request: bytes, context: _Ctx) -> AsyncIterator[bytes]:
        start = self._start(request)
        for data in self.events[start:]:
            yield data
        yield self.closed

    async def stream_event_batches(self, request: bytes, context: _Ctx) -> AsyncIterator[bytes]:
        start = self._start(request)
        if start % self.batch == 0:
            batches = self.batches[start // self.batch :]
        else:
            rest = self.events[start:]
            batches = [
                batch_bytes(rest[i : i + self.batch]) for i in range(0, len(rest), self.batch)
            ]
        for data in batches:
            yield data
        yield self.closed_batch

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        unary = grpc.unary_unary_rpc_method_handler
        stream = grpc.unary_stream_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "OpenSession": unary(self.open_session, _identity, _identity),
                "CloseSession": unary(self.close_session, _identity, _identity),
                "Invoke": unary(self.invoke, _identity, _identity),
                "StreamEvents": stream(self.stream_events, _identity, _identity),
                "StreamEventBatches": stream(self.stream_event_batches, _identity, _identity),
            },
        )


async def serve(listen: str, events: int, batch: int, values: str) -> None:
    """Serve until SIGTERM/SIGINT."""
    replay = Replay(events, batch, values)
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
    )
    server.add_generic_rpc_handlers((replay.handler(),))
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rsplit(":", 1)[0]
    print(json.dumps({"address": f"{host}:{port}", "events": events, "batch": batch}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.replay_server")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--values", choices=("double", "int", "string"), default="double")
    args = parser.parse_args(argv)
    if not args.listen.startswith("127.0.0.1:"):
        print("the replay server only listens on 127.0.0.1", file=sys.stderr)
        return 2
    asyncio.run(serve(args.listen, args.events, args.batch, args.values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
