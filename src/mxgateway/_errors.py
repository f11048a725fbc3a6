"""The exception tree of the gateway clients, and the one table that maps codes onto it.

::

    MxGatewayError                          root; .message, .grpc_code, .protocol_code, .reply,
    │                                       .details, .trailing_metadata, .session_id
    ├── MxGatewayUnavailableError           UNAVAILABLE; WORKER_UNAVAILABLE
    ├── MxGatewayTimeoutError               DEADLINE_EXCEEDED; TIMEOUT
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
    ├── MxGatewayProtocolError              UNKNOWN, INTERNAL, DATA_LOSS; PROTOCOL_VIOLATION,
    │   │                                   UNSPECIFIED, and replies that break the contract
    │   └── MxGatewayUnimplementedError     UNIMPLEMENTED
    ├── MxAccessError                       MXACCESS_FAILURE: MXAccess ran and failed;
    │                                       .reply, .hresult, .statuses
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
    "check_mxaccess",
    "error_from_protocol_status",
    "error_from_rpc_error",
    "redact",
]

_log = logging.getLogger(__name__)
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
        for derived in ("statuses", "failed_statuses"):
            state.pop(derived, None)
        packed = None
        if reply is not None:
            packed = (reply.DESCRIPTOR.full_name, reply.SerializeToString())
        return (_rebuild, (type(self), self.message, packed), state)


def _rebuild(
    cls: type[MxGatewayError], message: str, packed: tuple[str, bytes] | None
) -> MxGatewayError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    reply = None
    if packed is not None:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(packed[0])
        reply = message_factory.GetMessageClass(descriptor).FromString(packed[1])
    err.reply = reply
    if isinstance(err, MxAccessError) and isinstance(reply, pb.MxCommandReply):
        err.statuses = tuple(reply.statuses)
        err.failed_statuses = tuple(s for s in err.statuses if s.success == 0)
    return err


class MxGatewayUnavailableError(MxGatewayError):
    """The gateway (or the session's worker) cannot be reached; retrying later may work."""


class MxGatewayTimeoutError(MxGatewayError):
    """The call's deadline passed, or the gateway's command timeout expired.

    After a timed-out command the session state is unknown: check it or close the session
    before reusing its handles.
    """


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


class MxGatewayUnimplementedError(MxGatewayProtocolError):
    """The gateway does not implement the called RPC."""


class ClientClosedError(MxGatewayError, RuntimeError):
    """The client, session or transport was used after it was closed."""


# MxStatusDetail names (MXAccess's detail codes) for readable MxAccessError messages.
_DETAIL_NAMES: dict[int, str] = {
    0: "MX_S_Success",
    1: "MX_E_RequestTimedOut",
    2: "MX_E_PlatformCommunicationError",
    3: "MX_E_InvalidPlatformId",
    4: "MX_E_InvalidEngineId",
    5: "MX_E_EngineCommunicationError",
    6: "MX_E_InvalidReference",
    7: "MX_E_NoGalaxyRepository",
    8: "MX_E_InvalidObjectId",
    9: "MX_E_ObjectSignatureMismatch",
    10: "MX_E_AttributeSignatureMismatch",
    11: "MX_E_ResolvingAttribute",
    12: "MX_E_ResolvingObject",
    13: "MX_E_WrongDataType",
    14: "MX_E_WrongNumberOfDimensions",
    15: "MX_E_InvalidIndex",
    16: "MX_E_IndexOutOfOrder",
    17: "MX_E_DimensionDoesNotExist",
    18: "MX_E_ConversionNotSupported",
    19: "MX_E_UnableToConvertString",
    20: "MX_E_Overflow",
    21: "MX_E_NmxVersionMismatch",
    22: "MX_E_NmxInvalidCommand",
    23: "MX_E_LmxVersionMismatch",
    24: "MX_E_LmxInvalidCommand",
    25: "MX_E_GalaxyRepositoryBusy",
    26: "MX_E_EngineOverloaded",
    1000: "MX_E_InvalidPrimitiveId",
    1001: "MX_E_InvalidAttributeId",
    1002: "MX_E_InvalidPropertyId",
    1003: "MX_E_IndexOutOfRange",
    1004: "MX_E_DataOutOfRange",
    1005: "MX_E_IncorrectDataType",
    1006: "MX_E_NotReadable",
    1007: "MX_E_NotWriteable",
    1008: "MX_E_WriteAccessDenied",
    1009: "MX_E_UnknownError",
    1010: "MX_E_ObjectInitializing",
    1011: "MX_E_EngineInitializing",
    1012: "MX_E_SecuredWrite",
    1013: "MX_E_VerifiedWrite",
}


def describe_status(status: pb.MxStatusProxy) -> str:
    """One-line description of an ``MxStatusProxy`` (category, source, detail name)."""
    category = pb.MxStatusCategory.Name(status.category).removeprefix("MX_STATUS_CATEGORY_")
    source = pb.MxStatusSource.Name(status.detected_by).removeprefix("MX_STATUS_SOURCE_")
    detail = _DETAIL_NAMES.get(status.detail, "unknown detail")
    text = f"{category} detected by {source}, detail {status.detail} ({detail})"
    if status.diagnostic_text:
        text += f": {status.diagnostic_text}"
    return text


class MxAccessError(MxGatewayError):
    """MXAccess ran the command and reported a failure.

    Attributes:
        reply: The raw ``MxCommandReply``, untouched.
        hresult: The HRESULT of the MXAccess call (negative means failure).
        statuses: The reply's ``MxStatusProxy`` records.
        failed_statuses: The records with ``success == 0``.
        status_descriptions: ``failed_statuses`` decoded into readable text.
        kind: The ``MxCommandKind`` name of the failed command.
    """

    reply: pb.MxCommandReply

    def __init__(self, reply: pb.MxCommandReply) -> None:
        self.hresult = reply.hresult
        self.statuses: tuple[pb.MxStatusProxy, ...] = tuple(reply.statuses)
        self.failed_statuses = tuple(s for s in self.statuses if s.success == 0)
        self.status_descriptions = tuple(describe_status(s) for s in self.failed_statuses)
        self.kind = _kind_name(reply.kind)
        parts = [f"MXAccess {self.kind} failed: hresult 0x{reply.hresult & 0xFFFFFFFF:08X}"]
        if self.status_descriptions:
            parts.append("; ".join(self.status_descriptions))
        extra = reply.diagnostic_message or reply.protocol_status.message
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
    try:
        return pb.MxCommandKind.Name(kind).removeprefix("MX_COMMAND_KIND_")  # type: ignore[arg-type]
    except ValueError:
        return f"command kind {kind}"


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
    grpc.StatusCode.INTERNAL: MxGatewayProtocolError,
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
        message += f": {details}"
    if session_id is not None:
        message += f" (session {session_id})"
    err = cls(redact(message, secrets), grpc_code=code, session_id=session_id)
    err.details = redact(details, secrets)
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
    try:
        name = pb.ProtocolStatusCode.Name(code).removeprefix("PROTOCOL_STATUS_CODE_")
    except ValueError:
        name = f"unknown protocol status {code}"
    message = f"{what} failed with {name}"
    if status.message:
        message += f": {status.message}"
    diagnostic = getattr(reply, "diagnostic_message", "")
    if diagnostic and diagnostic != status.message:
        message += f" ({diagnostic})"
    if session_id is not None:
        message += f" (session {session_id})"
    return cls(message, protocol_code=code, reply=reply, session_id=session_id)


def check_mxaccess(reply: pb.MxCommandReply) -> pb.MxCommandReply:
    """Raise :class:`MxAccessError` when MXAccess reported a failure in ``reply``.

    A failure is the ``MXACCESS_FAILURE`` protocol code, a negative HRESULT, or any status
    with ``success == 0``. Per-entry failures of bulk replies are not failures here.
    """
    if (
        reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE
        or reply.hresult < 0
        or any(s.success == 0 for s in reply.statuses)
    ):
        raise MxAccessError(reply)
    return reply
