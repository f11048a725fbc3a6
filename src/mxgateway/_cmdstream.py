"""Commands on one persistent ``InvokeStream`` (``ClientOptions.command_stream``).

A unary ``Invoke`` in grpc.aio costs a call object, an HTTP/2 stream, the key metadata and
a server task per command; on the persistent stream a command is one message each way,
about a third of that (``docs/benchmarks.md``). The stream carries one command at a time
(or the requests of one pipelined read, :meth:`CommandStream.invoke_many`, whose replies
are read in the order they were written) and replies come in request order, so a reply
always belongs to the command that waits for it; a second command issued meanwhile goes
through ``Invoke``. A gateway without the
stream answers ``UNIMPLEMENTED`` before it reads a request, and the client then uses
``Invoke`` for good.

Once a stream has answered a command, each later command that is safe to send again (a
read, a ping) is sent and its reply received in one gRPC batch (``_exchange``): one
completion a command instead of one for the write and one for the read, each of which
wakes grpc.aio's poller thread and then the event loop (``docs/benchmarks.md``, "Thread
wake-ups per command"). When such a batch fails, the command may not have gone out (as a
refused write) or its reply may be lost; either way ``Invoke`` sends it again. Other
commands are written, then read, so a refused write is known as one.

A write the stream refuses sent nothing, so that command goes through ``Invoke`` whatever
it is. grpc.aio may report such a refusal as ``INTERNAL`` "Internal error from Core" in
place of the status the gateway sent (grpc/grpc#36066: the stream ended, with
``UNIMPLEMENTED`` say, while the write was on its way); after ``_MAX_REFUSALS`` such
refusals of a new stream in a row the client uses ``Invoke`` for good.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from mxgateway import _grpcbatch as grpcbatch
from mxgateway._callend import cancel_and_settle
from mxgateway._encoded import EncodedRequest, as_message, serialize
from mxgateway._errors import ClientClosedError
from mxgateway._retry import IDEMPOTENT_COMMAND_KINDS, is_idempotent
from mxgateway._transport import Transport, _task_cancelling
from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = ["CommandStream"]

_CLOCK_SLACK = 1e-3
"""Seconds a deadline may be ahead of the clock when the watchdog fires and still count."""

_MAX_REFUSALS = 3
"""New streams in a row whose first write was refused with its status lost before the
client stops opening them (a gateway without the stream, whose ``UNIMPLEMENTED`` lost)."""

_CLOSE_WAIT = 1.0
"""Seconds a closing client waits for the gateway to end an idle command stream."""

_SETTLE_WAIT = 1.0
"""Seconds a closing client waits, after cancelling a stream the gateway did not end in
:data:`_CLOSE_WAIT`, for gRPC to hand its loop the cancel's completion
(``mxgateway._callend``): a local cancel completes at once, but a busy machine may delay
gRPC's poller thread well past a short half-close wait."""

AHEAD = 2
"""Requests of :meth:`CommandStream.invoke_many` written before their replies are read:
one computed by the gateway while the next waits in its queue."""

_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # what read() returns at the end

_UNSENT: Any = object()
"""What :func:`_exchange` returns when it sent nothing: the command is written and read."""


class CommandStream:
    """The client's end of ``InvokeStream``: opened on first use, again after a failure."""

    def __init__(self, transport: Transport, open_stream: Any = None) -> None:
        """``open_stream(metadata=...)`` opens the stream (default: ``InvokeStream`` on
        the transport's channel, as the generated stub's, but writing a request encoded
        ahead, ``mxgateway._encoded``, as it is)."""
        self._transport = transport
        default = open_stream is None
        if open_stream is None:
            service = pb.DESCRIPTOR.services_by_name["MxAccessGateway"].full_name
            open_stream = transport.channel.stream_stream(
                f"/{service}/InvokeStream",
                request_serializer=serialize,
                response_deserializer=pb.MxCommandReply.FromString,
            )
        self._open_stream = open_stream
        self._call: Any = None
        # Whether commands may go in one batch (_exchange): on the stream this class opens
        # (its own deserializer) once it answered a command (its metadata sent, its reads
        # begun through grpc.aio).
        self._batch = grpcbatch.AVAILABLE and default
        self._answered = False
        self._busy = False
        self._deadline = 0.0  # loop time the command in flight must be answered by
        self._timed_out = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = 0.0
        self._refusals = 0  # new streams in a row whose first write was refused (INTERNAL)
        self._closed = False  # aclose() ran
        self.unsupported = False
        """The gateway answered ``UNIMPLEMENTED``: every command goes through ``Invoke``."""

    @property
    def available(self) -> bool:
        """True when the next command may use the stream (supported and idle)."""
        return not self.unsupported and not self._busy

    async def invoke(
        self,
        request: pb.MxCommandRequest | EncodedRequest,
        timeout: float | None,
        session_id: str,
        what: str,
    ) -> pb.MxCommandReply | None:
        """Run ``request`` on the stream; None means "use ``Invoke``" (no stream on this
        gateway, the stream refused the command's write so nothing was sent, or it broke
        before the command could have run and the command is safe to send again). gRPC
        failures raise the same mapped errors as ``Invoke``'s."""
        self._busy = True
        self._timed_out = False
        timed = timeout is not None
        try:
            call, new = self._start(timeout)
            # grpcbatch.AVAILABLE: batches turned off for good (another grpcio) since the
            # stream answered.
            batch = self._answered and grpcbatch.AVAILABLE and _idempotent(request)
            data = serialize(request) if batch else None
            reply = _UNSENT
            if data is not None and len(data) <= self._transport.options.max_message_bytes:
                reply = await _exchange(call, data)
                if reply is None:  # the batch failed: Invoke sends it (again)
                    self._drop()
                    if self._timed_out:
                        raise self._deadline_error(session_id, what)
                    return None
            if reply is _UNSENT:
                try:
                    await call.write(request)
                except grpc.aio.AioRpcError as exc:
                    if self._timed_out:
                        raise
                    self._call = None
                    self._refused(exc, request, new)
                    return None
                reply = await call.read()
        except grpc.aio.AioRpcError as exc:
            self._failed(exc, request, session_id, what)
            return None
        except asyncio.CancelledError:
            self._drop()
            self._cancelled_under(session_id, what)
            raise
        except BaseException:
            self._drop()  # the stream may hold a reply nobody will read: start afresh
            raise
        finally:
            self._busy = False
        if timed and self._timed_out:  # the reply won the race against the cancel
            self._drop()
        if reply is _EOF:  # the gateway ended the stream without a status
            self._call = None
            if is_idempotent(as_message(request)):
                return None
            raise self._transport.map_error(
                _rpc_error(grpc.StatusCode.UNAVAILABLE, "the command stream ended"),
                session_id=session_id,
                what=what,
            )
        assert isinstance(reply, pb.MxCommandReply)
        self._refusals = 0
        self._answered = self._batch
        return reply

    async def invoke_many(
        self,
        requests: Sequence[EncodedRequest],
        timeout: float | None,
        session_id: str,
        what: str,
        take: Callable[[pb.MxCommandReply], None],
    ) -> int:
        """Run idempotent ``requests`` (the chunks of one large read) on the stream as a
        pipeline: up to :data:`AHEAD` written before their replies are read, so the
        gateway computes the next while ``take`` decodes a reply. Replies come in request
        order (the stream's guarantee); ``take`` gets each in turn. One deadline,
        ``timeout``, covers them all.

        Returns how many replies ``take`` got; fewer than ``len(requests)`` means "send
        the rest through ``Invoke``" (as :meth:`invoke`'s None: no stream, a refused
        write, a stream that broke where a command is safe to send again). A gRPC failure
        raises as :meth:`invoke`'s; an error of ``take`` (a chunk that failed) fails the
        whole call. Any error, or the deadline, with replies still due ends the stream,
        so the next command never gets a reply that is not its own.
        """
        self._busy = True
        self._timed_out = False
        timed = timeout is not None
        total = len(requests)
        taken = sent = 0
        failed = False  # take() raised: the stream itself is sound
        try:
            call, new = self._start(timeout)
            while taken < total:
                while sent < total and sent - taken < AHEAD:
                    try:
                        await call.write(requests[sent])
                    except grpc.aio.AioRpcError as exc:
                        if self._timed_out:
                            raise
                        # The stream ended: this request was not sent; the rest go
                        # through Invoke (as invoke()'s refused write).
                        self._drop()
                        self._refused(exc, requests[sent], new and taken == 0)
                        return taken
                    sent += 1
                reply = await call.read()
                if reply is _EOF:  # the gateway ended the stream without a status
                    self._call = None
                    return taken
                assert isinstance(reply, pb.MxCommandReply)
                try:
                    take(reply)
                except BaseException:
                    failed = True
                    raise
                taken += 1
        except grpc.aio.AioRpcError as exc:
            self._failed(exc, None, session_id, what)
            return taken
        except asyncio.CancelledError:
            self._drop()
            self._cancelled_under(session_id, what)
            raise
        except BaseException:
            if not failed or sent > taken + 1:
                self._drop()  # replies may be due that nobody will read: start afresh
            raise
        finally:
            self._busy = False
        if timed and self._timed_out:  # the last reply won the race against the cancel
            self._drop()
        self._refusals = 0
        self._answered = self._batch
        return taken

    def _start(self, timeout: float | None) -> tuple[Any, bool]:
        """The stream to send on (opened anew if there is none or it ended: then True)
        with the deadline of what is about to be sent set."""
        call = self._call
        new = call is None or call.done()
        if new:
            call = self._call = self._open_stream(metadata=self._transport.metadata)
            self._answered = False
        if timeout is None:
            self._deadline = math.inf
        else:
            self._arm(timeout)
        return call, new

    def _failed(
        self,
        exc: grpc.aio.AioRpcError,
        request: pb.MxCommandRequest | EncodedRequest | None,
        session_id: str,
        what: str,
    ) -> None:
        """Handle the stream failing under :meth:`invoke`'s ``request`` or, with None,
        :meth:`invoke_many`'s pipelined reads: returns when what is unanswered goes through
        ``Invoke``; raises the error a command gets otherwise (its deadline's, or the mapped
        status, as ``Invoke``'s)."""
        self._call = None
        if self._timed_out:
            raise self._deadline_error(session_id, what) from None
        code = exc.code()
        if code is grpc.StatusCode.UNIMPLEMENTED:
            self.unsupported = True
            return
        if request is None:
            # invoke_many's requests are reads, safe to send again, and together under a
            # share of the message limit (Session.read_bulk): an INTERNAL is no refused
            # oversize message and is raised.
            if code is grpc.StatusCode.UNAVAILABLE:
                return  # Invoke retries them under the retry policy
        else:
            if (
                code is grpc.StatusCode.INTERNAL
                and as_message(request).ByteSize() > self._transport.options.max_message_bytes
            ):
                # gRPC core refused to send it (a bare INTERNAL on a stream): nothing was
                # sent, and Invoke names the message limit as for any call.
                return
            if code is grpc.StatusCode.UNAVAILABLE and is_idempotent(as_message(request)):
                return  # Invoke retries it under the retry policy
        raise self._transport.map_error(exc, session_id=session_id, what=what) from exc

    def _refused(
        self, exc: grpc.aio.AioRpcError, request: pb.MxCommandRequest | EncodedRequest, new: bool
    ) -> None:
        """Note a write the stream refused. Nothing was sent (the stream had ended), so the
        caller sends the command through ``Invoke``, which reports any error as a unary
        call does."""
        code = exc.code()
        if code is grpc.StatusCode.UNIMPLEMENTED:
            self.unsupported = True
        elif (
            code is grpc.StatusCode.INTERNAL
            and new
            and as_message(request).ByteSize() <= self._transport.options.max_message_bytes
        ):
            # The status of a new stream's end was lost (grpc/grpc#36066): most likely a
            # gateway without the stream. Try a new one next time, a few times at most.
            self._refusals += 1
            if self._refusals >= _MAX_REFUSALS:
                self.unsupported = True

    def _arm(self, timeout: float) -> None:
        """Set the deadline of the command about to be sent.

        One timer serves every command: it is re-armed only when a deadline comes earlier
        than the time it is set for. With the usual equal timeouts each deadline is later
        than the last, so a command costs a subtraction instead of a timer of its own.
        """
        loop = asyncio.get_running_loop()
        deadline = self._deadline = loop.time() + timeout
        watchdog = self._watchdog
        if watchdog is None or deadline < self._watchdog_at:
            if watchdog is not None:
                watchdog.cancel()
            self._watchdog_at = deadline
            self._watchdog = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """The watchdog fired: cancel the command in flight if its deadline has passed,
        else wait for the deadline of the one in flight (if any)."""
        self._watchdog = None
        if not self._busy:
            return
        loop = asyncio.get_running_loop()
        # asyncio may run a timer up to its clock resolution early.
        if loop.time() + _CLOCK_SLACK >= self._deadline:
            self._timed_out = True
            if self._call is not None:
                self._call.cancel()
            return
        if self._deadline != math.inf:
            self._watchdog_at = self._deadline
            self._watchdog = loop.call_at(self._deadline, self._expire)

    def _deadline_error(self, session_id: str, what: str) -> Exception:
        return self._transport.map_error(
            _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
            session_id=session_id,
            what=what,
        )

    def _cancelled_under(self, session_id: str, what: str) -> None:
        """Raise what a command whose stream was cancelled under it gets instead of
        ``CancelledError``, as on ``Invoke``: its deadline's error, or ``ClientClosedError``
        when :meth:`aclose` cancelled it (grpc.aio raises ``CancelledError`` in the task
        awaiting a call cancelled from elsewhere; that task was not cancelled)."""
        if self._timed_out:
            raise self._deadline_error(session_id, what) from None
        if self._closed and not _task_cancelling():
            raise ClientClosedError(f"{what} was cancelled because the client was closed")

    def _drop(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def aclose(self) -> None:
        """End the stream (the client is closing): an idle one is half-closed and its end
        awaited (at most ``_CLOSE_WAIT`` seconds), one with a command in flight cancelled.

        Why not just cancel: gRPC finishes a cancelled call later, on its poller thread,
        and hands that completion to the call's event loop; once that loop is closed (an
        application that runs ``asyncio.run`` again, every test), asyncio logs "Exception in
        callback PollerCompletionQueue._handle_events ... Event loop is closed" in whichever
        loop runs next (grpc/grpc#34139). Awaiting the stream's status, the last completion
        of an idle stream, keeps that completion in this loop; one the gateway does not end
        in time is cancelled and waited for until gRPC hands this loop the cancel's
        completion (``mxgateway._callend``).
        """
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
        self._closed = True
        call, self._call = self._call, None
        in_flight, self._busy = self._busy, True  # from now on commands use Invoke
        if call is None or call.done():
            return
        if in_flight:
            call.cancel()  # the command's own task receives what gRPC hands back
            return
        try:
            await asyncio.wait_for(_finish(call), _CLOSE_WAIT)
        except (asyncio.TimeoutError, grpc.aio.AioRpcError):
            pass  # the gateway is slow or gone: cancelled below
        except BaseException:
            call.cancel()
            raise
        else:
            return
        await cancel_and_settle(call, _SETTLE_WAIT)


async def _exchange(call: Any, data: bytes) -> pb.MxCommandReply | Any:
    """Send ``data`` on the stream ``call`` and receive its reply in one gRPC batch.

    One completion instead of two (:mod:`mxgateway._grpcbatch`). The stream must have
    answered a command already (its metadata is sent, its reads begun).

    Returns the reply; ``_EOF`` when the stream ended OK after the command went out;
    None when the batch failed, so the command may not have gone out (as a refused
    write), or it may have and its reply was lost: only a command that is safe to send
    again comes here; ``_UNSENT`` when this grpcio's internals differ from what
    :mod:`mxgateway._grpcbatch` expects before anything happened on the stream (batches
    are off for good: the caller writes and reads). Raises ``AioRpcError`` with the
    stream's status when it ended otherwise, ``CancelledError`` when it was cancelled here
    (the deadline, ``aclose``).
    """
    try:
        cython_call = call._cython_call
    except AttributeError as exc:
        grpcbatch.unusable(False, exc)
        return _UNSENT
    try:
        raw = await grpcbatch.exchange(cython_call, data)
    except grpcbatch.BatchFailed:
        cancelled = getattr(cython_call, "is_locally_cancelled", None)  # private too
        if cancelled is not None and cancelled():
            raise asyncio.CancelledError from None
        return None
    except grpcbatch.Unusable as exc:
        return None if exc.sent else _UNSENT
    if raw is not None:
        return pb.MxCommandReply.FromString(raw)
    code = await call.code()
    if code is grpc.StatusCode.OK:
        return _EOF
    raise grpc.aio.AioRpcError(
        code,
        await call.initial_metadata(),
        await call.trailing_metadata(),
        await call.details(),
        await call.debug_error_string(),
    )


async def _finish(call: Any) -> None:
    """Half-close ``call`` and wait for the gateway to end it."""
    await call.done_writing()
    await call.code()


def _idempotent(request: pb.MxCommandRequest | EncodedRequest) -> bool:
    """True when ``request`` is safe to send again (``mxgateway._retry.is_idempotent``)."""
    kind = request.kind if isinstance(request, EncodedRequest) else request.command.kind
    return kind in IDEMPOTENT_COMMAND_KINDS


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An ``AioRpcError`` for a failure seen on the stream, mapped like a unary call's."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)
