"""The single gRPC seam: channel, credentials, API key metadata, deadlines, error mapping.

Every client (``GatewayClient``, ``GalaxyRepositoryClient``) talks to the network only
through a :class:`Transport`::

    transport = await Transport.open(options)
    stub = mxaccess_gateway_pb2_grpc.MxAccessGatewayStub(transport.channel)
    reply = await transport.unary(stub.OpenSession, request)          # default deadline
    async with transport.stream(stub.StreamEvents, request) as events:  # no deadline
        async for event in events:
            ...
    await transport.close()

``unary`` and ``stream`` attach ``authorization: Bearer <key>`` (plus the extra metadata of
the options) in one place, apply the default deadline to unary calls, and turn
``grpc.aio.AioRpcError`` into the ``MxGateway*`` exception of the error table, raised
``from`` the original. It is also the one place that retries: unary calls that are safe to
repeat, after UNAVAILABLE, as ``options.retry`` says (see ``mxgateway._retry``).

A :class:`Stream` cancels its call when the loop breaks (the iterator is dropped), on
``aclose()``, on leaving ``async with`` and when the task reading it is cancelled, so the
server always sees the cancellation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import ipaddress
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, TypedDict, TypeVar

import grpc
import grpc.aio

from mxgateway._errors import (
    ClientClosedError,
    MxGatewayError,
    MxGatewayUnavailableError,
    error_from_rpc_error,
)
from mxgateway._logsafe import get_logger
from mxgateway._options import ClientOptions
from mxgateway._retry import CONNECT_POLL_INTERVAL, is_idempotent

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT", "ConnectKeywords", "Stream", "Transport", "UseDefault"]

_log = get_logger(__name__)
_log.addHandler(logging.NullHandler())

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")


# Texts of gRPC's connect errors that prove a server listens at the address (it answered,
# but the handshake failed), unlike a refusal, which a server still starting also causes.
_LISTENER_TEXTS = ("handshake", "ssl")


def _a_listener_answered(exc: grpc.aio.AioRpcError) -> bool:
    details = (exc.details() or "").lower()
    return any(text in details for text in _LISTENER_TEXTS)


def _named_host(endpoint: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``name:port`` endpoint; ``None`` for an IP literal or ``unix:``."""
    if endpoint.startswith(("unix:", "[")):
        return None
    host, _, port = endpoint.rpartition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return (host, int(port)) if host and port.isdigit() else None
    return None


class ConnectKeywords(TypedDict, total=False):
    """The keywords of ``GatewayClient.connect``, ``GalaxyRepositoryClient.connect`` and
    ``Transport.connect`` (next to the positional ``endpoint``: ``host:port``, required
    unless ``options`` has it). Listed once here; type checkers see them on every
    ``connect``.

    Attributes:
        api_key: API key sent as ``authorization: Bearer`` metadata on every call.
        plaintext: Use an unencrypted channel; TLS is the default.
        ca_file: PEM CA bundle to trust instead of the system roots.
        server_name_override: TLS name to verify (test certificates).
        timeout: Default deadline of unary calls, in seconds (``None``: no deadline).
        options: A full :class:`ClientOptions`; the other keywords, when given, override
            its fields.
    """

    api_key: str | None
    plaintext: bool | None
    ca_file: str | os.PathLike[str] | None
    server_name_override: str | None
    timeout: float | UseDefault | None
    options: ClientOptions | None


class UseDefault(enum.Enum):
    """The type of :data:`DEFAULT`: "not given, use the configured default".

    ``timeout=None`` already means "no deadline", so "not given" needs a value of its own
    (as httpx's ``USE_CLIENT_DEFAULT``). A one-member enum, so type checkers narrow
    ``timeout is DEFAULT`` and signatures say ``float | UseDefault | None``, not ``Any``.
    """

    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = UseDefault.DEFAULT
"""Pass as ``timeout`` to use ``ClientOptions.timeout`` (the default of every call)."""

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _empty_request(_: object) -> bytes:
    # An empty HealthCheckRequest (service "") serializes to no bytes.
    return b""


def _raw_bytes(data: bytes) -> bytes:
    return data


_MAX_RECONNECT_BACKOFF = "grpc.max_reconnect_backoff_ms"
_MAX_RECONNECT_BACKOFF_MS = 5_000
_INITIAL_RECONNECT_BACKOFF = "grpc.initial_reconnect_backoff_ms"
_INITIAL_RECONNECT_BACKOFF_MS = 250


def _channel_arguments(options: ClientOptions) -> list[tuple[str, Any]]:
    args: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", options.max_message_bytes),
        ("grpc.max_receive_message_length", options.max_message_bytes),
    ]
    if options.keepalive_time is not None:
        args += [
            ("grpc.keepalive_time_ms", int(options.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(options.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", int(options.keepalive_permit_without_calls)),
            ("grpc.http2.max_pings_without_data", 0),
            # gRPC core waits for the ack of *any* outstanding ping (a keepalive ping is
            # skipped while another ping is in flight) for ping_timeout, 1 minute by
            # default: without this, a half-open connection is noticed after about
            # keepalive_time + 60 s instead of keepalive_time + keepalive_timeout.
            ("grpc.http2.ping_timeout_ms", int(options.keepalive_timeout * 1000)),
        ]
    if not any(name == _MAX_RECONNECT_BACKOFF for name, _ in options.channel_options):
        # gRPC's own reconnect backoff grows to 120 s: after a long gateway outage the
        # channel could stay down for two minutes after the gateway is back. Cap it at 5 s
        # (one connection attempt per client every 5 s while the gateway is away).
        args.append((_MAX_RECONNECT_BACKOFF, _MAX_RECONNECT_BACKOFF_MS))
    if not any(name == _INITIAL_RECONNECT_BACKOFF for name, _ in options.channel_options):
        # gRPC waits 1 s before its first reconnection attempt: a gateway that starts a
        # moment after the client (``mxgw-sim serve &`` then a command) would be noticed
        # only then. 250 ms, growing by gRPC's factor 1.6 up to the cap above.
        args.append((_INITIAL_RECONNECT_BACKOFF, _INITIAL_RECONNECT_BACKOFF_MS))
    if options.server_name_override:
        args += [
            ("grpc.ssl_target_name_override", options.server_name_override),
            ("grpc.default_authority", options.server_name_override),
        ]
    args += list(options.channel_options)
    return args


def create_channel(options: ClientOptions) -> grpc.aio.Channel:
    """Build the ``grpc.aio`` channel the options describe (no network activity yet).

    Plaintext only when ``options.plaintext``; otherwise TLS with ``ca_file`` or the system
    roots. There is no fallback from TLS to plaintext.
    """
    args = _channel_arguments(options)
    if options.plaintext:
        return grpc.aio.insecure_channel(options.endpoint, options=args)
    root: bytes | None = None
    if options.ca_file is not None:
        with open(options.ca_file, "rb") as fh:
            root = fh.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.aio.secure_channel(options.endpoint, credentials, options=args)


def _task_cancelling() -> bool:
    """True when the current task has a pending cancellation request (Python >= 3.11;
    on 3.10 this cannot be known and is assumed False)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


class Transport:
    """Owns one ``grpc.aio`` channel and performs every call of a client.

    Create with :meth:`open` (or ``Transport(options, channel=...)`` to inject a channel).
    Safe to share between a client and its sessions; :meth:`close` is idempotent.
    """

    def __init__(self, options: ClientOptions, *, channel: grpc.aio.Channel | None = None) -> None:
        self._options = options
        self._channel = channel if channel is not None else create_channel(options)
        metadata: list[tuple[str, str]] = []
        api_key = options.api_key_value()
        if api_key:
            metadata.append(("authorization", f"Bearer {api_key}"))
        metadata.extend(options.metadata)
        self._metadata: tuple[tuple[str, str], ...] = tuple(metadata)
        self._secrets: tuple[str | None, ...] = (api_key,)
        self._closed = False
        self.retry_count = 0
        """How many times a unary call was retried after UNAVAILABLE (all calls)."""

    @classmethod
    async def open(cls, options: ClientOptions) -> Transport:
        """Create the channel and, unless ``options.connect_timeout`` is ``None``, wait
        until it is connected.

        Raises:
            MxGatewayUnavailableError: The gateway could not be reached (refused, DNS, TLS
                handshake failure...).
            MxGatewayTimeoutError: The channel was not ready within ``connect_timeout``.
        """
        transport = cls(options)
        if options.connect_timeout is not None:
            try:
                await transport.wait_ready(options.connect_timeout)
            except BaseException:
                await transport.close()
                raise
        return transport

    @classmethod
    async def connect(
        cls,
        endpoint: str | None = None,
        **keywords: Unpack[ConnectKeywords],
    ) -> Transport:
        """Build options from the ``connect(...)`` keywords of the clients, then :meth:`open`.

        The keywords are those of :class:`ConnectKeywords` (the one place they are listed).
        Keywords that are given override the matching fields of ``options``; without
        ``options`` they build a new :class:`ClientOptions` (``endpoint`` is then required).

        Raises:
            TypeError: An unknown keyword.
            ValueError: Invalid options.
            MxGatewayUnavailableError: The gateway could not be reached.
        """
        unknown = sorted(set(keywords) - ConnectKeywords.__optional_keys__)
        if unknown:
            raise TypeError(f"connect() got an unexpected keyword argument {unknown[0]!r}")
        given: dict[str, Any] = dict(keywords)
        options: ClientOptions | None = given.pop("options", None)
        changes = {k: v for k, v in given.items() if v is not None}
        if given.get("timeout", DEFAULT) is DEFAULT:
            changes.pop("timeout", None)
        elif given["timeout"] is None:
            changes["timeout"] = None  # None is "no deadline", not "not given"
        if "ca_file" in changes:
            changes["ca_file"] = os.fspath(changes["ca_file"])
        if endpoint is not None:
            changes["endpoint"] = endpoint
        if options is None:
            if endpoint is None:
                raise ValueError("endpoint is required (or pass options=ClientOptions(...))")
            opts = ClientOptions(**changes)
        else:
            opts = options.replace(**changes) if changes else options
        return await cls.open(opts)

    @property
    def options(self) -> ClientOptions:
        """The options this transport was built from."""
        return self._options

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel, for building stubs (raises once closed)."""
        self.check_open()
        return self._channel

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata sent with every call (includes the API key: do not log it)."""
        return self._metadata

    def check_open(self) -> None:
        """Raise :class:`ClientClosedError` if the transport was closed."""
        if self._closed:
            raise ClientClosedError(
                f"the connection to {self._options.endpoint} is closed; connect again"
            )

    async def pause(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less when the channel is down now and (re)connects.

        A reconnect loop's backoff: the next attempt goes out as soon as the gateway listens
        again (within ``CONNECT_POLL_INTERVAL``), not at the end of a delay that grew while
        it was away. The channel state is read here only: the seam is the one reader of the
        channel. It is polled, not watched: a gRPC connectivity watch cut short stays
        pending inside gRPC until the state changes, and when that change is the channel
        closing, its completion reaches the closed event loop of the caller ("Event loop is
        closed" logged by the next loop of the process, grpc/grpc#34139).
        """
        channel = self.channel
        state = channel.get_state(try_to_connect=True)
        if state is grpc.ChannelConnectivity.READY:
            await asyncio.sleep(delay)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while state is not grpc.ChannelConnectivity.READY:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(CONNECT_POLL_INTERVAL, remaining))
            state = channel.get_state(try_to_connect=True)

    async def wait_ready(self, timeout: float) -> None:
        """Check that the gateway answers, within ``timeout`` seconds.

        Sends ``grpc.health.v1.Health/Check`` probes without ``wait_for_ready``, so a
        refused connection or a failed TLS handshake is seen at once with gRPC's own
        reason. Such a refusal is retried for ``options.connect_wait`` seconds (bounded by
        ``timeout``): a gateway started in the background a moment before (``mxgw-sim
        serve &``) is not refused for being slower than its first caller. A failed TLS handshake
        ends the wait at once with its own reason: something listens there, so waiting cannot
        help (and with a name such as ``localhost`` that resolves to two addresses, a later
        refusal of the other one must not hide it). Any answer other
        than UNAVAILABLE or DEADLINE_EXCEEDED (including UNIMPLEMENTED from a gateway
        without a health service) proves the channel works.

        Raises:
            MxGatewayUnavailableError: The gateway could not be reached (the last refusal,
                after the wait).
            MxGatewayTimeoutError: No answer within ``timeout``.
        """
        self.check_open()
        probe = self._channel.unary_unary(
            _HEALTH_CHECK, request_serializer=_empty_request, response_deserializer=_raw_bytes
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        give_up = start + min(self._options.connect_wait, timeout)
        deadline = start + timeout
        attempts = 0
        looked_behind = False
        while True:
            attempts += 1
            try:
                await probe(
                    b"", timeout=max(deadline - loop.time(), 0.001), metadata=self._metadata
                )
                return
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    _log.debug("connect probe answered %s: channel is up", code)
                    return
                now = loop.time()
                if (
                    code is grpc.StatusCode.UNAVAILABLE
                    and not _a_listener_answered(exc)
                    and not looked_behind
                    and not self._options.plaintext
                ):
                    # gRPC reports the last address it tried: with a name that resolves to
                    # several, a refusal of one can hide a failed handshake on another.
                    looked_behind = True
                    hidden = await self._listener_error_behind(min(1.0, deadline - now))
                    exc = hidden or exc
                    now = loop.time()
                if (
                    code is grpc.StatusCode.UNAVAILABLE
                    and not _a_listener_answered(exc)
                    and now + CONNECT_POLL_INTERVAL < give_up
                ):
                    # Refused or unreachable for now: gRPC reconnects on its own backoff;
                    # probe again shortly (a probe in the meantime fails at once).
                    await asyncio.sleep(CONNECT_POLL_INTERVAL)
                    continue
                mode = "plaintext" if self._options.plaintext else "TLS"
                waited = f" (retried for {now - start:.1f} s)" if attempts > 1 else ""
                raise self.map_error(
                    exc, what=f"connecting to {self._options.endpoint} ({mode}){waited}"
                ) from exc

    async def _listener_error_behind(self, timeout: float) -> grpc.aio.AioRpcError | None:
        """Probe each address of the endpoint's host name alone (verifying the certificate
        for that name, as the channel does): the error of one where a server answered but
        the TLS handshake failed, or ``None`` (an IP literal, no such address, no answer)."""
        named = _named_host(self._options.endpoint)
        if named is None or timeout <= 0:
            return None
        host, port = named
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                timeout,
            )
        except (OSError, asyncio.TimeoutError):
            return None
        addresses = dict.fromkeys(str(info[4][0]) for info in infos)
        override = self._options.server_name_override or host
        probes = []
        for address in list(addresses)[:4]:
            literal = f"[{address}]" if ":" in address else address
            options = dataclasses.replace(
                self._options, endpoint=f"{literal}:{port}", server_name_override=override
            )
            probes.append(self._probe_once(create_channel(options), timeout))
        for found in await asyncio.gather(*probes):
            if found is not None and _a_listener_answered(found):
                return found
        return None

    async def _probe_once(
        self, channel: grpc.aio.Channel, timeout: float
    ) -> grpc.aio.AioRpcError | None:
        """One health probe on a short-lived channel; its error, if any. Always closed."""
        try:
            probe = channel.unary_unary(
                _HEALTH_CHECK, request_serializer=_empty_request, response_deserializer=_raw_bytes
            )
            await probe(b"", timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            return exc
        finally:
            await channel.close(None)
        return None

    def map_error(
        self, exc: grpc.aio.AioRpcError, *, session_id: str | None = None, what: str = "call"
    ) -> MxGatewayError:
        """Map a gRPC error to the ``MxGateway*`` error (caller raises it ``from exc``)."""
        if self._closed and exc.code() is grpc.StatusCode.CANCELLED:
            return ClientClosedError(f"{what} was cancelled because the client was closed")
        return error_from_rpc_error(exc, session_id=session_id, secrets=self._secrets, what=what)

    async def unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[ReqT, RespT],
        request: ReqT,
        *,
        timeout: float | UseDefault | None = DEFAULT,
        session_id: str | None = None,
        what: str | None = None,
        idempotent: bool | None = None,
    ) -> RespT:
        """Run a unary call with the API key metadata and a deadline; map its errors.

        A call that is safe to repeat (see :func:`mxgateway._retry.is_idempotent`) and fails
        with gRPC UNAVAILABLE is retried according to ``options.retry`` (jittered
        exponential backoff, bounded attempts and elapsed time). ``timeout`` is the
        deadline of the whole call, retries and their delays included. No other status
        and no other call is ever retried.

        Args:
            method: A stub attribute, e.g. ``stub.Invoke``.
            request: The request message.
            timeout: Deadline in seconds; ``DEFAULT`` uses ``options.timeout``, ``None``
                means no deadline.
            session_id: Set for session-scoped RPCs (NOT_FOUND then maps to
                ``MxGatewaySessionNotFoundError``; the id appears in messages).
            what: Name of the call used in error messages (default: the request type).
            idempotent: Overrides the table that decides whether the call may be retried
                (``None``: decide from the request).

        Cancelling the awaiting task cancels the gRPC call (and any pending retry).
        """
        if self._closed:
            self.check_open()
        if timeout is DEFAULT:
            timeout = self._options.timeout
        # The first attempt awaits the call here (no frame of its own: most calls succeed at
        # once); a retry decides and waits in _retry.
        start = time.monotonic()
        try:
            return await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            label = what or type(request).__name__.removesuffix("Request")
            error = self.map_error(exc, session_id=session_id, what=label)
            error.__cause__ = exc  # as `raise error from exc`
            policy = self._options.retry
            if (
                exc.code() is not grpc.StatusCode.UNAVAILABLE
                or not isinstance(error, MxGatewayUnavailableError)
                or policy is None
                or not policy.enabled
                or not (is_idempotent(request) if idempotent is None else idempotent)
            ):
                try:
                    raise error from exc
                finally:
                    # A local naming the error would tie this frame to the error's own
                    # traceback (a cycle: the request and error then wait for the GC).
                    del error
        except asyncio.CancelledError:
            self._cancelled_under_call(what or type(request).__name__.removesuffix("Request"))
            raise
        retry = self._retry(method, request, timeout, start, session_id, label, error)
        del error  # _retry holds it now (and raises it without a cycle, see there)
        return await retry

    async def _retry(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[ReqT, RespT],
        request: ReqT,
        timeout: float | None,
        start: float,
        session_id: str | None,
        label: str,
        error: MxGatewayUnavailableError,
    ) -> RespT:
        """Retry a call whose attempt (started at ``start``, ``time.monotonic()``) failed
        UNAVAILABLE with ``error``, as ``options.retry`` says, within ``timeout`` of
        ``start``; the last failure is raised."""
        policy = self._options.retry
        assert policy is not None
        deadline = None if timeout is None else start + timeout
        attempt = 1
        while True:
            now = time.monotonic()
            if not policy.allows(attempt, now - start):
                break
            delay = policy.backoff(attempt)
            if deadline is not None and now + delay >= deadline:
                break
            _log.info("%s failed with UNAVAILABLE; retry %d in %.3f s", label, attempt, delay)
            self.retry_count += 1
            await asyncio.sleep(delay)
            self.check_open()
            attempt += 1
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                return await self._unary_once(method, request, remaining, session_id, label)
            except MxGatewayUnavailableError as exc:
                if exc.grpc_code is not grpc.StatusCode.UNAVAILABLE:
                    raise
                error = exc
        try:
            raise error
        finally:
            del error  # as in unary: no cycle through this frame

    def _cancelled_under_call(self, label: str) -> None:
        """grpc.aio raises CancelledError in the awaiting task when the channel was closed
        under the call; that is not a cancellation of this task: ClientClosedError."""
        if self._closed and not _task_cancelling():
            raise ClientClosedError(
                f"{label} was cancelled because the client was closed"
            ) from None

    async def _unary_once(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[ReqT, RespT],
        request: ReqT,
        timeout: float | None,
        session_id: str | None,
        label: str,
    ) -> RespT:
        try:
            return await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise self.map_error(exc, session_id=session_id, what=label) from exc
        except asyncio.CancelledError:
            self._cancelled_under_call(label)
            raise

    def stream(
        self,
        method: grpc.aio.UnaryStreamMultiCallable[ReqT, RespT],
        request: ReqT,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        what: str | None = None,
    ) -> Stream[RespT]:
        """Start a server-streaming call; returns a :class:`Stream` (an async iterator).

        The call starts immediately; errors surface (mapped) while iterating. ``timeout``
        defaults to ``None`` (streams normally run until closed).
        """
        self.check_open()
        call = method(request, timeout=timeout, metadata=self._metadata)
        label = what or type(request).__name__.removesuffix("Request")
        return Stream(self, call, session_id=session_id, what=label)

    async def close(self) -> None:
        """Close the channel (cancelling any call still running). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._channel.close(None)
        _log.debug("transport to %s closed", self._options.endpoint)

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Transport {self._options.endpoint} {state}>"


class Stream(Generic[RespT]):
    """Async iterator over one server-streaming call, with mapped errors.

    Ends normally when the server completes the stream. Breaking out of ``async for``
    (dropping the iterator), :meth:`aclose`, leaving ``async with`` or cancelling the
    reading task cancels the call.
    """

    __slots__ = ("_call", "_done", "_it", "_session_id", "_transport", "_what")

    def __init__(
        self,
        transport: Transport,
        call: grpc.aio.UnaryStreamCall[Any, RespT],
        *,
        session_id: str | None,
        what: str,
    ) -> None:
        self._transport = transport
        self._call = call
        self._it: AsyncIterator[RespT] = call.__aiter__()
        self._session_id = session_id
        self._what = what
        self._done = False

    @property
    def call(self) -> grpc.aio.UnaryStreamCall[Any, RespT]:
        """The underlying ``grpc.aio`` call."""
        return self._call

    @property
    def done(self) -> bool:
        """True once the stream ended, failed or was closed."""
        return self._done

    def __aiter__(self) -> Stream[RespT]:
        return self

    async def __anext__(self) -> RespT:
        if self._done:
            raise StopAsyncIteration
        try:
            return await self._it.__anext__()
        except StopAsyncIteration:
            self._done = True
            raise
        except grpc.aio.AioRpcError as exc:
            self._done = True
            raise self._transport.map_error(
                exc, session_id=self._session_id, what=self._what
            ) from exc
        except asyncio.CancelledError:
            # grpc.aio raises CancelledError when the call was cancelled locally: by
            # aclose() from another task, or by closing the client. Neither cancels the
            # reading task, so end the iteration instead (unless this task is cancelled).
            closed_by_us = self._done or self._transport.closed
            self._close_call()
            if closed_by_us and not _task_cancelling():
                if self._transport.closed:
                    raise ClientClosedError(
                        f"{self._what} was cancelled because the client was closed"
                    ) from None
                raise StopAsyncIteration from None
            raise
        except BaseException:
            # Anything unexpected: end the call.
            self._close_call()
            raise

    def _close_call(self) -> None:
        if not self._done:
            self._done = True
            self._call.cancel()

    async def aclose(self) -> None:
        """Cancel the call if it is still running. Idempotent."""
        self._close_call()

    def cancel(self) -> None:
        """Cancel the call (synchronous form of :meth:`aclose`)."""
        self._close_call()

    async def __aenter__(self) -> Stream[RespT]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close_call()

    def __del__(self) -> None:
        # Dropped without being exhausted (e.g. `break` out of `async for`): end the call.
        if not self._done:
            self._done = True
            try:
                self._call.cancel()
            except Exception:  # pragma: no cover - interpreter/loop teardown
                _log.debug("could not cancel a dropped stream", exc_info=True)
