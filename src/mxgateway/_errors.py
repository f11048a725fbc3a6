"""The exception tree of the gateway clients, and the one table that maps codes onto it.

::

    MxGatewayError                          root; .message, .grpc_code, .protocol_code, .reply,
    │                                       .details, .trailing_metadata, .session_id
    ├── MxGatewayUnavailableError           UNAVAILABLE; WORKER_UNAVAILABLE
    ├── MxGatewayTimeoutError               DEADLINE_EXCEEDED; TIMEOUT
    │   └── MxGatewayWriteTimeoutError      a write's OnWriteComplete did not arrive in time
    ├── MxGatewayCancelledError             CANCELLED; CANCELED
    ├── MxGatewayAuthenticationError        UNAUTHENTICATED
    ├── MxGatewayPermissionError            PERMISSION_DENIED; UNAUTHORIZED_COMMAND
    ├── MxGatewayNotFoundError              NOT_FOUND
    │   └── MxGatewaySessionNotFoundError   SESSION_NOT_FOUND (and NOT_FOUND on session RPCs)
    ├── MxGatewaySessionStateError          FAILED_PRECONDITION (e.g. a second subscriber)
    │   ├── MxGatewaySessionNotReadyError   SESSION_NOT_READY
    │   └── MxGatewaySessionFaultedError    SESSION_FAULTED
    ├── MxGatewayInvalidRequestError        INVALID_ARGUMENT, OUT_OF_RANGE, ALREADY_EXISTS;
    │                                       INVALID_REQUEST
    ├── MxGatewayOverloadedError            RESOURCE_EXHAUSTED (but a message over a size
    │                                       limit: InvalidRequest); OVERLOADED
    ├── MxGatewayAbortedError               ABORTED
    ├── MxGatewayProtocolError              UNKNOWN, DATA_LOSS; PROTOCOL_VIOLATION,
    │   │                                   UNSPECIFIED, and replies that break the contract
    │   ├── MxGatewayInternalError          INTERNAL; .incident_id: the gateway's log has
    │   │                                   the failure under that id
    │   └── MxGatewayUnimplementedError     UNIMPLEMENTED
    ├── MxAccessError                       MXACCESS_FAILURE: MXAccess ran and failed;
    │                                       .reply, .hresult, .statuses (and .completion:
    │                                       a write's failed OnWriteComplete)
    └── ClientClosedError (RuntimeError)    the client/session/transport was already closed

gRPC status codes (``grpc.StatusCode``) and gateway protocol codes (``ProtocolStatusCode``)
map to classes through :data:`GRPC_STATUS_ERRORS` and :data:`PROTOCOL_STATUS_ERRORS`; the
``OK`` codes map to ``None``. Errors are always raised ``from`` the underlying
``grpc.aio.AioRpcError`` (or carry the offending reply). No message ever contains an API key:
every message passes through :func:`redact`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool, message_factory

from mxgateway._enums import enum_name
from mxgateway._incident import incident_of
from mxgateway._logsafe import get_logger
from mxgateway._status import describe_status, failed_statuses
from mxgateway.generated import mxaccess_gateway_pb2 as pb

if TYPE_CHECKING:
    from google.protobuf.message import Message

__all__ = [
    "GRPC_STATUS_ERRORS",
    "PROTOCOL_STATUS_ERRORS",
    "ClientClosedError",
    "MxAccessError",
    "MxGatewayAbortedError",
    "MxGatewayAuthenticationError",
    "MxGatewayCancelledError",
    "MxGatewayError",
    "MxGatewayInternalError",
    "MxGatewayInvalidRequestError",
    "MxGatewayNotFoundError",
    "MxGatewayOverloadedError",
    "MxGatewayPermissionError",
    "MxGatewayProtocolError",
    "MxGatewaySessionFaultedError",
    "MxGatewaySessionNotFoundError",
    "MxGatewaySessionNotReadyError",
    "MxGatewaySessionStateError",
    "MxGatewayTimeoutError",
    "MxGatewayUnavailableError",
    "MxGatewayUnimplementedError",
    "MxGatewayWriteTimeoutError",
    "check_mxaccess",
    "error_from_protocol_status",
    "error_from_rpc_error",
    "raise_for_protocol_status",
    "redact",
]

_log = get_logger(__name__)
_log.addHandler(logging.NullHandler())

_KEY_PATTERNS = (
    re.compile(r"(?i)(bearer)\s+\S+"),
    re.compile(r"(?i)mxgw_[A-Za-z0-9]+_\S+"),
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove API keys (and any given secrets) from ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = _KEY_PATTERNS[0].sub(r"\1 <redacted>", text)
    return _KEY_PATTERNS[1].sub("<redacted>", text)


class MxGatewayError(Exception):
    """Root of every error raised by the gateway clients.

    Attributes:
        message: Human-readable explanation (never contains an API key).
        grpc_code: The gRPC status code, when the failure was a gRPC error.
        protocol_code: The ``ProtocolStatusCode`` value, when the gateway reported one.
        reply: The reply message that carried the failure, when there was one.
        session_id: The session the call was for, when known.
        details: The gRPC status details (redacted), for gRPC failures.
        trailing_metadata: The gRPC trailing metadata as ``(key, value)`` pairs.
    """

    details: str = ""
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()

    def __init__(
        self,
        message: str,
        *,
        grpc_code: grpc.StatusCode | None = None,
        protocol_code: int | None = None,
        reply: Message | None = None,
        session_id: str | None = None,
    ) -> None:
        self.message = redact(message)
        self.grpc_code = grpc_code
        self.protocol_code = protocol_code
        self.reply = reply
        self.session_id = session_id
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable (e.g. across process pools) whatever the subclass's __init__ takes.
        # Generated messages are carried as bytes: their classes cannot be pickled by name.
        state = dict(self.__dict__)
        reply = state.pop("reply", None)
        completion = state.pop("completion", None)
        for derived in ("statuses", "failed_statuses"):
            state.pop(derived, None)
        packed = None
        if reply is not None:
            packed = (reply.DESCRIPTOR.full_name, reply.SerializeToString())
        event = completion.SerializeToString() if completion is not None else None
        return (_rebuild, (type(self), self.message, packed, event), state)


def _rebuild(
    cls: type[MxGatewayError],
    message: str,
    packed: tuple[str, bytes] | None,
    completion: bytes | None = None,
) -> MxGatewayError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    reply = None
    if packed is not None:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(packed[0])
        reply = message_factory.GetMessageClass(descriptor).FromString(packed[1])
    err.reply = reply
    if isinstance(err, MxAccessError) and isinstance(reply, pb.MxCommandReply):
        err.completion = pb.MxEvent.FromString(completion) if completion is not None else None
        source = err.completion.on_write_complete if err.completion is not None else reply
        err.statuses = tuple(source.statuses)
        err.failed_statuses = failed_statuses(err.statuses)
    return err


class MxGatewayUnavailableError(MxGatewayError):
    """The gateway (or the session's worker) cannot be reached; retrying later may work."""


class MxGatewayTimeoutError(MxGatewayError):
    """The call's deadline passed, or the gateway's command timeout expired.

    After a timed-out command the session state is unknown: check it or close the session
    before reusing its handles.
    """


class MxGatewayWriteTimeoutError(MxGatewayTimeoutError):
    """A write was accepted, but its ``OnWriteComplete`` did not arrive in time.

    The write may still take effect: only its outcome is unknown. ``server_handle`` and
    ``item_handle`` name the item.
    """

    server_handle: int = 0
    item_handle: int = 0


class MxGatewayCancelledError(MxGatewayError):
    """The call was cancelled (by the gateway, or by closing the channel)."""


class MxGatewayAuthenticationError(MxGatewayError):
    """No API key, or the gateway rejected it."""


class MxGatewayPermissionError(MxGatewayError):
    """The API key lacks the scope the call (or command kind) needs."""


class MxGatewayNotFoundError(MxGatewayError):
    """Something the call names does not exist."""


class MxGatewaySessionNotFoundError(MxGatewayNotFoundError):
    """No session with that id exists (never opened, closed, or expired)."""


class MxGatewaySessionStateError(MxGatewayError):
    """The session (or stream) is not in a state that allows the call."""


class MxGatewaySessionNotReadyError(MxGatewaySessionStateError):
    """The session exists but cannot take commands now (opening or closing)."""


class MxGatewaySessionFaultedError(MxGatewaySessionStateError):
    """The session faulted (worker crash, event overflow); only closing it is possible."""


class MxGatewayInvalidRequestError(MxGatewayError):
    """The gateway rejected the request as malformed."""


class MxGatewayOverloadedError(MxGatewayError):
    """The gateway or session is at a limit (sessions, pending commands, stream queue)."""


class MxGatewayAbortedError(MxGatewayError):
    """The gateway aborted the call (a conflict); retrying may work."""


class MxGatewayProtocolError(MxGatewayError):
    """The gateway failed internally or answered outside the contract."""


class MxGatewayInternalError(MxGatewayProtocolError):
    """The gateway failed unexpectedly (``INTERNAL``): a fault of the gateway, not of the call.

    Attributes:
        incident_id: The id under which the gateway logged the failure (its traceback),
            when the gateway gave one; the message says so, never the failure itself.
    """

    incident_id: str | None = None


class MxGatewayUnimplementedError(MxGatewayProtocolError):
    """The gateway does not implement the called RPC."""


class ClientClosedError(MxGatewayError, RuntimeError):
    """The client, session or transport was used after it was closed."""


class MxAccessError(MxGatewayError):
    """MXAccess ran the command and reported a failure.

    Attributes:
        reply: The raw ``MxCommandReply``, untouched.
        hresult: The HRESULT of the MXAccess call (negative means failure).
        statuses: The reply's ``MxStatusProxy`` records.
        failed_statuses: The records whose ``category`` is a failure (not OK, PENDING or
            unset; ``success`` is COM's raw number and decides nothing).
        status_descriptions: ``failed_statuses`` decoded into readable text.
        kind: The ``MxCommandKind`` name of the failed command.
        completion: For a write whose reply was OK but whose ``OnWriteComplete`` reported
            the failure (upstream semantics): that ``MxEvent``; ``statuses`` are then its
            statuses. ``None`` for a failure of the call itself.
    """

    reply: pb.MxCommandReply

    def __init__(self, reply: pb.MxCommandReply, *, completion: pb.MxEvent | None = None) -> None:
        self.hresult = reply.hresult
        self.completion = completion
        source = completion.on_write_complete if completion is not None else reply
        self.statuses: tuple[pb.MxStatusProxy, ...] = tuple(source.statuses)
        self.failed_statuses = failed_statuses(self.statuses)
        self.status_descriptions = tuple(describe_status(s) for s in self.failed_statuses)
        self.kind = _kind_name(reply.kind)
        if completion is not None:
            parts = [f"MXAccess {self.kind} failed (OnWriteComplete #{completion.worker_sequence})"]
        else:
            parts = [f"MXAccess {self.kind} failed: hresult 0x{reply.hresult & 0xFFFFFFFF:08X}"]
        if self.status_descriptions:
            parts.append("; ".join(self.status_descriptions))
        extra = reply.diagnostic_message
        if completion is None:
            extra = extra or reply.protocol_status.message
        # Skip text that only repeats a status's diagnostic text.
        if extra and not any(
            s.diagnostic_text and s.diagnostic_text in extra for s in self.failed_statuses
        ):
            parts.append(extra)
        super().__init__(
            " - ".join(parts),
            protocol_code=reply.protocol_status.code,
            reply=reply,
            session_id=reply.session_id or None,
        )


def _kind_name(kind: int) -> str:
    return enum_name(pb.MxCommandKind, kind)


GRPC_STATUS_ERRORS: dict[grpc.StatusCode, type[MxGatewayError] | None] = {
    grpc.StatusCode.OK: None,
    grpc.StatusCode.CANCELLED: MxGatewayCancelledError,
    grpc.StatusCode.UNKNOWN: MxGatewayProtocolError,
    grpc.StatusCode.INVALID_ARGUMENT: MxGatewayInvalidRequestError,
    grpc.StatusCode.DEADLINE_EXCEEDED: MxGatewayTimeoutError,
    grpc.StatusCode.NOT_FOUND: MxGatewayNotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: MxGatewayInvalidRequestError,
    grpc.StatusCode.PERMISSION_DENIED: MxGatewayPermissionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: MxGatewayOverloadedError,
    grpc.StatusCode.FAILED_PRECONDITION: MxGatewaySessionStateError,
    grpc.StatusCode.ABORTED: MxGatewayAbortedError,
    grpc.StatusCode.OUT_OF_RANGE: MxGatewayInvalidRequestError,
    grpc.StatusCode.UNIMPLEMENTED: MxGatewayUnimplementedError,
    grpc.StatusCode.INTERNAL: MxGatewayInternalError,
    grpc.StatusCode.UNAVAILABLE: MxGatewayUnavailableError,
    grpc.StatusCode.DATA_LOSS: MxGatewayProtocolError,
    grpc.StatusCode.UNAUTHENTICATED: MxGatewayAuthenticationError,
}
"""Every ``grpc.StatusCode`` -> the class raised for it (``None``: not an error)."""

PROTOCOL_STATUS_ERRORS: dict[int, type[MxGatewayError] | None] = {
    pb.PROTOCOL_STATUS_CODE_UNSPECIFIED: MxGatewayProtocolError,
    pb.PROTOCOL_STATUS_CODE_OK: None,
    pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST: MxGatewayInvalidRequestError,
    pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND: MxGatewaySessionNotFoundError,
    pb.PROTOCOL_STATUS_CODE_SESSION_NOT_READY: MxGatewaySessionNotReadyError,
    pb.PROTOCOL_STATUS_CODE_WORKER_UNAVAILABLE: MxGatewayUnavailableError,
    pb.PROTOCOL_STATUS_CODE_TIMEOUT: MxGatewayTimeoutError,
    pb.PROTOCOL_STATUS_CODE_CANCELED: MxGatewayCancelledError,
    pb.PROTOCOL_STATUS_CODE_PROTOCOL_VIOLATION: MxGatewayProtocolError,
    pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE: MxAccessError,
    pb.PROTOCOL_STATUS_CODE_OVERLOADED: MxGatewayOverloadedError,
    pb.PROTOCOL_STATUS_CODE_UNAUTHORIZED_COMMAND: MxGatewayPermissionError,
    pb.PROTOCOL_STATUS_CODE_SESSION_FAULTED: MxGatewaySessionFaultedError,
}
"""Every ``ProtocolStatusCode`` value -> the class raised for it (``None``: not an error)."""


_TOO_LARGE = re.compile(
    r"(CLIENT|SERVER): (Sent|Received) message larger than max \((\d+) vs\. (\d+)\)"
)
_LIMIT_OWNER = {
    "CLIENT": "the client's {limit:,}-byte message limit (ClientOptions.max_message_bytes)",
    "SERVER": "the gateway's {limit:,}-byte message limit (mxgw-sim --max-message-bytes)",
}


def _message_too_large(details: str) -> str | None:
    """A clear sentence for gRPC's "message larger than max" (None for anything else)."""
    match = _TOO_LARGE.search(details)
    if match is None:
        return None
    side, direction, size, limit = match.groups()
    request = (side == "CLIENT") == (direction == "Sent")
    owner = _LIMIT_OWNER[side].format(limit=int(limit))
    return f"the {'request' if request else 'reply'} is {int(size):,} bytes, over {owner}"


def error_from_rpc_error(
    exc: grpc.aio.AioRpcError,
    *,
    session_id: str | None = None,
    secrets: Sequence[str | None] = (),
    what: str = "call",
) -> MxGatewayError:
    """Map a gRPC error to its ``MxGateway*`` class (the caller raises it ``from exc``).

    ``session_id`` marks a session-scoped RPC: NOT_FOUND then means the session is unknown.
    ``secrets`` are removed from the message in addition to anything that looks like a key.
    """
    code = exc.code()
    cls = GRPC_STATUS_ERRORS.get(code) or MxGatewayProtocolError
    if session_id is not None and cls is MxGatewayNotFoundError:
        cls = MxGatewaySessionNotFoundError
    details = exc.details() or ""
    name = code.name if code is not None else "UNKNOWN"
    message = f"{what} failed with {name}"
    too_large = _message_too_large(details) if code is grpc.StatusCode.RESOURCE_EXHAUSTED else None
    if too_large is not None:
        # A message over a size limit is a request to change, not an overloaded gateway.
        cls = MxGatewayInvalidRequestError
        message += f": {too_large}"
    elif details:
        incident = incident_of(details) if cls is MxGatewayInternalError else None
        if incident is not None:
            message += f": the gateway failed unexpectedly; look in its log for incident {incident}"
        else:
            message += f": {details}"
    if session_id is not None:
        message += f" (session {session_id})"
    err = cls(redact(message, secrets), grpc_code=code, session_id=session_id)
    err.details = redact(details, secrets)
    if isinstance(err, MxGatewayInternalError):
        err.incident_id = incident_of(details)
    try:
        trailers: Any = exc.trailing_metadata() or ()
        err.trailing_metadata = tuple((str(k), v) for k, v in trailers)
    except Exception:  # pragma: no cover - a call object without trailers
        err.trailing_metadata = ()
    return err


def error_from_protocol_status(
    reply: Message,
    status: pb.ProtocolStatus,
    *,
    session_id: str | None = None,
    what: str = "call",
) -> MxGatewayError | None:
    """Return the error a non-OK ``ProtocolStatus`` stands for, or ``None`` when OK.

    ``MXACCESS_FAILURE`` gives an :class:`MxAccessError` only for an ``MxCommandReply``;
    the raw methods skip this function for that code.
    """
    code = status.code
    if code == pb.PROTOCOL_STATUS_CODE_OK:
        return None
    cls = PROTOCOL_STATUS_ERRORS.get(code, MxGatewayProtocolError)
    if cls is None:  # pragma: no cover - only OK maps to None
        return None
    if cls is MxAccessError:
        if isinstance(reply, pb.MxCommandReply):
            return MxAccessError(reply)
        cls = MxGatewayProtocolError
    name = enum_name(pb.ProtocolStatusCode, code)
    message = f"{what} failed with {name}"
    if status.message:
        message += f": {status.message}"
    diagnostic = getattr(reply, "diagnostic_message", "")
    if diagnostic and diagnostic != status.message:
        message += f" ({diagnostic})"
    if session_id is not None:
        message += f" (session {session_id})"
    return cls(message, protocol_code=code, reply=reply, session_id=session_id)


def raise_for_protocol_status(
    reply: Message,
    status: pb.ProtocolStatus,
    *,
    session_id: str | None = None,
    what: str = "call",
) -> None:
    """Raise what :func:`error_from_protocol_status` returns (nothing for OK).

    The error is not left in a local: ``err = ...; raise err`` keeps it in the frame that
    its own traceback keeps, a cycle holding the reply (and the caller's request) until a
    collection walks it, for every refused command.
    """
    err = error_from_protocol_status(reply, status, session_id=session_id, what=what)
    if err is not None:
        try:
            raise err
        finally:
            del err


def check_mxaccess(reply: pb.MxCommandReply) -> pb.MxCommandReply:
    """Raise :class:`MxAccessError` when MXAccess reported a failure in ``reply``.

    A failure is the ``MXACCESS_FAILURE`` protocol code, a negative HRESULT, or a status
    whose ``category`` is a failure (see :func:`mxgateway._status.status_failed`: OK,
    PENDING and an unset category are not; ``success`` is COM's raw number, not a verdict).
    Per-entry failures of bulk replies are not failures here.
    """
    if (
        reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE
        or reply.hresult < 0
        or (reply.statuses and failed_statuses(reply.statuses))
    ):
        raise MxAccessError(reply)
    return reply
