"""A fake gateway for the CLI tests: raw replies and events with enum numbers newer than the
bindings (the contract is additive, so a newer gateway sends them). A plain ``grpc.server``
in a thread on 127.0.0.1:0, since the CLI runs its own event loop in-process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pbg

SESSION = "session-" + "9" * 32
NEW_CATEGORY = 42
NEW_SOURCE = 17
NEW_FAMILY = 99
NEW_FAULT_KIND = 77


def newer_status() -> pb.MxStatusProxy:
    """A status whose category and source no binding knows."""
    return pb.MxStatusProxy(
        success=0,
        category=NEW_CATEGORY,  # type: ignore[arg-type]
        detected_by=NEW_SOURCE,  # type: ignore[arg-type]
        detail=1007,
    )


def newer_events() -> list[pb.MxEvent]:
    """A data change and a stream notice with unknown family / kind numbers."""
    change = pb.MxEvent(session_id=SESSION, worker_sequence=1, family=NEW_FAMILY)  # type: ignore[arg-type]
    change.on_data_change.server_handle = 1
    change.on_data_change.item_handle = 2
    change.on_data_change.value.int32_value = 5
    change.on_data_change.statuses.append(newer_status())
    done = pb.MxEvent(session_id=SESSION, worker_sequence=2, family=NEW_FAMILY)  # type: ignore[arg-type]
    done.on_write_complete.server_handle = 1
    done.on_write_complete.item_handle = 2
    done.on_write_complete.statuses.append(newer_status())
    notice = pb.MxEvent(session_id=SESSION, family=NEW_FAMILY)  # type: ignore[arg-type]
    notice.stream_fault.kind = NEW_FAULT_KIND  # type: ignore[assignment]
    notice.stream_fault.message = "something newer"
    return [change, done, notice]


class NewerGateway(pbg.MxAccessGatewayServicer):
    """Invoke: writes are accepted, anything else fails with a newer status category.
    Streams: the newer events (the write's completion only after a write arrived)."""

    def __init__(self) -> None:
        self.written = threading.Event()
        self.stopped = threading.Event()

    def _idle(self, context: Any) -> None:
        """Hold the stream open (sending nothing) until the client leaves or we stop."""
        while context.is_active() and not self.stopped.wait(0.05):
            pass

    def Invoke(self, request: Any, context: Any) -> pb.MxCommandReply:
        reply = pb.MxCommandReply(
            session_id=request.session_id,
            kind=request.command.kind,
            protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_OK),
        )
        if request.command.kind == pb.MX_COMMAND_KIND_WRITE:
            self.written.set()
            return reply
        reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE
        reply.hresult = -2147220992
        reply.statuses.append(newer_status())
        return reply

    def StreamEvents(self, request: Any, context: Any) -> Iterator[pb.MxEvent]:
        context.send_initial_metadata(())
        yield from newer_events()
        self._idle(context)

    def StreamEventBatches(self, request: Any, context: Any) -> Iterator[pb.MxEventBatch]:
        context.send_initial_metadata(())
        while not self.written.wait(0.05):  # a write waiter attaches first, then writes
            if not context.is_active() or self.stopped.is_set():
                return
        yield pb.MxEventBatch(events=newer_events())
        self._idle(context)


class FakeGatewayServer:
    """``with FakeGatewayServer() as endpoint:`` a running :class:`NewerGateway`."""

    def __init__(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.gateway = NewerGateway()
        pbg.add_MxAccessGatewayServicer_to_server(self.gateway, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{port}"

    def __enter__(self) -> str:
        self.server.start()
        return self.endpoint

    def __exit__(self, *exc: object) -> None:
        self.gateway.stopped.set()
        self.server.stop(None).wait()
