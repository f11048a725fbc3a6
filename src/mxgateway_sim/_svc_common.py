"""What the parts of the gateway servicer share: protobuf helpers, the tables of
stream ends and the servicer's core state (split from ``_servicer.py``)."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, Generic, TypeVar, overload

import grpc
from grpc import aio

from mxgateway._logsafe import get_logger
from mxgateway.commands import COMMANDS
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.values import from_mx_value, timestamp_to_datetime
from mxgateway_sim._alarms import AlarmMonitor
from mxgateway_sim._auth import Principal, current_principal
from mxgateway_sim._commands import BulkRow
from mxgateway_sim._domain import (
    AlarmTransition,
    MxAccessError,
    MxStatus,
    WriteRequest,
)
from mxgateway_sim._events import EndReason
from mxgateway_sim._faults import FaultInjector
from mxgateway_sim._limits import (
    MAX_ACK_COMMENT_CHARS,
    MAX_SESSION_NAME_CHARS,
    LimitError,
    reply_too_large,
    too_large,
)
from mxgateway_sim._sessions import Session, SessionManager
from mxgateway_sim._stats import GatewayStats
from mxgateway_sim._wire import (
    status_to_pb,
    varint,
)
from mxgateway_sim._workerwire import WorkerLost

log = get_logger("mxgateway_sim.gateway")
_T = TypeVar("_T")
Context = aio.ServicerContext[Any, Any]
BACKEND_NAME = "mxgw-sim"
ALARM_FEED_QUEUE = 10_000
"""Transition batches a StreamAlarms subscriber may have queued before it is disconnected."""

_KIND_PREFIX = "MX_COMMAND_KIND_"
PAYLOAD_OF_KIND: dict[int, str] = {kind: spec.payload for kind, spec in COMMANDS.items()}
"""Oneof member of ``MxCommand.payload`` that each kind requires (:mod:`mxgateway.commands`)."""


_VALUE_PAYLOADS = frozenset({"write", "write2", "write_secured", "write_secured2"})


def _check_value_sizes(payload: str, body: Any, limit: int) -> None:
    """Refuse a single Write* command carrying a value over ``--max-value-bytes``.

    Raises:
        LimitError: a value is larger than ``limit`` bytes (nothing is written).
    """
    if payload in _VALUE_PAYLOADS:
        size = body.value.ByteSize()
        if size > limit:
            raise too_large("the value", size, limit, "--max-value-bytes")
    # The Write*Bulk entries are checked one by one in the handler's sliced first pass
    # (GatewayServicer._write_rows): a 16 MiB bulk has ~10^6 of them.


if sys.version_info >= (3, 11):

    async def _within(call: Coroutine[Any, Any, _T], timeout_s: float) -> _T:
        """Run ``call`` in this task, cancelled after ``timeout_s`` (``TimeoutError``).

        ``asyncio.wait_for`` (3.10) runs it in a task of its own: two more tasks and
        several more turns of the loop for every command, a good part of a short call's
        server CPU (issue 15 §4). The behaviour is the same: a timeout cancels the handler
        at its next await and raises ``TimeoutError``.

        Most single commands finish without waiting for anything; a timeout could never
        stop them (it cancels at an await), so they run without arming one. A command
        that does wait gets the timeout at its first wait, with the deadline counted from
        the start.

        A refusal (:data:`_REFUSALS`) leaves without its traceback: a refused request is
        freed at once, whatever holds the exception. An unexpected error is a bug, and its
        log keeps the frames that show where it happened.
        """
        try:
            start = time.monotonic()
            try:
                first = call.send(None)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s - (time.monotonic() - start)
            async with asyncio.timeout_at(deadline):
                return await _Resumed(call, first)
        except _REFUSALS as exc:
            exc.__traceback__ = None
            raise

    class _Resumed(Generic[_T]):
        """Awaits a coroutine that already ran to its first suspension (``first``, the
        future it waits for): what ``await`` would have done from there on."""

        __slots__ = ("_call", "_first")

        def __init__(self, call: Coroutine[Any, Any, _T], first: Any) -> None:
            self._call = call
            self._first = first

        def __await__(self) -> Generator[Any, Any, _T]:
            call, pending = self._call, self._first
            self._first = None
            while True:
                try:
                    sent = yield pending
                except GeneratorExit:
                    call.close()
                    raise
                except BaseException as exc:  # the task is cancelled (the timeout)
                    try:
                        pending = call.throw(exc)
                    except StopIteration as done:
                        return done.value  # type: ignore[no-any-return]
                    continue
                try:
                    pending = call.send(sent)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]

else:  # pragma: no cover - Python 3.10 (no asyncio.timeout_at)

    class _Raised:
        """What a handler raised, as the result of ``wait_for``'s task (:func:`_within`)."""

        __slots__ = ("exc",)

        def __init__(self, exc: Exception) -> None:
            self.exc = exc

    async def _caught(call: Awaitable[_T]) -> _T | _Raised:
        try:
            return await call
        except Exception as exc:  # CancelledError (the timeout) is no Exception
            return _Raised(exc)

    async def _within(call: Awaitable[_T], timeout_s: float) -> _T:
        """Run ``call`` in a task of ``asyncio.wait_for``, cancelled after ``timeout_s``
        (``asyncio.TimeoutError``).

        The task keeps what it ended with, and an exception raised out of ``wait_for``
        passes through its frame, which keeps the task: the exception, its frames and the
        request they hold would be a cycle, freed only by a collection (with tenure only
        the valve). So the handler's error ends the task as its result, and is raised here
        once ``wait_for`` has returned. A refusal (:data:`_REFUSALS`, the timeout too)
        leaves without its traceback, as on 3.11+; ``raise exc.with_traceback(None)``,
        not a bare ``raise``: before 3.11 that re-raised the traceback the interpreter
        kept for the handled exception, whatever ``exc.__traceback__`` said.
        """
        try:
            outcome = await asyncio.wait_for(_caught(call), timeout_s)
        except _REFUSALS as exc:
            raise exc.with_traceback(None)  # noqa: B904 - the same exception, no frames
        if not isinstance(outcome, _Raised):
            return outcome
        error = outcome.exc
        del outcome
        try:
            if isinstance(error, _REFUSALS):
                raise error.with_traceback(None)
            raise error
        finally:
            del error  # this frame is in the traceback: it must not hold the exception


_END_KIND = {
    EndReason.OVERFLOW: pb.STREAM_FAULT_KIND_EVENT_QUEUE_OVERFLOW,
    EndReason.SESSION_CLOSED: pb.STREAM_FAULT_KIND_SESSION_CLOSED,
    EndReason.SESSION_FAULTED: pb.STREAM_FAULT_KIND_SESSION_FAULTED,
    EndReason.SERVER_SHUTDOWN: pb.STREAM_FAULT_KIND_SERVER_SHUTDOWN,
}
_END_CODE: dict[EndReason, grpc.StatusCode | None] = {
    EndReason.OVERFLOW: grpc.StatusCode.RESOURCE_EXHAUSTED,
    EndReason.SESSION_CLOSED: None,
    EndReason.SESSION_FAULTED: grpc.StatusCode.ABORTED,
    EndReason.SERVER_SHUTDOWN: grpc.StatusCode.UNAVAILABLE,
}


NO_SUCH_SESSION = "no session with that id"
"""The one answer for an unknown id and for another key's session (ownership is not revealed)."""


Handler = Callable[
    [Session, Any, pb.MxCommandReply], Coroutine[Any, Any, bytes | list[bytes] | None]
]
"""A command handler: fills the reply, or returns the bulk payload field already encoded
(bytes, or a list of its pieces, joined once with the reply's head: a large read's rows are
not copied into one field first)."""

READ_CHUNK_ROWS = 256
"""Tags a ReadBulk reads (and encodes) per slice."""


def _reply_field(name: str) -> bytes:
    """The tag of a length-delimited field of ``MxCommandReply`` (a bulk payload)."""
    number = pb.MxCommandReply.DESCRIPTOR.fields_by_name[name].number
    return varint(number << 3 | 2)


class _EncodedRows:
    """A bulk reply's repeated rows, encoded a chunk at a time as the command produces them.

    A repeated field may be split over several runs of its entries, so the chunks just
    concatenate. Rows are dropped once encoded (bytes are not tracked by the garbage
    collector, so a 100k-row call leaves no 100k objects for it to walk), and the reply goes
    out as :meth:`field` appended to the serialized rest of the reply: the rows are never
    parsed back into a message nor serialized again in one piece on the loop.

    The bytes are counted as they come: past ``room`` nothing more is kept (the command may
    run on, as the caller decides) and :meth:`field` raises, naming the limit.
    """

    __slots__ = ("_advice", "_encode", "_parts", "_room", "_tag", "size")

    def __init__(
        self, name: str, encode: Callable[[Sequence[Any]], bytes], room: int, advice: str
    ) -> None:
        self._tag = _reply_field(name)
        self._encode = encode
        self._room = room
        self._advice = advice
        self._parts: list[bytes] = []
        self.size = 0

    def __call__(self, rows: Sequence[Any]) -> None:
        data = self._encode(rows)
        self.size += len(data)
        if self.size <= self._room:
            self._parts.append(data)
        else:
            self._parts = []

    def field(self) -> bytes:
        """The whole payload field (tag, length, rows).

        Raises:
            LimitError: the rows are more than the room a reply has for them.
        """
        if self.size > self._room:
            raise reply_too_large(self.size, self._room, self._advice)
        body = b"".join(self._parts)
        self._parts = []
        return self._tag + varint(len(body)) + body


class _Converted(Sequence[tuple[int, WriteRequest]]):
    """Write*Bulk entries as (item handle, request), converted when a slice is taken."""

    def __init__(self, entries: Sequence[Any], convert: Callable[[Any], WriteRequest]) -> None:
        self._entries = entries
        self._convert = convert

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> tuple[int, WriteRequest]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[int, WriteRequest]]: ...

    def __getitem__(
        self, index: int | slice
    ) -> tuple[int, WriteRequest] | list[tuple[int, WriteRequest]]:
        if isinstance(index, slice):
            return [(e.item_handle, self._convert(e)) for e in self._entries[index]]
        entry = self._entries[index]
        return entry.item_handle, self._convert(entry)


def _subscribe_rows_bytes(rows: Sequence[BulkRow]) -> bytes:
    return _subscribe_rows(rows).SerializeToString()


def _reply_bytes(reply: pb.MxCommandReply | bytes) -> bytes:
    """Invoke's response serializer: a reply, or a reply already encoded by the servicer."""
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


class _BadRequest(Exception):
    """A command argument the gateway rejects before MXAccess sees it (INVALID_REQUEST)."""


_REFUSALS: tuple[type[BaseException], ...] = (
    asyncio.TimeoutError,
    asyncio.CancelledError,
    MxAccessError,
    LimitError,
    WorkerLost,
    _BadRequest,
)
"""What ends a command with a status of ours (or its call's cancel) rather than a bug:
these leave :func:`_within` without their traceback, so the request they held is freed at
once; anything else keeps its frames for the log."""


def _status(code: int, message: str) -> pb.ProtocolStatus:
    return pb.ProtocolStatus(code=code, message=message)  # type: ignore[arg-type]


def _statuses(target: Any, statuses: tuple[MxStatus, ...]) -> None:
    target.extend(status_to_pb(s) for s in statuses)


def _subscribe_rows(rows: Sequence[BulkRow]) -> pb.BulkSubscribeReply:
    reply = pb.BulkSubscribeReply()
    for row in rows:
        r = reply.results.add(
            server_handle=row.server_handle,
            tag_address=row.reference,
            item_handle=row.item_handle,
            was_successful=row.ok,
            error_message=row.error,
            hresult=row.hresult,
        )
        _statuses(r.statuses, row.statuses)
    return reply


def _write_request(
    value: pb.MxValue, *, ts: Any = None, user: int = 0, verifier: int = 0, secured: bool = False
) -> WriteRequest:
    try:
        converted = from_mx_value(value)
        when = timestamp_to_datetime(ts) if ts is not None else None
    except (OverflowError, ValueError) as exc:  # a time or duration no datetime can hold
        raise _BadRequest(f"the value or timestamp is out of range: {exc}") from None
    return WriteRequest(
        value=converted,
        timestamp=when,
        user_id=user,
        verifier_user_id=verifier,
        secured=secured,
    )


def _ts(msg: Any) -> Any:
    return msg.timestamp_value if msg.HasField("timestamp_value") else None


def _ack_text_problem(operator: str, comment: str) -> str:
    """Why an acknowledgement's texts are refused ("" when they are not): they are kept
    with the alarm and sent in every transition event, so they are bounded."""
    for what, text, limit in (
        ("operator_user", operator, MAX_SESSION_NAME_CHARS),
        ("comment", comment, MAX_ACK_COMMENT_CHARS),
    ):
        if len(text) > limit:
            return f"{what} is {len(text):,} characters long; the limit is {limit}"
    return ""


def _valid_guid(text: str) -> bool:
    try:
        uuid.UUID(text.strip("{}"))
    except ValueError:
        return False
    return True


def _frame(event: bytes) -> bytes:
    return b"\x0a" + varint(len(event)) + event


def _raw(data: bytes) -> bytes:
    return data


class ServicerCore:
    """What every part of the gateway servicer shares: its state (set by
    ``GatewayServicer.__init__``) and who is calling, with the sessions they own."""

    sessions: SessionManager
    alarms: AlarmMonitor
    faults: FaultInjector | None
    stats: GatewayStats | None
    timed: bool
    _correlation: itertools.count[int]
    _background: set[asyncio.Task[None]]
    _handlers: dict[str, Handler]
    _alarm_listeners: dict[str, Callable[[list[AlarmTransition]], None]]

    @staticmethod
    async def _caller(context: Context) -> Principal:
        """The authenticated caller (set by the interceptor); fails closed without one."""
        principal = current_principal.get()
        if principal is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key")
        assert principal is not None
        return principal

    def _find(self, session_id: str, principal: Principal) -> Session | None:
        """The session if the caller owns it (or is admin); None as for an unknown id."""
        return self.sessions.find(session_id, principal.key_id, admin=principal.allows("admin"))
