"""Commands on one persistent ``InvokeStream`` (``ClientOptions.command_stream``).

A unary ``Invoke`` in grpc.aio costs a call object, an HTTP/2 stream, the key metadata and
a server task per command; on the persistent stream a command is one message each way,
about a third of that (``docs/benchmarks.md``). The stream carries one command at a time
and replies come in request order, so a reply always belongs to the command that waits
for it; a second command issued meanwhile goes through ``Invoke``. A gateway without the
stream answers ``UNIMPLEMENTED`` before it reads a request, and the client then uses
``Invoke`` for good.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from mxgateway._retry import is_idempotent
from mxgateway._transport import Transport
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pbg

__all__ = ["CommandStream"]

_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # what read() returns at the end


class CommandStream:
    """The client's end of ``InvokeStream``: opened on first use, again after a failure."""

    def __init__(self, transport: Transport, stub: pbg.MxAccessGatewayStub) -> None:
        self._transport = transport
        self._stub = stub
        self._call: Any = None
        self._busy = False
        self.unsupported = False
        """The gateway answered ``UNIMPLEMENTED``: every command goes through ``Invoke``."""

    @property
    def available(self) -> bool:
        """True when the next command may use the stream (supported and idle)."""
        return not self.unsupported and not self._busy

    async def invoke(
        self, request: pb.MxCommandRequest, timeout: float | None, session_id: str, what: str
    ) -> pb.MxCommandReply | None:
        """Run ``request`` on the stream; None means "use ``Invoke``" (no stream on this
        gateway, or it broke before the command could have run and the command is safe to
        send again). gRPC failures raise the same mapped errors as ``Invoke``'s."""
        self._busy = True
        timer: asyncio.TimerHandle | None = None
        timed_out = False
        try:
            call = self._call
            if call is None or call.done():
                open_stream: Any = self._stub.InvokeStream  # a bidi call, written to below
                call = self._call = open_stream(metadata=self._transport.metadata)
            if timeout is not None:

                def expire() -> None:
                    nonlocal timed_out
                    timed_out = True
                    call.cancel()

                timer = asyncio.get_running_loop().call_later(timeout, expire)
            await call.write(request)
            reply = await call.read()
        except grpc.aio.AioRpcError as exc:
            self._call = None
            if timed_out:
                raise self._deadline(session_id, what) from None
            code = exc.code()
            if code is grpc.StatusCode.UNIMPLEMENTED:
                self.unsupported = True
                return None
            if code is grpc.StatusCode.UNAVAILABLE and is_idempotent(request):
                return None  # Invoke retries it under the retry policy
            raise self._transport.map_error(exc, session_id=session_id, what=what) from exc
        except asyncio.CancelledError:
            self._drop()
            if timed_out:
                raise self._deadline(session_id, what) from None
            raise
        except BaseException:
            self._drop()  # the stream may hold a reply nobody will read: start afresh
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._busy = False
        if timed_out:  # the reply won the race against the timer's cancel
            self._drop()
        if reply is _EOF:  # the gateway ended the stream without a status
            self._call = None
            if is_idempotent(request):
                return None
            raise self._transport.map_error(
                _rpc_error(grpc.StatusCode.UNAVAILABLE, "the command stream ended"),
                session_id=session_id,
                what=what,
            )
        assert isinstance(reply, pb.MxCommandReply)
        return reply

    def _deadline(self, session_id: str, what: str) -> Exception:
        return self._transport.map_error(
            _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
            session_id=session_id,
            what=what,
        )

    def _drop(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def close(self) -> None:
        """Cancel the stream (the client is closing)."""
        self._drop()


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An ``AioRpcError`` for a failure seen on the stream, mapped like a unary call's."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)
