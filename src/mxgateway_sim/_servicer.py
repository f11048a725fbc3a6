"""The MxAccessGateway servicer: protobuf in, domain calls, protobuf out.

Nothing here knows how MXAccess is simulated: sessions come from the
:class:`~mxgateway_sim._sessions.SessionManager` and commands run against the session's
:class:`~mxgateway_sim._runtime.MxAccessRuntime`. Event streams send the bytes the session's
event log already encoded (the stream methods are registered with a pass-through serializer).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, overload

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from mxgateway._logsafe import get_logger
from mxgateway._version import GATEWAY_PROTOCOL_VERSION, WORKER_PROTOCOL_VERSION
from mxgateway.commands import COMMANDS, scope_for_command
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.values import from_mx_value, timestamp_to_datetime, to_mx_value
from mxgateway_sim import _commands as bulk
from mxgateway_sim._alarms import AlarmMonitor
from mxgateway_sim._auth import Principal, current_principal
from mxgateway_sim._commands import BulkRow, ReplyBudget
from mxgateway_sim._domain import (
    E_MX_OPERATION_FAILED,
    AlarmTransition,
    MxAccessError,
    MxStatus,
    WriteRequest,
)
from mxgateway_sim._events import EndReason, Subscriber, SubscriberRefused
from mxgateway_sim._faults import FaultInjector
from mxgateway_sim._limits import (
    MAX_ACK_COMMENT_CHARS,
    MAX_SESSION_NAME_CHARS,
    REPLY_OVERHEAD_BYTES,
    LimitError,
    reply_too_large,
    too_large,
)
from mxgateway_sim._oplog import bind_session
from mxgateway_sim._sessions import Session, SessionLimitError, SessionManager, SessionState
from mxgateway_sim._slicing import CHUNK_ROWS, Slicer, chunks
from mxgateway_sim._stats import GatewayStats, timed_invoke
from mxgateway_sim._wire import (
    alarm_snapshot_to_pb,
    alarm_transition_to_pb,
    fault_event,
    read_reply_bytes,
    status_to_pb,
    unframe,
    varint,
    write_reply_bytes,
)
from mxgateway_sim._workerclient import WorkerStartError
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


async def _without_cycle(call: Awaitable[_T]) -> _T:
    """Await ``call``; an exception leaves without the traceback that ties it to a cycle.

    ``wait_for`` runs the handler in a task that keeps the exception, whose traceback keeps
    the frames that keep the task: a cycle holding the whole request (megabytes for a large
    one) until a full garbage collection, which the tuned GC makes rare. Dropping the
    traceback breaks it, so a refused request is freed at once.
    """
    try:
        return await call
    except BaseException as exc:
        exc.__traceback__ = None
        raise


if sys.version_info >= (3, 11):

    async def _within(call: Awaitable[_T], timeout_s: float) -> _T:
        """Await ``call`` in this task, cancelled after ``timeout_s`` (``TimeoutError``).

        ``asyncio.wait_for`` (3.10) runs it in a task of its own: two more tasks and
        several more turns of the loop for every command, a good part of a short call's
        server CPU (issue 15 §4). The behaviour is the same: a timeout cancels the handler
        at its next await and raises ``TimeoutError``.
        """
        async with asyncio.timeout(timeout_s):
            return await call

else:  # pragma: no cover - Python 3.10

    def _within(call: Awaitable[_T], timeout_s: float) -> Awaitable[_T]:
        return asyncio.wait_for(call, timeout_s)


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


Handler = Callable[[Session, Any, pb.MxCommandReply], Awaitable[bytes | None]]
"""A command handler: fills the reply, or returns the bulk payload field already encoded."""

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


class GatewayServicer:
    """Implements ``mxaccess_gateway.v1.MxAccessGateway``."""

    def __init__(
        self,
        sessions: SessionManager,
        alarms: AlarmMonitor,
        faults: FaultInjector | None = None,
        stats: GatewayStats | None = None,
        *,
        timed: bool = False,
    ) -> None:
        self.sessions = sessions
        self.alarms = alarms
        self.faults = faults
        self.stats = stats
        self.timed = timed and stats is not None
        """Count and time every command (metrics on; see :func:`timed_invoke`)."""
        self._correlation = itertools.count(1)
        self._background: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Handler] = {
            "register": self._register,
            "unregister": self._unregister,
            "add_item": self._add_item,
            "add_item2": self._add_item2,
            "add_buffered_item": self._add_buffered_item,
            "remove_item": self._remove_item,
            "advise": self._advise,
            "advise_supervisory": self._advise_supervisory,
            "un_advise": self._unadvise,
            "write": self._write,
            "write2": self._write2,
            "write_secured": self._write_secured,
            "write_secured2": self._write_secured2,
            "authenticate_user": self._authenticate_user,
            "archestra_user_to_id": self._archestra_user_to_id,
            "suspend": self._suspend,
            "activate": self._activate,
            "set_buffered_update_interval": self._set_buffered_update_interval,
            "add_item_bulk": self._add_item_bulk,
            "advise_item_bulk": self._advise_item_bulk,
            "remove_item_bulk": self._remove_item_bulk,
            "un_advise_item_bulk": self._unadvise_item_bulk,
            "subscribe_bulk": self._subscribe_bulk,
            "unsubscribe_bulk": self._unsubscribe_bulk,
            "write_bulk": self._write_bulk,
            "write2_bulk": self._write2_bulk,
            "write_secured_bulk": self._write_secured_bulk,
            "write_secured2_bulk": self._write_secured2_bulk,
            "read_bulk": self._read_bulk,
            "ping": self._ping,
            "get_session_state": self._get_session_state,
            "get_worker_info": self._get_worker_info,
            "drain_events": self._drain_events,
            "shutdown_worker": self._shutdown_worker,
            "subscribe_alarms": self._subscribe_alarms,
            "unsubscribe_alarms": self._unsubscribe_alarms,
            "acknowledge_alarm": self._acknowledge_alarm,
            "query_active_alarms": self._query_active_alarms,
        }
        self._alarm_listeners: dict[str, Callable[[list[AlarmTransition]], None]] = {}

    # -- sessions ------------------------------------------------------------------------

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

    async def OpenSession(
        self, request: pb.OpenSessionRequest, context: Context
    ) -> pb.OpenSessionReply:
        principal = await self._caller(context)
        name = request.client_session_name
        if len(name) > MAX_SESSION_NAME_CHARS:  # kept for the session's life and logged
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"client_session_name is {len(name):,} characters long; the limit is "
                f"{MAX_SESSION_NAME_CHARS}",
            )
        try:
            session = await self.sessions.open(name, principal.key_id)
            bind_session(session.log_fields)
        except SessionLimitError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except WorkerStartError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the session did not open: {exc}")
        lease = Duration()
        lease.FromMilliseconds(int(self.sessions.options.lease_s * 1000))
        return pb.OpenSessionReply(
            session_id=session.id,
            backend_name=BACKEND_NAME,
            gateway_protocol_version=GATEWAY_PROTOCOL_VERSION,
            worker_protocol_version=WORKER_PROTOCOL_VERSION,
            protocol_status=_status(pb.PROTOCOL_STATUS_CODE_OK, "OK"),
            lease_duration=lease,
        )

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Context
    ) -> pb.CloseSessionReply:
        # Idempotent as upstream: the owner's repeat close of a remembered session answers
        # CLOSED; another key gets NOT_FOUND, as for an id that never existed.
        principal = await self._caller(context)
        result = await self.sessions.close(
            request.session_id, key_id=principal.key_id, admin=principal.allows("admin")
        )
        if result is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, NO_SUCH_SESSION)
        assert result is not None
        return pb.CloseSessionReply(
            session_id=request.session_id,
            final_state=int(result.final_state),  # type: ignore[arg-type]
            protocol_status=_status(pb.PROTOCOL_STATUS_CODE_OK, "OK"),
            released_advise_count=result.released.advises,
            released_item_count=result.released.items,
            released_registration_count=result.released.registrations,
        )

    # -- commands ------------------------------------------------------------------------

    async def InvokeStream(
        self, requests: AsyncIterator[pb.MxCommandRequest], context: Context
    ) -> AsyncIterator[pb.MxCommandReply | bytes]:
        """The persistent command stream (our addition): each request is run as
        :meth:`Invoke` runs it, one at a time, answered in order. What Invoke answers
        with a gRPC status (a command kind the key may not use) ends the stream with it.
        The key was checked before the first request was read (``AuthInterceptor``)."""
        async for request in requests:
            yield await self.Invoke(request, context)

    async def Invoke(
        self, request: pb.MxCommandRequest, context: Context
    ) -> pb.MxCommandReply | bytes:
        command = request.command
        kind = command.kind
        scope = scope_for_command(kind)
        principal = current_principal.get()
        if principal is None or not principal.allows(scope):
            if self.stats is not None:
                self.stats.authorization_failed("command_scope")
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the API key lacks the {scope} scope needed by this command",
            )
        name = pb.MxCommandKind.Name(kind) if kind in PAYLOAD_OF_KIND or kind == 0 else str(kind)
        reply = pb.MxCommandReply(
            session_id=request.session_id,
            correlation_id=(
                f"gateway-correlation-{name.removeprefix(_KIND_PREFIX).lower()}"
                f"-{next(self._correlation)}"
            ),
            kind=kind,
        )
        payload = command.WhichOneof("payload")
        expected = PAYLOAD_OF_KIND.get(kind)
        if expected is None or payload != expected:
            why = (
                "the command kind is unspecified"
                if kind == 0
                else "the command has no payload"
                if payload is None
                else f"kind {name} does not match payload {payload}"
            )
            reply.protocol_status.CopyFrom(_status(pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST, why))
            return reply
        assert principal is not None
        session = self._find(request.session_id, principal)
        problem = self._session_problem(session)
        if problem is not None:
            reply.protocol_status.CopyFrom(problem)
            return reply
        assert session is not None
        bind_session(session.log_fields)
        session.touch()
        options = self.sessions.options
        if session.pending >= options.max_pending_commands:
            reply.protocol_status.CopyFrom(
                _status(
                    pb.PROTOCOL_STATUS_CODE_OVERLOADED,
                    f"the session has {options.max_pending_commands} commands in flight",
                )
            )
            return reply
        session.pending += 1
        handler = self._handlers[payload]
        body = getattr(command, payload)
        try:
            _check_value_sizes(payload, body, options.max_value_bytes)
            # Handlers give the loop back between slices of their work, which is also where
            # the timeout stops them (see _commands for the state a stopped bulk leaves).
            encoded = await _without_cycle(
                _within(handler(session, body, reply), options.command_timeout_s)
            )
        except asyncio.TimeoutError:
            log.info("a %s command timed out", payload)
            reply.protocol_status.CopyFrom(
                _status(
                    pb.PROTOCOL_STATUS_CODE_TIMEOUT,
                    f"the command did not finish within {options.command_timeout_s:g} s",
                )
            )
            return reply
        except MxAccessError as exc:
            reply.protocol_status.CopyFrom(
                _status(pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE, "MXAccess reported a failure")
            )
            reply.hresult = exc.hresult
            reply.diagnostic_message = exc.message
            _statuses(reply.statuses, exc.statuses)
            return reply
        except _BadRequest as exc:
            reply.protocol_status.CopyFrom(
                _status(pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST, str(exc))
            )
            return reply
        except WorkerLost as exc:  # the session's worker process died: the session faulted
            log.info("a %s command found the session's worker lost", payload)
            reply.protocol_status.CopyFrom(
                _status(pb.PROTOCOL_STATUS_CODE_SESSION_FAULTED, f"{exc}; close the session")
            )
            return reply
        except LimitError as exc:
            # A named limit: nothing was done, and no partial payload goes out.
            code = (
                pb.PROTOCOL_STATUS_CODE_OVERLOADED
                if exc.overloaded
                else pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST
            )
            result = reply.WhichOneof("result")
            if result is not None:
                reply.ClearField(result)
            reply.protocol_status.CopyFrom(_status(code, str(exc)))
            return reply
        finally:
            session.pending -= 1
            session.touch()
        if not reply.HasField("protocol_status"):
            reply.protocol_status.CopyFrom(_status(pb.PROTOCOL_STATUS_CODE_OK, "OK"))
        if encoded is not None:
            return reply.SerializeToString() + encoded
        return reply

    @staticmethod
    def _session_problem(session: Session | None) -> pb.ProtocolStatus | None:
        if session is None:
            return _status(pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND, NO_SUCH_SESSION)
        if session.state is SessionState.FAULTED:
            return _status(
                pb.PROTOCOL_STATUS_CODE_SESSION_FAULTED,
                f"the session faulted ({session.fault_message}); close it",
            )
        if session.state is not SessionState.READY:
            return _status(
                pb.PROTOCOL_STATUS_CODE_SESSION_NOT_READY,
                f"the session is {session.state.name.lower()}",
            )
        return None

    # reply sizes

    def _room(self) -> int:
        """Bytes a reply's rows or events may take (the message limit minus the rest)."""
        return self.sessions.options.max_message_bytes - REPLY_OVERHEAD_BYTES

    def _budget(self) -> ReplyBudget:
        return ReplyBudget(self._room())

    def _subscribe_reply(self) -> _EncodedRows:
        """Rows of a bulk add or subscribe (their budget is charged in _commands)."""
        return _EncodedRows("bulk_subscribe", _subscribe_rows_bytes, self._room(), "")

    def _handle_rows(self) -> _EncodedRows:
        """Rows of a bulk call on existing handles (such a call is refused up front when
        even minimal rows would not fit; past the room the rows are counted, not kept)."""
        return _EncodedRows(
            "bulk_subscribe",
            _subscribe_rows_bytes,
            self._room(),
            "the command ran but its rows cannot be returned; send fewer handles per call",
        )

    # single MXAccess calls

    async def _register(self, s: Session, p: pb.RegisterCommand, r: pb.MxCommandReply) -> None:
        handle = await s.runtime.register(p.client_name)
        r.register.server_handle = handle
        r.return_value.CopyFrom(to_mx_value(handle))

    async def _unregister(self, s: Session, p: pb.UnregisterCommand, r: pb.MxCommandReply) -> None:
        await s.runtime.unregister(p.server_handle)

    async def _add(
        self,
        s: Session,
        sh: int,
        ref: str,
        ctx: str,
        buffered: bool,
        out: pb.AddItemReply,
        r: pb.MxCommandReply,
    ) -> None:
        handle = await s.runtime.add_item(sh, ref, ctx, buffered=buffered)
        out.item_handle = handle
        r.return_value.CopyFrom(to_mx_value(handle))

    async def _add_item(self, s: Session, p: pb.AddItemCommand, r: pb.MxCommandReply) -> None:
        await self._add(s, p.server_handle, p.item_definition, "", False, r.add_item, r)

    async def _add_item2(self, s: Session, p: pb.AddItem2Command, r: pb.MxCommandReply) -> None:
        await self._add(
            s, p.server_handle, p.item_definition, p.item_context, False, r.add_item2, r
        )

    async def _add_buffered_item(
        self, s: Session, p: pb.AddBufferedItemCommand, r: pb.MxCommandReply
    ) -> None:
        await self._add(
            s, p.server_handle, p.item_definition, p.item_context, True, r.add_buffered_item, r
        )

    async def _remove_item(self, s: Session, p: pb.RemoveItemCommand, r: pb.MxCommandReply) -> None:
        await s.runtime.remove_item(p.server_handle, p.item_handle)

    async def _advise(self, s: Session, p: pb.AdviseCommand, r: pb.MxCommandReply) -> None:
        await s.runtime.advise(p.server_handle, p.item_handle, supervisory=False)

    async def _advise_supervisory(
        self, s: Session, p: pb.AdviseSupervisoryCommand, r: pb.MxCommandReply
    ) -> None:
        await s.runtime.advise(p.server_handle, p.item_handle, supervisory=True)

    async def _unadvise(self, s: Session, p: pb.UnAdviseCommand, r: pb.MxCommandReply) -> None:
        await s.runtime.unadvise(p.server_handle, p.item_handle)

    async def _write(self, s: Session, p: pb.WriteCommand, r: pb.MxCommandReply) -> None:
        await s.runtime.write(
            p.server_handle, p.item_handle, _write_request(p.value, user=p.user_id)
        )

    async def _write2(self, s: Session, p: pb.Write2Command, r: pb.MxCommandReply) -> None:
        request = _write_request(p.value, ts=_ts(p), user=p.user_id)
        await s.runtime.write(p.server_handle, p.item_handle, request)

    async def _write_secured(
        self, s: Session, p: pb.WriteSecuredCommand, r: pb.MxCommandReply
    ) -> None:
        request = _write_request(
            p.value, user=p.current_user_id, verifier=p.verifier_user_id, secured=True
        )
        await s.runtime.write(p.server_handle, p.item_handle, request)

    async def _write_secured2(
        self, s: Session, p: pb.WriteSecured2Command, r: pb.MxCommandReply
    ) -> None:
        request = _write_request(
            p.value, ts=_ts(p), user=p.current_user_id, verifier=p.verifier_user_id, secured=True
        )
        await s.runtime.write(p.server_handle, p.item_handle, request)

    async def _authenticate_user(
        self, s: Session, p: pb.AuthenticateUserCommand, r: pb.MxCommandReply
    ) -> None:
        user_id = await s.runtime.authenticate_user(
            p.server_handle, p.verify_user, p.verify_user_password
        )
        r.authenticate_user.user_id = user_id
        r.return_value.CopyFrom(to_mx_value(user_id))

    async def _archestra_user_to_id(
        self, s: Session, p: pb.ArchestrAUserToIdCommand, r: pb.MxCommandReply
    ) -> None:
        user_id = await s.runtime.archestra_user_to_id(p.server_handle, p.user_id_guid)
        r.archestra_user_to_id.user_id = user_id
        r.return_value.CopyFrom(to_mx_value(user_id))

    async def _suspend(self, s: Session, p: pb.SuspendCommand, r: pb.MxCommandReply) -> None:
        status = await s.runtime.suspend(p.server_handle, p.item_handle)
        r.statuses.append(status_to_pb(status))

    async def _activate(self, s: Session, p: pb.ActivateCommand, r: pb.MxCommandReply) -> None:
        status = await s.runtime.activate(p.server_handle, p.item_handle)
        r.statuses.append(status_to_pb(status))

    async def _set_buffered_update_interval(
        self, s: Session, p: pb.SetBufferedUpdateIntervalCommand, r: pb.MxCommandReply
    ) -> None:
        await s.runtime.set_buffered_update_interval(p.server_handle, p.update_interval_ms)

    # bulk

    async def _add_item_bulk(
        self, s: Session, p: pb.AddItemBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        out = self._subscribe_reply()
        await bulk.add_items(s.runtime, p.server_handle, p.tag_addresses, out, self._budget())
        return out.field()

    async def _advise_item_bulk(
        self, s: Session, p: pb.AdviseItemBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        self._budget().precheck(len(p.item_handles))
        out = self._handle_rows()
        await bulk.advise_items(
            s.runtime, p.server_handle, p.item_handles, out, supervisory=p.supervisory
        )
        return out.field()

    async def _remove_item_bulk(
        self, s: Session, p: pb.RemoveItemBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        self._budget().precheck(len(p.item_handles))
        out = self._handle_rows()
        await bulk.remove_items(s.runtime, p.server_handle, p.item_handles, out)
        return out.field()

    async def _unadvise_item_bulk(
        self, s: Session, p: pb.UnAdviseItemBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        self._budget().precheck(len(p.item_handles))
        out = self._handle_rows()
        await bulk.unadvise_items(s.runtime, p.server_handle, p.item_handles, out)
        return out.field()

    async def _subscribe_bulk(
        self, s: Session, p: pb.SubscribeBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        if p.buffered_update_interval_ms < 0:
            raise _BadRequest("buffered_update_interval_ms cannot be negative")
        out = self._subscribe_reply()
        await bulk.subscribe(
            s.runtime,
            p.server_handle,
            p.tag_addresses,
            out,
            buffered_interval_ms=p.buffered_update_interval_ms,
            supervisory=p.supervisory,
            budget=self._budget(),
        )
        return out.field()

    async def _unsubscribe_bulk(
        self, s: Session, p: pb.UnsubscribeBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        self._budget().precheck(len(p.item_handles))
        out = self._handle_rows()
        await bulk.unsubscribe(s.runtime, p.server_handle, p.item_handles, out)
        return out.field()

    async def _write_rows(
        self, s: Session, sh: int, entries: Sequence[Any], convert: Callable[[Any], WriteRequest]
    ) -> bytes:
        """The Write*Bulk family. Every entry is checked and converted first (a value over
        ``--max-value-bytes`` or out of range fails the whole command before anything is
        written), then converted again chunk by chunk as it is written, both passes in
        slices: 100k converted requests are never held at once (each is an object the
        garbage collector would walk)."""
        self._budget().precheck(len(entries))
        limit = self.sessions.options.max_value_bytes
        slicer = Slicer()
        for start in range(0, len(entries), CHUNK_ROWS):
            for index, entry in enumerate(entries[start : start + CHUNK_ROWS], start):
                size = entry.value.ByteSize()
                if size > limit:
                    raise too_large(f"the value of entry {index}", size, limit, "--max-value-bytes")
                convert(entry)
            await slicer.checkpoint()
        requests = _Converted(entries, convert)
        out = _EncodedRows(
            "bulk_write",
            write_reply_bytes,
            self._room(),
            "the writes ran (their OnWriteComplete events "
            "report each outcome); send fewer entries per call",
        )
        await bulk.write_items(s.runtime, sh, requests, out)
        return out.field()

    async def _write_bulk(self, s: Session, p: pb.WriteBulkCommand, r: pb.MxCommandReply) -> bytes:
        return await self._write_rows(
            s, p.server_handle, p.entries, lambda e: _write_request(e.value, user=e.user_id)
        )

    async def _write2_bulk(
        self, s: Session, p: pb.Write2BulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        return await self._write_rows(
            s,
            p.server_handle,
            p.entries,
            lambda e: _write_request(e.value, ts=_ts(e), user=e.user_id),
        )

    async def _write_secured_bulk(
        self, s: Session, p: pb.WriteSecuredBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        return await self._write_rows(
            s,
            p.server_handle,
            p.entries,
            lambda e: _write_request(
                e.value, user=e.current_user_id, verifier=e.verifier_user_id, secured=True
            ),
        )

    async def _write_secured2_bulk(
        self, s: Session, p: pb.WriteSecured2BulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        return await self._write_rows(
            s,
            p.server_handle,
            p.entries,
            lambda e: _write_request(
                e.value,
                ts=_ts(e),
                user=e.current_user_id,
                verifier=e.verifier_user_id,
                secured=True,
            ),
        )

    async def _read_bulk(self, s: Session, p: pb.ReadBulkCommand, r: pb.MxCommandReply) -> bytes:
        if p.timeout_ms < 0:
            raise _BadRequest("timeout_ms cannot be negative")
        timeout_s = (p.timeout_ms or 5000) / 1000.0
        # A chunk of tags at a time: each chunk's rows are encoded and dropped at once, and
        # the read stops as soon as the reply no longer fits (reads change nothing).
        room = self._room()
        parts: list[bytes] = []
        size = 0
        slicer = Slicer()
        for chunk in chunks(p.tag_addresses, READ_CHUNK_ROWS):
            rows = await s.runtime.read(p.server_handle, chunk, timeout_s)
            data = read_reply_bytes(rows, room, already=size)
            parts.append(data)
            size += len(data)
            await slicer.checkpoint()
        body = b"".join(parts)
        return _reply_field("bulk_read") + varint(len(body)) + body

    # control

    async def _ping(self, s: Session, p: pb.PingCommand, r: pb.MxCommandReply) -> None:
        await s.runtime.ping()

    async def _get_session_state(
        self, s: Session, p: pb.GetSessionStateCommand, r: pb.MxCommandReply
    ) -> None:
        r.session_state.state = int(s.state)  # type: ignore[assignment]

    async def _get_worker_info(
        self, s: Session, p: pb.GetWorkerInfoCommand, r: pb.MxCommandReply
    ) -> None:
        info = s.runtime.worker_info()
        r.worker_info.backend_name = info.backend_name
        r.worker_info.worker_protocol_version = info.worker_protocol_version
        r.worker_info.process_id = info.process_id
        r.worker_info.backend_version = info.backend_version

    async def _drain_events(
        self, s: Session, p: pb.DrainEventsCommand, r: pb.MxCommandReply
    ) -> None:
        if p.max_events < 0:
            raise _BadRequest("max_events cannot be negative")
        for data in s.events.drain(p.max_events, self._room()):
            r.drain_events.events.add().MergeFromString(data)
        r.drain_events.SetInParent()

    async def _shutdown_worker(
        self, s: Session, p: pb.ShutdownWorkerCommand, r: pb.MxCommandReply
    ) -> None:
        # Reply first, then close: the session ends right after this command.
        task = asyncio.get_running_loop().create_task(self._close_later(s.id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close_later(self, session_id: str) -> None:
        await asyncio.sleep(0)
        await self.sessions.close(session_id, message="the worker was shut down")

    # -- events --------------------------------------------------------------------------

    async def _attach(
        self, request: pb.StreamEventsRequest, context: Context
    ) -> tuple[Session, Subscriber]:
        session = self._find(request.session_id, await self._caller(context))
        if session is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, NO_SUCH_SESSION)
        assert session is not None
        bind_session(session.log_fields)
        if session.state is not SessionState.READY:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"the session is {session.state.name.lower()}"
            )
        after = request.after_worker_sequence if request.HasField("after_worker_sequence") else None
        try:
            sub = session.events.attach(after)
        except SubscriberRefused as exc:
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if exc.limit
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            await context.abort(code, str(exc))
        session.touch()
        return session, sub

    async def _events(
        self, request: pb.StreamEventsRequest, context: Context, *, batched: bool
    ) -> AsyncIterator[bytes]:
        session, sub = await self._attach(request, context)
        # Headers now, not with the first event: a client that must not miss an event it
        # is about to cause (a write's OnWriteComplete) waits for them to know it is
        # attached (see docs/protocol.md, "Write outcomes").
        await context.send_initial_metadata(())
        options = self.sessions.options
        max_events = options.batch_max_events if batched else 256
        budget = self.faults.open_stream() if self.faults is not None else None
        try:
            if sub.gap is not None:
                first, missing = sub.gap
                notice = fault_event(
                    session.id,
                    pb.STREAM_FAULT_KIND_REPLAY_GAP,
                    f"events {first}..{first + missing - 1} are no longer in the replay buffer",
                    first,
                    missing,
                    now=time.time(),
                ).SerializeToString()
                yield _frame(notice) if batched else notice
            while True:
                if budget is not None and budget.remaining <= 0:  # fault injection
                    if sub.end is None:
                        await budget.trip(sub, context)  # drop (raises) or stall
                        continue
                    sub.queue.clear()  # the stream ends: send nothing past the budget
                if sub.queue:
                    if budget is None:
                        items = sub.take(max_events, options.batch_max_bytes)
                    else:
                        items = sub.take(min(max_events, budget.remaining), options.batch_max_bytes)
                        budget.remaining -= len(items)
                    if batched:
                        yield b"".join(items)
                    else:
                        for item in items:
                            yield unframe(item)
                    continue
                end = sub.end
                if end is not None:
                    notice = fault_event(
                        session.id,
                        _END_KIND[end.reason],
                        end.message,
                        end.first_missing,
                        end.missing,
                        now=time.time(),
                    ).SerializeToString()
                    yield _frame(notice) if batched else notice
                    code = _END_CODE[end.reason]
                    if code is not None:
                        await context.abort(code, end.message)
                    return
                sub.wake.clear()
                await sub.wake.wait()
        finally:
            session.events.detach(sub)
            session.touch()

    def stream_handler(self, *, batched: bool) -> Callable[..., AsyncIterator[bytes]]:
        """StreamEvents (``batched=False``) or StreamEventBatches as an async generator."""
        return functools.partial(self._events, batched=batched)

    # -- alarms --------------------------------------------------------------------------

    async def _subscribe_alarms(
        self, s: Session, p: pb.SubscribeAlarmsCommand, r: pb.MxCommandReply
    ) -> None:
        prefix = p.subscription_expression.lower()
        log_ = s.events
        session_id = s.id
        monitor = self.alarms

        def listener(batch: list[AlarmTransition]) -> None:
            if log_.closed is not None:  # the session is gone
                monitor.remove_listener(listener)
                self._alarm_listeners.pop(session_id, None)
                return
            wanted = [t for t in batch if t.alarm.full_reference.lower().startswith(prefix)]
            if wanted:
                log_.publish(wanted)

        await self._unsubscribe_alarms(s, pb.UnsubscribeAlarmsCommand(), r)
        self.alarms.start()
        self.alarms.add_listener(listener)
        self._alarm_listeners[s.id] = listener

    async def _unsubscribe_alarms(
        self, s: Session, p: pb.UnsubscribeAlarmsCommand, r: pb.MxCommandReply
    ) -> None:
        listener = self._alarm_listeners.pop(s.id, None)
        if listener is not None:
            self.alarms.remove_listener(listener)

    async def _acknowledge_alarm(
        self, s: Session, p: pb.AcknowledgeAlarmCommand, r: pb.MxCommandReply
    ) -> None:
        if not _valid_guid(p.alarm_guid):
            raise _BadRequest("alarm_guid is not a GUID")
        problem = _ack_text_problem(p.operator_user, p.comment)
        if problem:
            raise _BadRequest(problem)
        status = self.alarms.acknowledge(p.alarm_guid, "", p.operator_user, p.comment)
        if not status.ok:
            raise MxAccessError(E_MX_OPERATION_FAILED, status.text, (status,))
        r.acknowledge_alarm.native_status = 0
        r.statuses.append(status_to_pb(status))

    async def _query_active_alarms(
        self, s: Session, p: pb.QueryActiveAlarmsCommand, r: pb.MxCommandReply
    ) -> None:
        snapshots = self.alarms.active(p.alarm_filter_prefix)
        r.query_active_alarms.snapshots.extend(alarm_snapshot_to_pb(a) for a in snapshots)
        r.query_active_alarms.SetInParent()

    async def AcknowledgeAlarm(
        self, request: pb.AcknowledgeAlarmRequest, context: Context
    ) -> pb.AcknowledgeAlarmReply:
        reply = pb.AcknowledgeAlarmReply(
            session_id=request.session_id,
            correlation_id=f"gateway-correlation-acknowledge_alarm-{next(self._correlation)}",
        )
        if not (request.alarm_guid or request.alarm_full_reference) or (
            request.alarm_guid and not _valid_guid(request.alarm_guid)
        ):
            reply.protocol_status.CopyFrom(
                _status(
                    pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST,
                    "give alarm_guid (a GUID) or alarm_full_reference",
                )
            )
            return reply
        problem = _ack_text_problem(request.operator_user, request.comment)
        if problem:
            reply.protocol_status.CopyFrom(
                _status(pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST, problem)
            )
            return reply
        status = self.alarms.acknowledge(
            request.alarm_guid, request.alarm_full_reference, request.operator_user, request.comment
        )
        reply.status.CopyFrom(status_to_pb(status))
        if status.ok:
            reply.protocol_status.CopyFrom(_status(pb.PROTOCOL_STATUS_CODE_OK, "OK"))
        else:
            reply.protocol_status.CopyFrom(
                _status(pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE, status.text)
            )
            reply.hresult = E_MX_OPERATION_FAILED
        return reply

    async def StreamAlarms(
        self, request: pb.StreamAlarmsRequest, context: Context
    ) -> AsyncIterator[pb.AlarmFeedMessage]:
        prefix = request.alarm_filter_prefix.lower()
        queue: asyncio.Queue[list[AlarmTransition] | None] = asyncio.Queue(ALARM_FEED_QUEUE)

        def end() -> None:
            while queue.full():  # make room for the end marker
                queue.get_nowait()
            queue.put_nowait(None)

        def listener(batch: list[AlarmTransition]) -> None:
            if not batch:  # the monitor closed (shutdown)
                end()
                return
            wanted = [t for t in batch if t.alarm.full_reference.lower().startswith(prefix)]
            if not wanted:
                return
            if queue.full():  # a subscriber this slow is disconnected, never silently thinned
                self.alarms.remove_listener(listener)
                end()
                return
            queue.put_nowait(wanted)

        active = self.alarms.active(request.alarm_filter_prefix)
        self.alarms.add_listener(listener)
        try:
            for snapshot in active:
                yield pb.AlarmFeedMessage(active_alarm=alarm_snapshot_to_pb(snapshot))
            yield pb.AlarmFeedMessage(
                snapshot_complete=pb.AlarmSnapshotComplete(active_alarm_count=len(active))
            )
            while True:
                batch = await queue.get()
                if batch is None:
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, "the alarm feed ended (shutdown or overflow)"
                    )
                    return
                for transition in batch:
                    yield pb.AlarmFeedMessage(transition=alarm_transition_to_pb(transition))
        finally:
            self.alarms.remove_listener(listener)

    async def QueryActiveAlarms(
        self, request: pb.QueryActiveAlarmsRequest, context: Context
    ) -> AsyncIterator[pb.ActiveAlarmSnapshot]:
        for snapshot in self.alarms.active(request.alarm_filter_prefix):
            yield alarm_snapshot_to_pb(snapshot)


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


def add_gateway_servicer(servicer: GatewayServicer, server: aio.Server) -> None:
    """Register the servicer; the event streams send pre-encoded bytes."""
    handlers = {
        "OpenSession": grpc.unary_unary_rpc_method_handler(
            servicer.OpenSession,
            request_deserializer=pb.OpenSessionRequest.FromString,
            response_serializer=pb.OpenSessionReply.SerializeToString,
        ),
        "CloseSession": grpc.unary_unary_rpc_method_handler(
            servicer.CloseSession,
            request_deserializer=pb.CloseSessionRequest.FromString,
            response_serializer=pb.CloseSessionReply.SerializeToString,
        ),
        "Invoke": grpc.unary_unary_rpc_method_handler(
            timed_invoke(servicer.Invoke, servicer.stats)
            if servicer.timed and servicer.stats is not None
            else servicer.Invoke,
            request_deserializer=pb.MxCommandRequest.FromString,
            response_serializer=_reply_bytes,
        ),
        "InvokeStream": grpc.stream_stream_rpc_method_handler(
            servicer.InvokeStream,
            request_deserializer=pb.MxCommandRequest.FromString,
            response_serializer=_reply_bytes,
        ),
        "StreamEvents": grpc.unary_stream_rpc_method_handler(
            servicer.stream_handler(batched=False),
            request_deserializer=pb.StreamEventsRequest.FromString,
            response_serializer=_raw,
        ),
        "StreamEventBatches": grpc.unary_stream_rpc_method_handler(
            servicer.stream_handler(batched=True),
            request_deserializer=pb.StreamEventsRequest.FromString,
            response_serializer=_raw,
        ),
        "AcknowledgeAlarm": grpc.unary_unary_rpc_method_handler(
            servicer.AcknowledgeAlarm,
            request_deserializer=pb.AcknowledgeAlarmRequest.FromString,
            response_serializer=pb.AcknowledgeAlarmReply.SerializeToString,
        ),
        "StreamAlarms": grpc.unary_stream_rpc_method_handler(
            servicer.StreamAlarms,
            request_deserializer=pb.StreamAlarmsRequest.FromString,
            response_serializer=pb.AlarmFeedMessage.SerializeToString,
        ),
        "QueryActiveAlarms": grpc.unary_stream_rpc_method_handler(
            servicer.QueryActiveAlarms,
            request_deserializer=pb.QueryActiveAlarmsRequest.FromString,
            response_serializer=pb.ActiveAlarmSnapshot.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("mxaccess_gateway.v1.MxAccessGateway", handlers),)
    )
