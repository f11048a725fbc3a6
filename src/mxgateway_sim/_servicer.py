"""The MxAccessGateway servicer: protobuf in, domain calls, protobuf out.

Nothing here knows how MXAccess is simulated: sessions come from the
:class:`~mxgateway_sim._sessions.SessionManager` and commands run against the session's
:class:`~mxgateway_sim._runtime.MxAccessRuntime`. Event streams send the bytes the session's
event log already encoded (the stream methods are registered with a pass-through serializer).

Split by concern: the command handlers in ``_svc_commands.py``, the event streams in
``_svc_events.py``, alarms in ``_svc_alarms.py``, shared helpers and state in
``_svc_common.py``; this module keeps the sessions, ``Invoke`` and the registration.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from mxgateway._grpcbatch import BatchFailed, Unusable, exchange, server_call
from mxgateway._version import GATEWAY_PROTOCOL_VERSION, WORKER_PROTOCOL_VERSION
from mxgateway.commands import scope_for_command
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim._alarms import AlarmMonitor
from mxgateway_sim._auth import (
    checks_own_requests,
    current_principal,
    malformed_reason,
    tolerant,
)
from mxgateway_sim._bodygate import EOF, BodyGate
from mxgateway_sim._domain import (
    AlarmTransition,
    MxAccessError,
)
from mxgateway_sim._faults import STREAM_OFF, FaultInjector
from mxgateway_sim._incidents import answered
from mxgateway_sim._limits import (
    MAX_SESSION_NAME_CHARS,
    LimitError,
)
from mxgateway_sim._oplog import bind_session
from mxgateway_sim._requestbytes import forget_request_bytes, parse_command
from mxgateway_sim._sessions import Session, SessionLimitError, SessionManager, SessionState
from mxgateway_sim._stats import GatewayStats, timed_invoke
from mxgateway_sim._svc_alarms import AlarmService
from mxgateway_sim._svc_commands import CommandHandlers
from mxgateway_sim._svc_common import (
    _KIND_PREFIX,
    _VALUE_PAYLOADS,
    BACKEND_NAME,
    NO_SUCH_SESSION,
    PAYLOAD_OF_KIND,
    Context,
    Handler,
    _BadRequest,
    _check_value_sizes,
    _raw,
    _reply_bytes,
    _reply_field,
    _status,
    _statuses,
    _within,
    log,
)
from mxgateway_sim._svc_events import EventStreams
from mxgateway_sim._wire import varint
from mxgateway_sim._workerclient import WorkerStartError
from mxgateway_sim._workerwire import WorkerLost

__all__ = ["GatewayServicer", "add_gateway_servicer"]


_INVOKE_STREAM = "/mxaccess_gateway.v1.MxAccessGateway/InvokeStream"

_parse_request = tolerant(parse_command)
"""What the interceptor makes of ``InvokeStream``'s deserializer (a malformed body is a
``_Malformed``, refused by :meth:`GatewayServicer._stream_command`), for the requests
:meth:`GatewayServicer._batched` receives as bytes."""


_ENDED = object()
"""What :meth:`GatewayServicer._batched` returns when the stream has ended."""

_STREAM_LOST = "the command stream lost a request; send it again"


def _kind_name(kind: int) -> str:
    """The enum name of a known kind (or UNSPECIFIED), else the number."""
    return pb.MxCommandKind.Name(kind) if kind in PAYLOAD_OF_KIND or kind == 0 else str(kind)  # type: ignore[arg-type]


_CORRELATION_PREFIX: dict[int, str] = {
    kind: f"gateway-correlation-{_kind_name(kind).removeprefix(_KIND_PREFIX).lower()}-"
    for kind in PAYLOAD_OF_KIND
}
"""Kind -> the start of its reply's ``correlation_id`` (the kinds of the table only)."""

_OK_STATUS = _status(pb.PROTOCOL_STATUS_CODE_OK, "OK").SerializeToString()
_OK_STATUS_FIELD = _reply_field("protocol_status") + varint(len(_OK_STATUS)) + _OK_STATUS
"""``protocol_status`` {code: OK, message: "OK"} as the bytes of ``MxCommandReply`` field 4."""

_OK_HEAD: dict[int, tuple[bytes, bytes]] = {
    kind: (prefix.encode(), b"\x18" + varint(kind) + _OK_STATUS_FIELD)
    for kind, prefix in _CORRELATION_PREFIX.items()
}
"""Kind -> (its correlation prefix, its ``kind`` field and the OK status) as bytes."""


def _joined(head: bytes, encoded: bytes | list[bytes]) -> bytes:
    """``head`` followed by a handler's encoded payload field (bytes, or its pieces)."""
    if type(encoded) is list:
        return b"".join([head, *encoded])  # one copy of a large read's rows
    return head + encoded  # type: ignore[operator]


def _answer(
    reply: pb.MxCommandReply,
    request: pb.MxCommandRequest,
    number: int,
    code: int | None,
    message: str,
) -> pb.MxCommandReply:
    """``reply`` with its header (session, correlation id, kind) and, unless ``code`` is
    None (the handler set it), the status ``code`` with ``message``."""
    kind = request.command.kind
    prefix = _CORRELATION_PREFIX.get(kind)
    if prefix is None:  # unspecified or newer than this table: not cached
        prefix = f"gateway-correlation-{_kind_name(kind).removeprefix(_KIND_PREFIX).lower()}-"
    reply.session_id = request.session_id
    reply.correlation_id = f"{prefix}{number}"
    reply.kind = kind
    if code is not None:
        status = reply.protocol_status
        status.code = code  # type: ignore[assignment]
        status.message = message
    return reply


class GatewayServicer(CommandHandlers, EventStreams, AlarmService):
    """Implements ``mxaccess_gateway.v1.MxAccessGateway``."""

    def __init__(
        self,
        sessions: SessionManager,
        alarms: AlarmMonitor,
        faults: FaultInjector | None = None,
        stats: GatewayStats | None = None,
        *,
        timed: bool = False,
        body_gate: BodyGate | None = None,
    ) -> None:
        self.sessions = sessions
        self.alarms = alarms
        self.faults = faults
        self.stats = stats
        self.timed = timed and stats is not None
        self.body_gate: BodyGate | None = body_gate
        """Bounds the wait for :meth:`InvokeStream`'s first request (the interceptor's)."""
        """Count and time every command (metrics on; see :func:`timed_invoke`)."""
        self.invoke: Callable[[pb.MxCommandRequest, Context], Awaitable[pb.MxCommandReply | bytes]]
        self.invoke = (
            timed_invoke(self.Invoke, stats) if self.timed and stats is not None else self.Invoke
        )
        """What runs one command for ``Invoke`` and for each of ``InvokeStream``'s."""
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

    @checks_own_requests
    async def InvokeStream(
        self, requests: AsyncIterator[pb.MxCommandRequest], context: Context
    ) -> AsyncIterator[pb.MxCommandReply | bytes]:
        """The persistent command stream (our addition): each request is run as
        :meth:`Invoke` runs it, one at a time, answered in order. What Invoke answers
        with a gRPC status (a command kind the key may not use) ends the stream with it.
        The key was checked before the first request was read (``AuthInterceptor``), and
        the first request is read through :attr:`body_gate` (it must arrive in time).

        A fault plan injected while the stream is open ends it ``UNIMPLEMENTED`` before the
        next command runs (as a stream opened under a plan is refused): the client sends
        that command, not yet run, through ``Invoke``, where the plan applies.

        Served without the interceptor's wrapper, it answers an unexpected error itself
        (INTERNAL with an incident id, :func:`~mxgateway_sim._incidents.answered`)."""
        try:
            gate = self.body_gate
            if gate is not None:
                principal = current_principal.get()
                first = await gate.first(context, principal.key_id if principal else None)
                if first is EOF:
                    return
                yield await self._stream_command(first, context)  # with the headers
                call = server_call(context)
                if call is not None:
                    unsent = await self._batched(call, context)
                    if unsent is _ENDED:
                        return
                    if isinstance(unsent, bytes):
                        yield unsent
            async for request in requests:
                yield await self._stream_command(request, context)
        except Exception as exc:
            if not await answered(exc, context, _INVOKE_STREAM):
                raise

    async def _batched(self, call: object, context: Context) -> object:
        """The rest of :meth:`InvokeStream` after its first reply: each reply is sent and
        the next request received in one gRPC batch (:mod:`mxgateway._grpcbatch`), one
        completion a command instead of one for the reply and one for the request.
        Returns :data:`_ENDED` when the client half-closed (after the last reply went out)
        or the call ended. Where this grpcio's internals differ from what batches need,
        returns the reply not yet sent (None: none) for :meth:`InvokeStream` to send and
        go on without batches; when a request may have been received and lost meanwhile,
        ends the stream ``UNAVAILABLE`` (the command did not run: a client sends it again)."""
        reply: bytes | None = None
        while True:
            try:
                data = await exchange(call, reply)
            except BatchFailed:
                return _ENDED  # the call ended (the client went away): nobody to answer
            except Unusable as exc:
                if exc.sent:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, _STREAM_LOST)
                return reply
            if data is None:
                return _ENDED  # the client half-closed
            reply = _reply_bytes(await self._stream_command(_parse_request(data), context))

    async def _stream_command(self, request: object, context: Context) -> pb.MxCommandReply | bytes:
        """One request of :meth:`InvokeStream`: refused if it did not parse or a fault plan
        is in force, else run as :meth:`Invoke` runs it."""
        if type(request) is not pb.MxCommandRequest:  # a body that did not parse
            reason = malformed_reason(request) or "not an MxCommandRequest"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
        faults = self.faults
        if faults is not None and faults.active:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, STREAM_OFF)
        try:
            return await self.invoke(request, context)
        finally:
            forget_request_bytes()  # one its handler did not take stays with the stream

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
        number = next(self._correlation)
        # Empty: the header (session, correlation id, kind) is set only on a refusal; an
        # answered command's header and OK status are written as bytes (see the end).
        reply = pb.MxCommandReply()
        payload = command.WhichOneof("payload")
        expected = PAYLOAD_OF_KIND.get(kind)
        if expected is None or payload != expected:
            why = (
                "the command kind is unspecified"
                if kind == 0
                else "the command has no payload"
                if payload is None
                else f"kind {_kind_name(kind)} does not match payload {payload}"
            )
            return _answer(reply, request, number, pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST, why)
        assert principal is not None
        sid = request.session_id  # (each read of a message field makes a new str)
        session = self._find(sid, principal)
        if session is None or session.state is not SessionState.READY:
            problem = self._session_problem(session)
            assert problem is not None
            return _answer(reply, request, number, problem.code, problem.message)
        bind_session(session.log_fields)
        session.touch()
        options = self.sessions.options
        if session.pending >= options.max_pending_commands:
            return _answer(
                reply,
                request,
                number,
                pb.PROTOCOL_STATUS_CODE_OVERLOADED,
                f"the session has {options.max_pending_commands} commands in flight",
            )
        session.pending += 1
        handler = self._handlers[payload]
        body = getattr(command, payload)
        try:
            if payload in _VALUE_PAYLOADS:  # a single Write* (the check's own test)
                _check_value_sizes(payload, body, options.max_value_bytes)
            # Handlers give the loop back between slices of their work, which is also where
            # the timeout stops them (see _commands for the state a stopped bulk leaves).
            encoded = await _within(handler(session, body, reply), options.command_timeout_s)
        except asyncio.TimeoutError:
            log.info("a %s command timed out", payload)
            return _answer(
                reply,
                request,
                number,
                pb.PROTOCOL_STATUS_CODE_TIMEOUT,
                f"the command did not finish within {options.command_timeout_s:g} s",
            )
        except MxAccessError as exc:
            reply.hresult = exc.hresult
            reply.diagnostic_message = exc.message
            _statuses(reply.statuses, exc.statuses)
            return _answer(
                reply,
                request,
                number,
                pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE,
                "MXAccess reported a failure",
            )
        except _BadRequest as exc:
            return _answer(
                reply, request, number, pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST, str(exc)
            )
        except WorkerLost as exc:  # the session's worker process died: the session faulted
            log.info("a %s command found the session's worker lost", payload)
            return _answer(
                reply,
                request,
                number,
                pb.PROTOCOL_STATUS_CODE_SESSION_FAULTED,
                f"{exc}; close the session",
            )
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
            return _answer(reply, request, number, code, str(exc))
        finally:
            session.pending -= 1
            session.touch()
        if reply.HasField("protocol_status"):  # the handler gave its own verdict
            _answer(reply, request, number, None, "")
            if encoded is not None:
                return _joined(reply.SerializeToString(), encoded)
            return reply
        # Answered: the header and the OK status as bytes, then what the handler filled
        # (fields 5 and up) and its encoded payload: exactly what serializing the whole
        # reply gives (fields in number order), without building the header fields.
        prefix, tail = _OK_HEAD[kind]
        sid_bytes = sid.encode()
        correlation = b"%s%d" % (prefix, number)
        head = b"".join(
            (
                b"\x0a",
                varint(len(sid_bytes)),
                sid_bytes,
                b"\x12",
                varint(len(correlation)),
                correlation,
                tail,
            )
        )
        if encoded is not None:
            return _joined(head + reply.SerializeToString(), encoded)
        return head + reply.SerializeToString()

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
            servicer.invoke,
            request_deserializer=parse_command,
            response_serializer=_reply_bytes,
        ),
        "InvokeStream": grpc.stream_stream_rpc_method_handler(
            servicer.InvokeStream,
            request_deserializer=parse_command,
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
