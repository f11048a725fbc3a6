"""API keys, scopes and the authorization interceptor.

Keys look like ``mxgw_<keyId>_<secret>``. The store keeps, per key id, a random salt and the
SHA-256 of salt + secret, never the secret itself; verification is a constant-time compare.
Every RPC needs ``authorization: Bearer <key>``; the interceptor answers UNAUTHENTICATED for
a missing or unknown key and PERMISSION_DENIED for a missing scope, before the request body
is read. ``Invoke`` is authorized per command kind by :func:`scope_for_command` (from
:mod:`mxgateway.commands`, the table of command kinds; applied in the servicer, which sees
the request); :data:`current_principal` tells the servicer who calls,
which it needs for session ownership.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import inspect
import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from grpc import aio

from mxgateway.commands import COMMANDS
from mxgateway.commands import scope_for_command as scope_for_command
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim._bodygate import EOF, BodyGate
from mxgateway_sim._incidents import answered

SCOPES: tuple[str, ...] = (
    "session:open",
    "session:close",
    "invoke:read",
    "invoke:write",
    "invoke:secure",
    "events:read",
    "metadata:read",
    "admin",
)
ALL_SCOPES = frozenset(SCOPES)
DEFAULT_KEY_SCOPES: tuple[str, ...] = tuple(s for s in SCOPES if s != "admin")
"""Scopes of a key given without any: everything but ``admin``, which acts on every
session and so must be granted by name (a keys-file entry or ``keys create --scopes``)."""

_GATEWAY = "/mxaccess_gateway.v1.MxAccessGateway/"
_GALAXY = "/galaxy_repository.v1.GalaxyRepository/"
METHOD_SCOPES: dict[str, str | None] = {
    _GATEWAY + "OpenSession": "session:open",
    _GATEWAY + "CloseSession": "session:close",
    _GATEWAY + "Invoke": None,  # per command kind, in the servicer
    _GATEWAY + "InvokeStream": None,  # per command kind, for each command (as Invoke)
    _GATEWAY + "StreamEvents": "events:read",
    _GATEWAY + "StreamEventBatches": "events:read",
    _GATEWAY + "StreamAlarms": "events:read",
    _GATEWAY + "QueryActiveAlarms": "events:read",
    _GATEWAY + "AcknowledgeAlarm": "invoke:write",
}
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1")
"""Health checks and reflection carry no plant data and are served without a key."""

COMMAND_SCOPES: dict[int, str] = {
    pb.MX_COMMAND_KIND_UNSPECIFIED: scope_for_command(pb.MX_COMMAND_KIND_UNSPECIFIED),
    **{kind: spec.scope for kind, spec in COMMANDS.items()},
}
"""The scope each command kind needs through ``Invoke``, from :data:`mxgateway.commands.COMMANDS`
(the one table of command kinds; ``UNSPECIFIED`` needs ``invoke:read``).

Kinds missing here (newer than this table) need ``admin``: authorization fails closed.
"""


def scope_for_method(method: str) -> str | None:
    """Scope an RPC needs (None: decided per command); unknown methods need ``admin``."""
    if method.startswith(_GALAXY):
        return "metadata:read"
    return METHOD_SCOPES.get(method, "admin")


class KeyFormatError(ValueError):
    """A key string is not ``mxgw_<keyId>_<secret>`` (the message never contains the key)."""


def split_key(key: str) -> tuple[str, str]:
    """(key id, secret) of a key; the ``mxgw_`` prefix is case-insensitive."""
    if key[:5].lower() != "mxgw_":
        raise KeyFormatError("an API key must start with mxgw_")
    key_id, sep, secret = key[5:].partition("_")
    if not sep or not key_id or not secret:
        raise KeyFormatError("an API key must look like mxgw_<keyId>_<secret>")
    return key_id, secret


MAX_KEY_ID_LENGTH = 64
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 256
_KEY_ID = re.compile(rf"[A-Za-z0-9-]{{1,{MAX_KEY_ID_LENGTH}}}")
_SECRET = re.compile(r"[A-Za-z0-9_-]+")


def check_key(key: str) -> tuple[str, str]:
    """(key id, secret) of a key strong enough to be configured.

    The key id is 1-64 letters, digits or ``-``; the secret 16-256 letters, digits, ``-`` or
    ``_`` (what :func:`new_key` makes has 32). Applied when a key is created or loaded, so a
    guessable key such as ``mxgw_a_b`` never reaches the store.

    Raises:
        KeyFormatError: the rule broken (the message never contains the key).
    """
    key_id, secret = split_key(key)
    if not _KEY_ID.fullmatch(key_id):
        raise KeyFormatError(f"the key id must be 1-{MAX_KEY_ID_LENGTH} letters, digits or '-'")
    if not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH:
        raise KeyFormatError(
            f"the secret must be {MIN_SECRET_LENGTH}-{MAX_SECRET_LENGTH} characters long "
            f"(it has {len(secret)}); make keys with 'mxgw-sim keys create'"
        )
    if not _SECRET.fullmatch(secret):
        raise KeyFormatError("the secret may hold only letters, digits, '-' and '_'")
    return key_id, secret


def new_key() -> str:
    """A fresh random key (12 hex digits of key id, 32 characters of secret)."""
    key = f"mxgw_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
    check_key(key)
    return key


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key id, its name and its scopes (never the secret)."""

    key_id: str
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """True when the key has ``scope`` or ``admin``."""
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True, slots=True)
class _StoredKey:
    principal: Principal
    salt: bytes
    digest: bytes

    def __repr__(self) -> str:
        return f"_StoredKey({self.principal!r})"


# Anonymous callers share one principal, and never act on keyed callers' sessions.
ANONYMOUS = Principal("anonymous", "anonymous", frozenset(DEFAULT_KEY_SCOPES))


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


class ApiKeyStore:
    """Salted hashes of the configured keys, by key id."""

    def __init__(self, *, allow_anonymous: bool = False) -> None:
        self._keys: dict[str, _StoredKey] = {}
        self.allow_anonymous = allow_anonymous

    def __len__(self) -> int:
        return len(self._keys)

    def replace_keys(self, other: ApiKeyStore) -> None:
        """Take ``other``'s keys in place of ours, in one step (a keys-file reload).

        Calls authenticated from now on see only the new keys; calls and streams already
        running are not touched.
        """
        self._keys = dict(other._keys)

    def add(
        self, key: str, scopes: Iterable[str] = DEFAULT_KEY_SCOPES, name: str = ""
    ) -> Principal:
        """Add a key (only its salted hash is kept).

        Raises:
            KeyFormatError: malformed key, unknown scope, or a duplicate key id.
        """
        key_id, secret = check_key(key)
        scope_set = frozenset(scopes)
        unknown = sorted(scope_set - ALL_SCOPES)
        if unknown:
            raise _unknown_scopes(unknown)
        if key_id.lower() in self._keys:
            raise KeyFormatError(f"key id {key_id} is configured twice")
        salt = secrets.token_bytes(16)
        principal = Principal(key_id, name or key_id, scope_set)
        self._keys[key_id.lower()] = _StoredKey(principal, salt, _digest(salt, secret))
        return principal

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The caller behind an ``authorization`` header value, or None."""
        if not authorization:
            return ANONYMOUS if self.allow_anonymous else None
        if authorization[:7].lower() != "bearer ":
            return None
        try:
            key_id, secret = split_key(authorization[7:].strip())
        except KeyFormatError:
            return None
        stored = self._keys.get(key_id.lower())
        if stored is None or not hmac.compare_digest(stored.digest, _digest(stored.salt, secret)):
            return None
        return stored.principal


def load_keys_file(path: Path, store: ApiKeyStore) -> int:
    """Add the keys of a JSON or line-based file; returns how many.

    JSON: a list (or ``{"keys": [...]}``) of ``{"key": ..., "scopes": [...], "name": ...}``.
    Lines: ``KEY SCOPE[,SCOPE...] [NAME]``; blank lines and ``#`` comments are skipped.

    Raises:
        KeyFormatError: a malformed entry (the message names the entry, never the key).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError(f"{path}: not UTF-8 text") from None
    count = 0
    if text.lstrip().startswith(("[", "{")):
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyFormatError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})"
            ) from None
        entries = data.get("keys") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise KeyFormatError(f"{path}: expected a list of keys")
        for i, entry in enumerate(entries, 1):
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                raise KeyFormatError(f"{path}: entry {i} needs a string 'key'")
            scopes = entry.get("scopes", list(DEFAULT_KEY_SCOPES))
            if isinstance(scopes, str):
                scopes = scopes.split(",")
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                raise KeyFormatError(f"{path}: entry {i}: 'scopes' must be a list of strings")
            name = entry.get("name", "")
            if not isinstance(name, str):
                raise KeyFormatError(f"{path}: entry {i}: 'name' must be a string")
            try:
                store.add(entry["key"], [s.strip() for s in scopes], name)
            except KeyFormatError as exc:
                raise KeyFormatError(f"{path}: entry {i}: {exc}") from None
            count += 1
        return count
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            raise KeyFormatError(f"{path}:{lineno}: expected 'KEY SCOPES [NAME]'")
        try:
            store.add(
                parts[0],
                [s.strip() for s in parts[1].split(",")],
                parts[2] if len(parts) > 2 else "",
            )
        except KeyFormatError as exc:
            raise KeyFormatError(f"{path}:{lineno}: {exc}") from None
        count += 1
    return count


current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "mxgw_sim_principal", default=None
)
"""The authenticated caller of the RPC being served (set by :class:`AuthInterceptor`)."""


def _metadata_value(details: grpc.HandlerCallDetails, name: str) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == name:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


class RpcHook(Protocol):
    """A per-call hook of the gate (the fault injector): ``wrap_rpc`` may replace the
    handler of a call while ``active``."""

    active: bool

    def wrap_rpc(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]: ...


_MAX_GUARDED = 4096
"""Guarded handlers kept (one per method); the cache starts afresh when full."""


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates every call and checks the method's scope before the body is read.

    The key comes from the metadata alone, so a refused call is answered before its body
    arrives (or whatever it holds is parsed): the refusal is a request-streaming handler
    that never reads. An accepted call gets a handler that parses the body without
    raising (a malformed body is INVALID_ARGUMENT, never UNKNOWN with a traceback),
    built once per method; :data:`current_principal` is set here, in the call's task,
    where its handler runs next (gRPC runs the interceptors and then the handler in one
    task per call). A request-streaming method that checks its requests itself
    (:func:`checks_own_requests`: InvokeStream) is served as it is, without relaying each
    message. ``hook`` (the fault injector) may replace a call's handler while it is
    active: one interceptor for both, so a call pays for one.

    Every accepted handler reads its first request message through ``gate``
    (:class:`~mxgateway_sim._bodygate.BodyGate`), so a call whose message never arrives
    ends within the gate's time bound instead of holding its call until its deadline: a
    unary method is served as a request-streaming one that reads its one message itself
    (invisible on the wire), and a method that checks its own requests reads its first one
    through the gate it is given (``GatewayServicer.body_gate``).

    (An interceptor, not a generic handler that registers the services: gRPC core queues
    the calls of registered methods, such as the health check, apart from the others, so
    a flood of keyless calls cannot crowd them out.)
    """

    def __init__(
        self,
        store: ApiKeyStore,
        stats: Any = None,
        hook: RpcHook | None = None,
        gate: BodyGate | None = None,
    ) -> None:
        self._store = store
        self._stats = stats
        """A ``GatewayStats`` counting refusals by reason (None: not counted)."""
        self._hook = hook
        self.gate = gate if gate is not None else BodyGate(stats=stats)
        """Bounds the wait for each call's first request message."""
        self._guarded: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        principal: Principal | None = None
        if not method.startswith(UNAUTHENTICATED_PREFIXES):
            header = _metadata_value(handler_call_details, "authorization")
            principal = self._store.authenticate(header)
            if principal is None:
                if self._stats is not None:
                    reason = "missing_key" if not header else "invalid_key"
                    self._stats.authentication_failed(reason)
                return refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key")
            scope = scope_for_method(method)
            if scope is not None and not principal.allows(scope):
                if self._stats is not None:
                    self._stats.authorization_failed("method_scope")
                return refusal(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the API key lacks the {scope} scope needed by {method.rsplit('/', 1)[-1]}",
                )
            # The call's handler runs in this task, after this: it sees the key (a handler
            # that checks its own requests gets no wrapper to set it, see _guarded).
            current_principal.set(principal)
        hook = self._hook
        hooked = hook is not None and hook.active
        if not hooked:
            guarded = self._guarded.get(method)
            if guarded is not None:
                return guarded
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: UNIMPLEMENTED (only for an admin key)
            return handler
        if hooked:
            assert hook is not None
            return _guarded(hook.wrap_rpc(method, handler), self.gate, method)
        if len(self._guarded) >= _MAX_GUARDED:
            self._guarded.clear()
        guarded = self._guarded[method] = _guarded(handler, self.gate, method)
        return guarded


def refusal(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that answers ``code`` at once, without waiting for (or parsing) the body.

    Request streaming on the server side is invisible on the wire, so a unary or
    server-streaming caller simply gets the status.
    """

    async def refuse(requests: object, context: aio.ServicerContext[Any, Any]) -> None:
        # Not context.abort: its error would keep this frame, and so the call, in a cycle.
        context.set_code(code)
        context.set_details(message)

    return grpc.stream_stream_rpc_method_handler(refuse)


class _Malformed:
    """What the tolerant deserializer returns for a body that does not parse."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    # The message type, for the error text (``Foo.FromString`` -> ``Foo``).
    owner = getattr(deserializer, "__self__", None)
    type_name = getattr(owner, "__name__", "") or "request"

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # any parse failure is the caller's malformed body
            return _Malformed(type_name)

    return parse


def tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer`` as the interceptor runs it for a handler: a body that does not
    parse gives a value :func:`malformed_reason` explains, never an exception (for a
    handler that receives its requests as bytes: ``GatewayServicer._batched``)."""
    parse = _tolerant(deserializer)
    assert parse is not None
    return parse


def _malformed_message(request: _Malformed) -> str:
    return f"the request body is not a valid {request.type_name} message"


_F = TypeVar("_F", bound=Callable[..., Any])


def checks_own_requests(method: _F) -> _F:
    """Mark a request-streaming servicer method that checks each request itself with
    :func:`malformed_reason`: the gate then serves it as it is, without relaying every
    message it reads and writes through a wrapper (two generator layers per message)."""
    method.checks_own_requests = True  # type: ignore[attr-defined]
    return method


def malformed_reason(request: object) -> str | None:
    """Why a request a guarded handler received is not one (a body that did not parse),
    or None for a request that parsed."""
    return _malformed_message(request) if type(request) is _Malformed else None


def _key_id() -> str | None:
    principal = current_principal.get()
    return principal.key_id if principal is not None else None


_NO_MESSAGE = "the call carried no request message"


async def _one_request(gate: BodyGate, context: aio.ServicerContext[Any, Any]) -> Any:
    """The request of a call that carries one, read through ``gate``; a call that carries
    none, or one that does not parse, ends INVALID_ARGUMENT."""
    request = await gate.first(context, _key_id())
    if request is EOF:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _NO_MESSAGE)
    if type(request) is _Malformed:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _malformed_message(request))
    return request


async def _checked(gate: BodyGate, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
    """The requests of a bidirectional call, the first read through ``gate``; one that
    does not parse ends the call INVALID_ARGUMENT."""
    request = await gate.first(context, _key_id())
    while request is not EOF:
        if type(request) is _Malformed:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _malformed_message(request))
        yield request
        request = await context.read()


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any], gate: BodyGate, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with a non-raising deserializer: a malformed body is INVALID_ARGUMENT,
    for the services served without a key (health, reflection) too, so no caller can fill
    the log with tracebacks; the first request message read through ``gate``, so one
    that never arrives ends the call in time; and an unexpected error answered INTERNAL
    with an incident id (:func:`~mxgateway_sim._incidents.answer_unexpected`), never its
    text. (:data:`current_principal` is set by the interceptor.)
    """
    deserializer = _tolerant(handler.request_deserializer)
    serializer = handler.response_serializer
    # The stubs type the behaviours as synchronous; on an aio server they are coroutines.
    unary: Any = handler.unary_unary
    stream: Any = handler.unary_stream
    bidi: Any = handler.stream_stream
    writer = stream is not None and not inspect.isasyncgenfunction(stream)
    if unary is not None or writer:
        # A unary method is served request-streaming: gRPC would wait for the message
        # before calling it. A writer is a coroutine that writes its replies itself
        # (context.write), as the health service's Watch: gRPC awaits it instead of
        # iterating it.
        call = unary if unary is not None else stream

        async def guarded_call(requests: object, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                request = await _one_request(gate, context)
                return await call(request, context)
            except Exception as exc:
                if not await answered(exc, context, method):
                    raise

        serve = (
            grpc.stream_stream_rpc_method_handler
            if writer
            else grpc.stream_unary_rpc_method_handler
        )
        return serve(
            guarded_call, request_deserializer=deserializer, response_serializer=serializer
        )
    if bidi is not None and getattr(bidi, "checks_own_requests", False):  # InvokeStream
        # It reads the tolerant parser's results and refuses a malformed one itself,
        # reads its first request through the gate it holds and answers its own unexpected
        # errors; the interceptor set current_principal in this call's task.
        return grpc.stream_stream_rpc_method_handler(
            bidi, request_deserializer=deserializer, response_serializer=serializer
        )
    if stream is not None or (bidi is not None and inspect.isasyncgenfunction(bidi)):
        # A server-streaming method (its one request read through the gate) or server
        # reflection (every request checked as it is read).

        async def guarded_stream(
            requests: object, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                if stream is not None:
                    replies = stream(await _one_request(gate, context), context)
                else:
                    replies = bidi(_checked(gate, context), context)
                async for message in replies:
                    yield message
            except Exception as exc:
                if not await answered(exc, context, method):
                    raise

        return grpc.stream_stream_rpc_method_handler(
            guarded_stream, request_deserializer=deserializer, response_serializer=serializer
        )
    return handler  # client-streaming methods: none is served today


def _unknown_scopes(unknown: Sequence[str]) -> KeyFormatError:
    # repr() keeps the message on one line whatever a keys file holds.
    names = ", ".join(repr(name) for name in unknown)
    return KeyFormatError(f"unknown scope(s) {names}; valid scopes: {', '.join(SCOPES)}")


def parse_scopes(text: str | Sequence[str]) -> list[str]:
    """Scopes from ``"a,b"`` or a list; raises KeyFormatError on an unknown one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = [s.strip() for s in items if s.strip()]
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown:
        raise _unknown_scopes(unknown)
    return scopes
