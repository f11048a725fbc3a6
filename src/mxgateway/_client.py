"""``GatewayClient``: the connection to one gateway, sessions and the raw RPCs."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mxgateway._cmdstream import CommandStream
from mxgateway._encoded import EncodedRequest, as_message
from mxgateway._enums import enum_name
from mxgateway._errors import (
    ClientClosedError,
    MxGatewayError,
    MxGatewayProtocolError,
    check_mxaccess,
    raise_for_protocol_status,
)
from mxgateway._eventwire import EventBatchView, EventView
from mxgateway._logsafe import get_logger
from mxgateway._owner import TransportOwner
from mxgateway._retry import RetryPolicy
from mxgateway._transport import DEFAULT, Stream, Transport, UseDefault
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pbg

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from mxgateway._session import Session
    from mxgateway._subscription import StateChange, Subscription
    from mxgateway._transport import ConnectKeywords

__all__ = ["GatewayClient"]

_log = get_logger(__name__)
_log.addHandler(logging.NullHandler())

_OK = pb.PROTOCOL_STATUS_CODE_OK

_INVOKE_WHAT: dict[int, str] = {}
"""Kind number -> ``"Invoke <KIND>"``, the call's name in its errors (made once a kind)."""


def _invoke_what(kind: int) -> str:
    what = f"Invoke {enum_name(pb.MxCommandKind, kind)}"
    if len(_INVOKE_WHAT) < 1024:  # kinds newer than the bindings, from hostile input too
        _INVOKE_WHAT[kind] = what
    return what


_MXACCESS_FAILURE = pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE
_SESSION_CLOSE_TIMEOUT = 5.0


def _check_protocol_status(reply: pb.MxCommandReply, session_id: str, what: str) -> None:
    """Raise the typed error of ``reply``'s protocol status unless it is OK or
    MXACCESS_FAILURE (the MXAccess members then decide)."""
    # No protocol_status at all: no gateway-level verdict (upstream's register.ok
    # fixture has none); the MXAccess members decide. A present UNSPECIFIED breaks it.
    # (An absent status reads as code 0, UNSPECIFIED: only then is presence asked, each
    # read of a message field costing about a microsecond.)
    code = reply.protocol_status.code
    if code != _OK and code != _MXACCESS_FAILURE and (code or reply.HasField("protocol_status")):
        raise_for_protocol_status(reply, reply.protocol_status, session_id=session_id, what=what)


class GatewayClient(TransportOwner):
    """An async connection to an MXAccess Gateway.

    Create with :meth:`connect` and use as an async context manager::

        async with await GatewayClient.connect(endpoint="gw:5001", api_key=key) as client:
            async with await client.open_session(client_session_name="app") as session:
                handle = await session.register("app")

    ``close()``/``aclose()`` are idempotent; closing also closes the sessions this client
    opened with :meth:`open_session` that are still open. Any call after closing raises
    :class:`~mxgateway.ClientClosedError`.
    """

    def __init__(self, transport: Transport) -> None:
        """Wrap an open :class:`~mxgateway._transport.Transport` (prefer :meth:`connect`)."""
        self._transport = transport
        self._stub = pbg.MxAccessGatewayStub(transport.channel)
        self._sessions: dict[str, Session] = {}
        self._subscriptions: set[Subscription] = set()
        self._correlation = itertools.count(1)
        self._correlation_prefix = f"py-{os.getpid()}-{id(self) & 0xFFFF:04x}-"
        self._batches_supported = True
        # The event streams as Session.events() reads them (see mxgateway._eventwire): the
        # same RPCs, each message parsed into the view instead of the generated class.
        service = pb.DESCRIPTOR.services_by_name["MxAccessGateway"].full_name
        channel = transport.channel
        self._view_events = channel.unary_stream(
            f"/{service}/StreamEvents",
            request_serializer=pb.StreamEventsRequest.SerializeToString,
            response_deserializer=EventView.FromString,
        )
        self._view_batches = channel.unary_stream(
            f"/{service}/StreamEventBatches",
            request_serializer=pb.StreamEventsRequest.SerializeToString,
            response_deserializer=EventBatchView.FromString,
        )
        self._commands = CommandStream(transport) if transport.options.command_stream else None

    @classmethod
    async def connect(
        cls,
        endpoint: str | None = None,
        **keywords: Unpack[ConnectKeywords],
    ) -> GatewayClient:
        """Connect to a gateway and return the client.

        Args:
            endpoint: ``host:port`` of the gateway (required unless ``options`` has it).
            **keywords: ``api_key``, ``plaintext``, ``ca_file``, ``server_name_override``,
                ``timeout`` (default deadline of unary calls) and ``options`` (a full
                :class:`ClientOptions` the other keywords override), as described in
                :class:`mxgateway._transport.ConnectKeywords`.

        Raises:
            TypeError: An unknown keyword.
            ValueError: Invalid options.
            MxGatewayUnavailableError: The gateway could not be reached (unless
                ``options.connect_timeout`` is ``None``, which connects lazily).
        """
        transport = await Transport.connect(endpoint, **keywords)
        _log.debug("connected to %s", transport.options.endpoint)
        return cls(transport)

    def _next_correlation_id(self) -> str:
        return f"{self._correlation_prefix}{next(self._correlation)}"

    # -- sessions ---------------------------------------------------------------------
    async def open_session_raw(
        self, client_session_name: str = "", *, timeout: float | UseDefault | None = DEFAULT
    ) -> pb.OpenSessionReply:
        """``OpenSession``; returns the generated reply.

        Raises the typed error of a non-OK ``protocol_status`` (and of gRPC failures, e.g.
        ``MxGatewayOverloadedError`` at the session limit).
        """
        reply = await self._transport.unary(
            self._stub.OpenSession,
            pb.OpenSessionRequest(client_session_name=client_session_name),
            timeout=timeout,
            what="OpenSession",
        )
        if reply.HasField("protocol_status"):
            raise_for_protocol_status(reply, reply.protocol_status, what="OpenSession")
        if not reply.session_id:
            raise MxGatewayProtocolError("OpenSession reply carries no session id", reply=reply)
        return reply

    async def open_session(
        self, client_session_name: str = "", *, timeout: float | UseDefault | None = DEFAULT
    ) -> Session:
        """Open a session and return it as a :class:`Session` (an async context manager
        that closes the session)."""
        from mxgateway._session import Session

        reply = await self.open_session_raw(client_session_name, timeout=timeout)
        session = Session(self, reply.session_id, open_reply=reply)
        self._sessions[reply.session_id] = session
        _log.debug("opened session %s", reply.session_id)
        return session

    def attach_session(self, session_id: str) -> Session:
        """A :class:`Session` for an existing session id (not closed by :meth:`close`)."""
        from mxgateway._session import Session

        if not session_id:
            raise ValueError("session_id is required")
        self._transport.check_open()
        return Session(self, session_id)

    async def close_session(
        self, session_id: str, *, timeout: float | UseDefault | None = DEFAULT
    ) -> pb.CloseSessionReply:
        """``CloseSession``; returns the generated reply.

        Raises:
            MxGatewaySessionNotFoundError: The session does not exist (any more).
        """
        reply = await self._transport.unary(
            self._stub.CloseSession,
            pb.CloseSessionRequest(session_id=session_id),
            timeout=timeout,
            session_id=session_id,
            what="CloseSession",
        )
        self._sessions.pop(session_id, None)
        if reply.HasField("protocol_status"):
            raise_for_protocol_status(
                reply, reply.protocol_status, session_id=session_id, what="CloseSession"
            )
        return reply

    def _forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    # -- commands ---------------------------------------------------------------------
    async def invoke_raw(
        self,
        session_id: str,
        command: pb.MxCommand,
        *,
        timeout: float | UseDefault | None = DEFAULT,
        client_correlation_id: str | None = None,
    ) -> pb.MxCommandReply:
        """``Invoke`` one command; returns the generated reply.

        Raises the typed ``MxGateway*`` error of gRPC failures and of protocol statuses
        other than OK and MXACCESS_FAILURE (a reply without ``protocol_status`` counts as
        OK). MXAccess failures (that code, a negative ``hresult`` or a status whose
        category is a failure) stay in the returned reply.
        """
        request = pb.MxCommandRequest(
            session_id=session_id,
            client_correlation_id=client_correlation_id or self._next_correlation_id(),
            command=command,
        )
        return await self._invoke_request(request, timeout)

    async def _invoke_request(
        self,
        request: pb.MxCommandRequest | EncodedRequest,
        timeout: float | UseDefault | None = DEFAULT,
    ) -> pb.MxCommandReply:
        """:meth:`invoke_raw` of a request already built (``Session`` builds a large bulk
        command inside its request: setting it as a field would copy every row), or
        encoded ahead (``mxgateway._encoded``: its correlation id already set)."""
        if isinstance(request, EncodedRequest):
            session_id = request.session_id
            number = request.kind
        else:
            if not request.client_correlation_id:
                request.client_correlation_id = self._next_correlation_id()
            session_id = request.session_id
            number = request.command.kind
        what = _INVOKE_WHAT.get(number)
        if what is None:
            what = _invoke_what(number)
        reply: pb.MxCommandReply | None = None
        commands = self._commands
        if commands is not None and commands.available:
            self._check_open()
            reply = await commands.invoke(
                request,
                self._transport.options.timeout if isinstance(timeout, UseDefault) else timeout,
                session_id,
                what,
            )
        if reply is None:
            reply = await self._transport.unary(
                self._stub.Invoke,
                as_message(request),
                timeout=timeout,
                session_id=session_id,
                what=what,
            )
        _check_protocol_status(reply, session_id, what)
        return reply

    async def _invoke_many(
        self,
        requests: Sequence[EncodedRequest],
        timeout: float | UseDefault | None,
        take: Callable[[pb.MxCommandReply], None],
    ) -> None:
        """:meth:`_invoke_request` of several idempotent commands of one session (the
        chunks of one large read), overlapped: written ahead on the command stream
        (``CommandStream.invoke_many``), else sent as concurrent ``Invoke`` calls. ``take``
        gets each reply in request order, once its protocol status passed, so it decodes
        one while the gateway computes the next. ``timeout`` is one deadline for them all.

        Any failure (gRPC, a protocol status, an error of ``take``) raises the first
        one's typed error and leaves no call in flight."""
        first = requests[0]
        session_id = first.session_id
        what = _INVOKE_WHAT.get(first.kind) or _invoke_what(first.kind)
        if isinstance(timeout, UseDefault):
            timeout = self._transport.options.timeout
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout

        def checked(reply: pb.MxCommandReply) -> None:
            _check_protocol_status(reply, session_id, what)
            take(reply)

        done = 0
        commands = self._commands
        if commands is not None and commands.available:
            self._check_open()
            done = await commands.invoke_many(requests, timeout, session_id, what, checked)
            if done == len(requests):
                return
        left = None if deadline is None else max(0.0, deadline - loop.time())
        calls = [
            asyncio.ensure_future(
                self._transport.unary(
                    self._stub.Invoke,
                    as_message(request),
                    timeout=left,
                    session_id=session_id,
                    what=what,
                )
            )
            for request in requests[done:]
        ]
        try:
            for call in calls:
                checked(await call)
        finally:
            # A failure (or a cancel) leaves no call behind, nor an error unretrieved.
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)

    async def invoke(
        self,
        session_id: str,
        command: pb.MxCommand,
        *,
        timeout: float | UseDefault | None = DEFAULT,
        client_correlation_id: str | None = None,
    ) -> pb.MxCommandReply:
        """Like :meth:`invoke_raw`, and also raise :class:`MxAccessError` for MXAccess
        failures (the raw reply is kept on the exception)."""
        reply = await self.invoke_raw(
            session_id, command, timeout=timeout, client_correlation_id=client_correlation_id
        )
        return check_mxaccess(reply)

    # -- events -----------------------------------------------------------------------
    def stream_events_raw(
        self, session_id: str, after_worker_sequence: int | None = None
    ) -> Stream[pb.MxEvent]:
        """``StreamEvents``: an async iterator of generated ``MxEvent`` messages.

        ``after_worker_sequence`` replays events with a greater sequence first; ``None``
        delivers only new events. Close it with ``aclose()``/``async with``/``break``.
        """
        return self._transport.stream(
            self._stub.StreamEvents,
            _stream_request(session_id, after_worker_sequence),
            session_id=session_id,
            what="StreamEvents",
        )

    def stream_event_batches_raw(
        self, session_id: str, after_worker_sequence: int | None = None
    ) -> Stream[pb.MxEventBatch]:
        """``StreamEventBatches``: an async iterator of generated ``MxEventBatch``."""
        return self._transport.stream(
            self._stub.StreamEventBatches,
            _stream_request(session_id, after_worker_sequence),
            session_id=session_id,
            what="StreamEventBatches",
        )

    def _stream_event_view(
        self, session_id: str, after_worker_sequence: int | None, *, batches: bool
    ) -> Stream[Any]:
        """``StreamEventBatches`` (or ``StreamEvents``) read into the decoding view of
        :mod:`mxgateway._eventwire`: what ``Session.events()`` iterates."""
        return self._transport.stream(
            self._view_batches if batches else self._view_events,
            _stream_request(session_id, after_worker_sequence),
            session_id=session_id,
            what="StreamEventBatches" if batches else "StreamEvents",
        )

    # -- alarms (session-less) ------------------------------------------------------------
    def stream_alarms_raw(self, filter_prefix: str = "") -> Stream[pb.AlarmFeedMessage]:
        """``StreamAlarms``: the active alarms whose reference starts with
        ``filter_prefix`` (empty: all), a ``snapshot_complete`` marker, then transitions."""
        return self._transport.stream(
            self._stub.StreamAlarms,
            pb.StreamAlarmsRequest(alarm_filter_prefix=filter_prefix),
            what="StreamAlarms",
        )

    async def acknowledge_alarm_raw(
        self,
        *,
        reference: str = "",
        guid: str = "",
        comment: str = "",
        operator: str = "",
        timeout: float | UseDefault | None = DEFAULT,
    ) -> pb.AcknowledgeAlarmReply:
        """``AcknowledgeAlarm`` by full reference or GUID; returns the generated reply.

        Raises the typed error of gRPC failures and of protocol statuses other than OK and
        MXACCESS_FAILURE; an MXAccess refusal stays in the reply (``status``, and, as
        upstream, the native status in ``hresult``).
        """
        request = pb.AcknowledgeAlarmRequest(
            client_correlation_id=self._next_correlation_id(),
            alarm_guid=guid,
            alarm_full_reference=reference,
            comment=comment,
            operator_user=operator,
        )
        reply = await self._transport.unary(
            self._stub.AcknowledgeAlarm, request, timeout=timeout, what="AcknowledgeAlarm"
        )
        code = reply.protocol_status.code if reply.HasField("protocol_status") else _OK
        if code != _OK and code != _MXACCESS_FAILURE:
            raise_for_protocol_status(reply, reply.protocol_status, what="AcknowledgeAlarm")
        return reply

    # -- recovering subscriptions -------------------------------------------------------
    def subscribe(
        self,
        items: Iterable[str],
        *,
        client_name: str = "mxgateway-py",
        session_name: str = "",
        supervisory: bool = False,
        queue_size: int = 10_000,
        reconnect: RetryPolicy | UseDefault | None = DEFAULT,
        on_state_change: Callable[[StateChange], None] | None = None,
        chunk_size: int = 1000,
        resync_on_gap: bool = True,
    ) -> Subscription:
        """A :class:`~mxgateway.Subscription` of ``items`` that survives gateway restarts.

        It opens its own session, registers as ``client_name``, subscribes the items with
        ``SubscribeBulk`` (``chunk_size`` per call) and yields their values. When the
        connection is lost it re-attaches to its session; when the session is gone it
        opens a new one, subscribes again and marks the values that follow
        ``resynchronized`` (see ``docs/reliability.md``). Nothing happens until
        ``async with``, the first read or ``start()``; closing the client closes it.

        Args:
            items: Tag references (duplicates are ignored).
            client_name: The ``Register`` client name.
            session_name: The ``OpenSession`` client session name.
            supervisory: Advise supervisory (AdviseSupervisory).
            queue_size: Values buffered between the stream and the consumer; a full queue
                holds the stream back (back-pressure), it never drops values.
            reconnect: Backoff between attempts to get a session back (default: for ever,
                0.25 s doubling to 10 s, jittered); ``None`` gives up when the first
                attempt after a loss fails.
            on_state_change: Called (synchronously, in the loop) with each
                :class:`~mxgateway.StateChange`.
            chunk_size: Items per ``SubscribeBulk`` call.
            resync_on_gap: After an ``EventGap`` on the same session, read every item
                again (``ReadBulk``) and yield the values marked ``resynchronized``.
        """
        from mxgateway._subscription import DEFAULT_RECONNECT, Subscription

        self._check_open()
        subscription = Subscription(
            self,
            items,
            client_name=client_name,
            session_name=session_name,
            supervisory=supervisory,
            queue_size=queue_size,
            reconnect=DEFAULT_RECONNECT if reconnect is DEFAULT else reconnect,
            on_state_change=on_state_change,
            chunk_size=chunk_size,
            resync_on_gap=resync_on_gap,
        )
        self._subscriptions.add(subscription)
        return subscription

    def _forget_subscription(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    # -- lifecycle --------------------------------------------------------------------
    async def close(self) -> None:
        """Close the subscriptions and the sessions opened by this client, then the
        channel. Idempotent."""
        if self._transport.closed:
            return
        try:
            for subscription in list(self._subscriptions):
                await subscription.aclose()
        finally:
            await self._close_sessions()

    async def _close_sessions(self) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        try:
            for session in sessions:
                try:
                    await session.close(timeout=_SESSION_CLOSE_TIMEOUT)
                except MxGatewayError as exc:
                    _log.warning(
                        "could not close session %s while closing the client: %s",
                        session.session_id,
                        exc,
                    )
        finally:
            # Even when cancelled while closing sessions: never leak the channel.
            try:
                if self._commands is not None:
                    await self._commands.aclose()
            finally:
                await self._transport.close()

    aclose = close

    def _check_open(self) -> None:
        if self._transport.closed:
            raise ClientClosedError("the client is closed")

    async def __aenter__(self) -> GatewayClient:
        self._check_open()
        return self


def _stream_request(session_id: str, after: int | None) -> pb.StreamEventsRequest:
    request = pb.StreamEventsRequest(session_id=session_id)
    if after is not None:
        if after < 0:
            raise ValueError("after_worker_sequence must be >= 0")
        request.after_worker_sequence = after
    return request
