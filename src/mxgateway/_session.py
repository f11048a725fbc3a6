"""``Session``: one gateway session and a helper per MXAccess command.

Helpers take Python values, build the generated command, run it through
``GatewayClient.invoke`` (which raises :class:`MxAccessError` for MXAccess failures) and
return plain results (handles, user ids) or the generated bulk result rows. Values are
converted with :func:`mxgateway.to_mx_value` before anything is sent, so a bad value is a
``ValueError`` and no call is made.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from mxgateway._chunking import MAX_BULK_ENTRIES, split_bulk_command
from mxgateway._encoded import ReadMemo
from mxgateway._enums import enum_name
from mxgateway._errors import (
    ClientClosedError,
    MxAccessError,
    MxGatewayProtocolError,
    MxGatewaySessionNotFoundError,
    MxGatewaySessionStateError,
    MxGatewayWriteTimeoutError,
    check_mxaccess,
)
from mxgateway._events import EventStream, WriteComplete
from mxgateway._logsafe import get_logger
from mxgateway._status import describe_status
from mxgateway._transport import DEFAULT, Stream, UseDefault
from mxgateway._values import ValueType, datetime_to_timestamp, fill_mx_value, to_mx_value
from mxgateway._writes import WriteWaiter, WriteWaiters
from mxgateway.generated import mxaccess_gateway_pb2 as pb

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from mxgateway._client import GatewayClient

__all__ = ["Session"]

_log = get_logger(__name__)
_log.addHandler(logging.NullHandler())

_T = TypeVar("_T")
_B = TypeVar("_B", pb.BulkSubscribeReply, pb.BulkWriteReply, pb.BulkReadReply)
_R = TypeVar("_R")
_Row = pb.WriteBulkEntry | pb.Write2BulkEntry | pb.WriteSecuredBulkEntry | pb.WriteSecured2BulkEntry

# Bulk requests are split to stay within a quarter of the message limit: the reply echoes
# each row's reference and adds a value or an error message and statuses, so it can be
# several times larger than the request that caused it.
_BULK_REQUEST_SHARE = 4

_SMALL_BULK = 256
"""Rows of a bulk command whose size its method bounds instead of measuring (``_bulk``)."""

_PIPE_ROWS = 2_500
"""Fewest rows of each request a large ``read_bulk`` is pipelined in (see
:data:`_PIPE_CHUNKS`): a read of fewer than twice this goes as one request."""
_PIPE_CHUNKS = 2
"""Most requests a large ``read_bulk`` is sent in, written back to back on the command
stream (concurrent calls on ``Invoke``): the client decodes one reply while the gateway
computes the next (``GatewayClient._invoke_many``). Each request costs the gateway a
little; docs/benchmarks.md has the measurement that chose these."""

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

DEFAULT_WRITE_WAIT = 30.0
"""Seconds a write with ``wait=True`` waits for its ``OnWriteComplete`` by default."""
# How long a write waiter waits for the gateway to attach its event stream (response
# headers) before sending the write anyway.
_ATTACH_WAIT = 2.0


def _value(value: object, value_type: ValueType | None, where: str = "") -> pb.MxValue:
    if isinstance(value, pb.MxValue):
        if value_type is not None:
            raise ValueError(f"{where}value_type cannot be combined with an MxValue")
        return value
    try:
        return to_mx_value(value, value_type)
    except ValueError as exc:
        if where:
            raise ValueError(f"{where}{exc}") from None
        raise


def _fill_value(target: pb.MxValue, value: object, value_type: ValueType | None) -> None:
    """:func:`_value` filled into ``target`` (an empty value inside its command)."""
    if isinstance(value, pb.MxValue):
        if value_type is not None:
            raise ValueError("value_type cannot be combined with an MxValue")
        target.CopyFrom(value)
    else:
        fill_mx_value(target, value, value_type)


def _fill_row(
    row: _Row, index: int, handle: object, value: object, value_type: ValueType | None
) -> None:
    """Fill a bulk write row's handle and value in place (no copy of the value); an error
    names the row. Messages are only built on failure: this runs once per row."""
    try:
        row.item_handle = _int32(handle, "item_handle")  # type: ignore[arg-type]
        if isinstance(value, pb.MxValue):
            if value_type is not None:
                raise ValueError("value_type cannot be combined with an MxValue")
            row.value.CopyFrom(value)
        else:
            fill_mx_value(row.value, value, value_type)
    except ValueError as exc:
        raise ValueError(f"entry {index} (item {handle!r}): {exc}") from None


def _time(value: datetime, where: str = "timestamp") -> Timestamp:
    if not isinstance(value, datetime):
        raise ValueError(f"{where} must be an aware datetime, not {type(value).__name__}")
    return datetime_to_timestamp(value, what=where)


def _int32(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if not _INT32_MIN <= value <= _INT32_MAX:
        raise ValueError(f"{name} {value} is out of the int32 range")
    return value


def _handles(values: Iterable[int], name: str = "item_handles") -> list[int]:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of ints")
    return [_int32(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _strings(values: Iterable[str], name: str = "tag_addresses") -> list[str]:
    return _checked_strings(values, name)[0]


def _checked_strings(values: Iterable[str], name: str) -> tuple[list[str], bool]:
    """:func:`_strings` and whether every entry is ``str`` itself (no subclass)."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of strings, not a single string")
    out = list(values)
    if set(map(type, out)) - {str}:  # one pass in C; the loop names the first bad entry
        for i, v in enumerate(out):
            if not isinstance(v, str):
                raise ValueError(f"{name}[{i}] must be a string, not {type(v).__name__}")
        return out, False
    return out, True


def _list_rows(*parts: Sequence[_T]) -> list[_T]:
    """The rows of a reply's repeated field (or of several, one after the other) as one
    list, with no garbage collection in the middle.

    Listing 10,000 rows creates 10,000 message objects the caller keeps: collections run
    during that burst (by default one every 700 allocations) find nothing to free, but hand the rows
    on to older generations, which then cost every later full collection; a read of 10,000
    rows spent about as much CPU in the collector as in decoding the reply. Paused here,
    the next collection sees the rows once, usually after the caller dropped the previous
    ones. The pause is C calls only (a slice of a repeated field: the container fills a
    list of the right size in one loop, without an iterator over it; the GIL held
    throughout): no Python code, no other thread, runs while it lasts. A caller that
    disabled the collector keeps it disabled. A pipelined read lists the rows of all its
    replies in one pause at the end: listed one reply at a time, the collections between
    them carried the earlier rows on to older generations (callgrind: +1.6M instructions
    in the collector per 10,000-row read in two replies).
    """
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        rows: list[_T] = parts[0][:]  # type: ignore[assignment]  # a repeated field slices to a list
        for part in parts[1:]:
            rows += part[:]
        return rows
    finally:
        if enabled:
            gc.enable()


def _pipe_cuts(count: int) -> list[int]:
    """Where a read of ``count`` tags is cut into the requests it is pipelined in: at most
    :data:`_PIPE_CHUNKS` slices of at least :data:`_PIPE_ROWS` rows, equal but for the
    last (``[0, count]``: one request)."""
    chunks = max(1, min(_PIPE_CHUNKS, count // _PIPE_ROWS))
    size = -(-count // chunks)
    return [min(count, i * size) for i in range(chunks + 1)]


def _read_command(server_handle: int, tags: list[str], timeout_ms: int) -> pb.MxCommand:
    """The ``ReadBulk`` command of these arguments."""
    cmd = pb.MxCommand(kind=pb.MX_COMMAND_KIND_READ_BULK)
    read = cmd.read_bulk
    read.server_handle = server_handle
    read.tag_addresses.extend(tags)
    read.timeout_ms = timeout_ms
    return cmd


def _pairs(entries: Mapping[int, object] | Iterable[Any]) -> list[Any]:
    if isinstance(entries, Mapping):
        return list(entries.items())
    return list(entries)


class Session:
    """One gateway session: MXAccess command helpers, raw invoke and events.

    Obtain with :meth:`GatewayClient.open_session` (or ``attach_session``). Use as an async
    context manager to close the session on exit; :meth:`close` is idempotent.
    """

    def __init__(
        self,
        client: GatewayClient,
        session_id: str,
        *,
        open_reply: pb.OpenSessionReply | None = None,
    ) -> None:
        self._client = client
        self._session_id = session_id
        self._open_reply = open_reply
        self._closed = False
        # The previous events() iterator, weakly: a dropped iterator must stay collectable,
        # since collecting it is what cancels its stream.
        self._last_events: weakref.ref[EventStream] | None = None
        # Write outcomes: waiters fed by whichever stream carries the session's events.
        self._writes = WriteWaiters()
        self._private: EventStream | None = None
        self._private_users = 0
        # The last large read_bulk, encoded: the next read of the same tags sends it again.
        self._read_memo: ReadMemo | None = None

    @property
    def session_id(self) -> str:
        """The gateway's session id (``session-`` + 32 hex digits)."""
        return self._session_id

    @property
    def client(self) -> GatewayClient:
        """The client this session runs on."""
        return self._client

    @property
    def open_reply(self) -> pb.OpenSessionReply | None:
        """The ``OpenSessionReply`` (``None`` for attached sessions)."""
        return self._open_reply

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError(f"session {self._session_id} is closed")

    # -- invoke -----------------------------------------------------------------------
    async def invoke_raw(
        self, command: pb.MxCommand, *, timeout: float | UseDefault | None = DEFAULT
    ) -> pb.MxCommandReply:
        """Run a command; protocol/transport failures raise, MXAccess failures stay in
        the returned reply (check ``protocol_status``, ``hresult`` and ``statuses``)."""
        self._check_open()
        return await self._client.invoke_raw(self._session_id, command, timeout=timeout)

    async def invoke(
        self, command: pb.MxCommand, *, timeout: float | UseDefault | None = DEFAULT
    ) -> pb.MxCommandReply:
        """Run a command; MXAccess failures also raise :class:`MxAccessError`."""
        self._check_open()
        return await self._client.invoke(self._session_id, command, timeout=timeout)

    async def _invoke_built(self, request: pb.MxCommandRequest) -> pb.MxCommandReply:
        """:meth:`invoke` of a command built inside its request (:meth:`_request`): the
        same call without building the command apart and copying it into the request."""
        self._check_open()
        return check_mxaccess(await self._client._invoke_request(request))

    @staticmethod
    def _result(reply: pb.MxCommandReply, field: str, cls: type[_T]) -> _T:
        if reply.WhichOneof("result") != field:
            raise MxGatewayProtocolError(
                f"the reply to {enum_name(pb.MxCommandKind, reply.kind, short=False)} "
                f"carries no {field} result",
                reply=reply,
                session_id=reply.session_id or None,
            )
        result = getattr(reply, field)
        if not isinstance(result, cls):  # pragma: no cover - the oneof fixes the type
            raise MxGatewayProtocolError(f"unexpected {field} result type", reply=reply)
        return result

    # -- registration and items -------------------------------------------------------
    async def register(self, client_name: str) -> int:
        """``Register``: returns the server handle (hLMX)."""
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_REGISTER,
            register=pb.RegisterCommand(client_name=client_name),
        )
        reply = await self.invoke(cmd)
        return self._result(reply, "register", pb.RegisterReply).server_handle

    async def unregister(self, server_handle: int) -> None:
        """``Unregister``."""
        await self.invoke(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_UNREGISTER,
                unregister=pb.UnregisterCommand(server_handle=server_handle),
            )
        )

    async def add_item(self, server_handle: int, item_definition: str) -> int:
        """``AddItem``: returns the item handle."""
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_ADD_ITEM,
            add_item=pb.AddItemCommand(
                server_handle=server_handle, item_definition=item_definition
            ),
        )
        reply = await self.invoke(cmd)
        return self._result(reply, "add_item", pb.AddItemReply).item_handle

    async def add_item2(self, server_handle: int, item_definition: str, item_context: str) -> int:
        """``AddItem2`` (a reference relative to ``item_context``): returns the item handle."""
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_ADD_ITEM2,
            add_item2=pb.AddItem2Command(
                server_handle=server_handle,
                item_definition=item_definition,
                item_context=item_context,
            ),
        )
        reply = await self.invoke(cmd)
        return self._result(reply, "add_item2", pb.AddItemReply).item_handle

    async def remove_item(self, server_handle: int, item_handle: int) -> None:
        """``RemoveItem``."""
        await self.invoke(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_REMOVE_ITEM,
                remove_item=pb.RemoveItemCommand(
                    server_handle=server_handle, item_handle=item_handle
                ),
            )
        )

    async def advise(self, server_handle: int, item_handle: int) -> None:
        """``Advise``: data changes of the item arrive as events."""
        await self.invoke(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_ADVISE,
                advise=pb.AdviseCommand(server_handle=server_handle, item_handle=item_handle),
            )
        )

    async def advise_supervisory(self, server_handle: int, item_handle: int) -> None:
        """``AdviseSupervisory``: a supervisory (system) subscription."""
        await self.invoke(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_ADVISE_SUPERVISORY,
                advise_supervisory=pb.AdviseSupervisoryCommand(
                    server_handle=server_handle, item_handle=item_handle
                ),
            )
        )

    async def unadvise(self, server_handle: int, item_handle: int) -> None:
        """``UnAdvise``."""
        await self.invoke(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_UN_ADVISE,
                un_advise=pb.UnAdviseCommand(server_handle=server_handle, item_handle=item_handle),
            )
        )

    async def suspend(self, server_handle: int, item_handle: int) -> None:
        """``Suspend``: pause updates of an advised item."""
        await self.invoke(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_SUSPEND,
                suspend=pb.SuspendCommand(server_handle=server_handle, item_handle=item_handle),
            )
        )

    async def activate(self, server_handle: int, item_handle: int) -> None:
        """``Activate``: resume a suspended item."""
        await self.invoke(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_ACTIVATE,
                activate=pb.ActivateCommand(server_handle=server_handle, item_handle=item_handle),
            )
        )

    async def add_buffered_item(
        self, server_handle: int, item_definition: str, item_context: str = ""
    ) -> int:
        """``AddBufferedItem``: returns the item handle (events: ``BufferedDataChange``)."""
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_ADD_BUFFERED_ITEM,
            add_buffered_item=pb.AddBufferedItemCommand(
                server_handle=server_handle,
                item_definition=item_definition,
                item_context=item_context,
            ),
        )
        reply = await self.invoke(cmd)
        return self._result(reply, "add_buffered_item", pb.AddItemReply).item_handle

    async def set_buffered_update_interval(
        self, server_handle: int, update_interval_ms: int
    ) -> None:
        """``SetBufferedUpdateInterval`` (milliseconds between buffered deliveries)."""
        await self.invoke(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_SET_BUFFERED_UPDATE_INTERVAL,
                set_buffered_update_interval=pb.SetBufferedUpdateIntervalCommand(
                    server_handle=server_handle,
                    update_interval_ms=_int32(update_interval_ms, "update_interval_ms"),
                ),
            )
        )

    # -- writes -----------------------------------------------------------------------
    async def write(
        self,
        server_handle: int,
        item_handle: int,
        value: object,
        *,
        user_id: int = 0,
        value_type: ValueType | None = None,
        wait: bool = False,
        wait_timeout: float | None = DEFAULT_WRITE_WAIT,
    ) -> WriteComplete | None:
        """``Write``: ``value`` is a Python value (or an ``MxValue``); ``value_type``
        forces the MXAccess type (e.g. ``"float"``).

        As upstream, the reply only says MXAccess accepted the write; its outcome is the
        item's next ``OnWriteComplete``. With ``wait=True`` this method waits for it (at
        most ``wait_timeout`` seconds, then :class:`MxGatewayWriteTimeoutError`), raises
        :class:`MxAccessError` (``completion`` set) when it reports a failure, and returns
        the :class:`WriteComplete`; without, it returns ``None`` once accepted. Argument
        errors (unknown handle, item not advised) raise at once either way.
        """
        # Built inside its request, the value converted in place (no copies).
        request, cmd = self._request()
        cmd.kind = pb.MX_COMMAND_KIND_WRITE
        body = cmd.write
        _fill_value(body.value, value, value_type)  # first: a bad value is named first
        body.server_handle = server_handle
        body.item_handle = item_handle
        body.user_id = user_id
        return await self._write(request, server_handle, item_handle, wait, wait_timeout)

    async def write2(
        self,
        server_handle: int,
        item_handle: int,
        value: object,
        timestamp: datetime,
        *,
        user_id: int = 0,
        value_type: ValueType | None = None,
        wait: bool = False,
        wait_timeout: float | None = DEFAULT_WRITE_WAIT,
    ) -> WriteComplete | None:
        """``Write2``: a write with a source timestamp (an aware ``datetime``); ``wait``
        as for :meth:`write`."""
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_WRITE2,
            write2=pb.Write2Command(
                server_handle=server_handle,
                item_handle=item_handle,
                value=_value(value, value_type),
                timestamp_value=_time(timestamp),
                user_id=user_id,
            ),
        )
        return await self._write(cmd, server_handle, item_handle, wait, wait_timeout)

    async def write_secured(
        self,
        server_handle: int,
        item_handle: int,
        value: object,
        *,
        current_user_id: int,
        verifier_user_id: int | None = None,
        value_type: ValueType | None = None,
        wait: bool = False,
        wait_timeout: float | None = DEFAULT_WRITE_WAIT,
    ) -> WriteComplete | None:
        """``WriteSecured``: user ids come from :meth:`authenticate_user`; the verifier
        defaults to the current user (a secured rather than verified write); ``wait`` as
        for :meth:`write` (a refused user is a failed outcome, not a failed call)."""
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_WRITE_SECURED,
            write_secured=pb.WriteSecuredCommand(
                server_handle=server_handle,
                item_handle=item_handle,
                current_user_id=current_user_id,
                verifier_user_id=(
                    current_user_id if verifier_user_id is None else verifier_user_id
                ),
                value=_value(value, value_type),
            ),
        )
        return await self._write(cmd, server_handle, item_handle, wait, wait_timeout)

    async def write_secured2(
        self,
        server_handle: int,
        item_handle: int,
        value: object,
        timestamp: datetime,
        *,
        current_user_id: int,
        verifier_user_id: int | None = None,
        value_type: ValueType | None = None,
        wait: bool = False,
        wait_timeout: float | None = DEFAULT_WRITE_WAIT,
    ) -> WriteComplete | None:
        """``WriteSecured2``: a secured write with a source timestamp; ``wait`` as for
        :meth:`write`."""
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_WRITE_SECURED2,
            write_secured2=pb.WriteSecured2Command(
                server_handle=server_handle,
                item_handle=item_handle,
                current_user_id=current_user_id,
                verifier_user_id=(
                    current_user_id if verifier_user_id is None else verifier_user_id
                ),
                value=_value(value, value_type),
                timestamp_value=_time(timestamp),
            ),
        )
        return await self._write(cmd, server_handle, item_handle, wait, wait_timeout)

    async def _write(
        self,
        cmd: pb.MxCommand | pb.MxCommandRequest,
        server_handle: int,
        item_handle: int,
        wait: bool,
        wait_timeout: float | None,
    ) -> WriteComplete | None:
        _, event = await self._invoke_write(
            cmd, server_handle, item_handle, wait=wait, wait_timeout=wait_timeout
        )
        return event

    async def _invoke_write(
        self,
        cmd: pb.MxCommand | pb.MxCommandRequest,
        server_handle: int,
        item_handle: int,
        *,
        wait: bool,
        wait_timeout: float | None = DEFAULT_WRITE_WAIT,
    ) -> tuple[pb.MxCommandReply, WriteComplete | None]:
        """Send a write command; with ``wait``, correlate its ``OnWriteComplete`` (see
        ``mxgateway._writes``). Returns the reply and the completion (``mxgw-py`` prints
        both); a failed completion raises :class:`MxAccessError`. ``cmd`` may be a
        command built inside its request (:meth:`_request`)."""

        def send() -> Awaitable[pb.MxCommandReply]:
            if isinstance(cmd, pb.MxCommandRequest):
                return self._invoke_built(cmd)
            return self.invoke(cmd)

        if not wait:
            return await send(), None
        reply, (event,) = await self._correlated(
            [(server_handle, item_handle)],
            send,
            lambda _: [True],  # a write that was not accepted raised
            wait_timeout,
        )
        assert event is not None
        if not event.succeeded:
            raise MxAccessError(reply, completion=event.raw)
        return reply, event

    async def _correlated(
        self,
        keys: list[tuple[int, int]],
        send: Callable[[], Awaitable[_R]],
        accepted: Callable[[_R], list[bool]],
        wait_timeout: float | None,
    ) -> tuple[_R, list[WriteComplete | None]]:
        """Send writes and wait for the ``OnWriteComplete`` of each ``(server, item)`` key
        that ``accepted(result)`` marks as accepted (the others get ``None``)."""
        if wait_timeout is not None and wait_timeout <= 0:
            raise ValueError("wait_timeout must be > 0 (or None: no limit)")
        self._check_open()
        stream, private = self._correlation_stream()
        waiters: list[WriteWaiter] = []
        try:
            # A completion may be published before the reply arrives: the stream must be
            # attached, and the waiters registered in send order, before anything is sent.
            attach = _ATTACH_WAIT if wait_timeout is None else min(_ATTACH_WAIT, wait_timeout)
            await stream._established(attach)
            tracker = stream._tracker
            after = tracker.last if tracker.tracking else 0
            waiters = [self._writes.expect(sh, ih, after=after) for sh, ih in keys]
            result = await send()
            keep = accepted(result)
            if len(keep) != len(waiters):
                raise MxGatewayProtocolError(
                    f"{len(keep)} result rows for {len(waiters)} writes",
                    session_id=self._session_id,
                )
            # Refused at once: no completion will come for those.
            self._writes.discard([w for w, ok in zip(waiters, keep, strict=True) if not ok])
            live = [w for w, ok in zip(waiters, keep, strict=True) if ok]
            await self._outcomes(stream, live, wait_timeout)
            events = [
                w.future.result() if ok else None for w, ok in zip(waiters, keep, strict=True)
            ]
            return result, events
        finally:
            self._writes.discard(waiters)
            if private:
                await self._release_correlation()

    async def _outcomes(
        self, stream: EventStream, waiters: list[WriteWaiter], wait_timeout: float | None
    ) -> None:
        """Read ahead on ``stream`` until every waiter has its completion."""
        if not waiters:
            return

        def all_done() -> bool:
            return all(w.future.done() for w in waiters)

        async def pump() -> None:
            # Read ahead for the caller (who may be awaiting this very write inside its
            # `async for`); events stay buffered for it, the observer resolves the futures.
            while not all_done():
                try:
                    await stream._read_ahead(all_done)
                except StopAsyncIteration:
                    raise MxGatewaySessionStateError(
                        f"the event stream of {self._session_id} ended before every "
                        "OnWriteComplete arrived",
                        session_id=self._session_id,
                    ) from None

        try:
            await asyncio.wait_for(pump(), wait_timeout)
        except asyncio.TimeoutError:
            missing = [w for w in waiters if not w.future.done()]
            server_handle, item_handle = missing[0].key if missing else waiters[0].key
            err = MxGatewayWriteTimeoutError(
                f"the write to item {item_handle} (server handle {server_handle})"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                + " was accepted, but its OnWriteComplete did not arrive within "
                f"{wait_timeout} s; the write may still take effect",
                session_id=self._session_id,
            )
            err.server_handle, err.item_handle = server_handle, item_handle
            raise err from None

    def _correlation_stream(self) -> tuple[EventStream, bool]:
        """The stream that will carry a write's completion: the caller's open
        ``events()`` iterator if there is one (one subscriber per session), else the
        session's private correlation stream (new events only), shared by waiters."""
        active = self._last_events() if self._last_events is not None else None
        if active is not None and not active.closed and active is not self._private:
            return active, False
        if self._private is None:
            self._private = EventStream(
                self._client,
                self._session_id,
                after_worker_sequence=None,
                follows_closed_stream=self._last_events is not None,
                observer=self._writes.observe,
            )
            self._last_events = weakref.ref(self._private)
        self._private_users += 1
        return self._private, True

    async def _release_correlation(self) -> None:
        self._private_users -= 1
        private = self._private
        if self._private_users == 0 and private is not None:
            self._private = None
            await private.aclose()

    # -- users ------------------------------------------------------------------------
    async def authenticate_user(self, server_handle: int, user: str, password: str) -> int:
        """``AuthenticateUser``: returns the user id (0 means authentication failed).

        The password is sent once and never logged or put into an error message.
        """
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_AUTHENTICATE_USER,
            authenticate_user=pb.AuthenticateUserCommand(
                server_handle=server_handle, verify_user=user, verify_user_password=password
            ),
        )
        reply = await self.invoke(cmd)
        return self._result(reply, "authenticate_user", pb.UserIdReply).user_id

    async def archestra_user_to_id(self, server_handle: int, user_id_guid: str) -> int:
        """``ArchestrAUserToId``: the user id of an ArchestrA user GUID."""
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_ARCHESTRA_USER_TO_ID,
            archestra_user_to_id=pb.ArchestrAUserToIdCommand(
                server_handle=server_handle, user_id_guid=user_id_guid
            ),
        )
        reply = await self.invoke(cmd)
        return self._result(reply, "archestra_user_to_id", pb.UserIdReply).user_id

    # -- diagnostics ------------------------------------------------------------------
    async def ping(self) -> None:
        """``Ping``: checks that the session's worker answers."""
        request, cmd = self._request()
        cmd.kind = pb.MX_COMMAND_KIND_PING
        cmd.ping.SetInParent()
        await self._invoke_built(request)

    async def get_session_state(self) -> pb.SessionState.ValueType:
        """``GetSessionState``: the ``SessionState`` value."""
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_GET_SESSION_STATE,
            get_session_state=pb.GetSessionStateCommand(),
        )
        reply = await self.invoke(cmd)
        return self._result(reply, "session_state", pb.GetSessionStateReply).state

    async def get_worker_info(self) -> pb.GetWorkerInfoReply:
        """``GetWorkerInfo``: backend name, versions and process id of the worker."""
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_GET_WORKER_INFO,
            get_worker_info=pb.GetWorkerInfoCommand(),
        )
        reply = await self.invoke(cmd)
        return self._result(reply, "worker_info", pb.GetWorkerInfoReply)

    async def drain_events(self, max_events: int = 0) -> list[pb.MxEvent]:
        """``DrainEvents``: queued events returned in the reply instead of a stream
        (``max_events`` 0: all queued that fit in one reply; call again until it returns
        none), as generated ``MxEvent`` messages."""
        cmd = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_DRAIN_EVENTS,
            drain_events=pb.DrainEventsCommand(max_events=_int32(max_events, "max_events")),
        )
        reply = await self.invoke(cmd)
        return list(self._result(reply, "drain_events", pb.DrainEventsReply).events)

    # -- bulk -------------------------------------------------------------------------
    async def _bulk(
        self,
        cmd: pb.MxCommand,
        field: str,
        cls: type[_B],
        *,
        timeout: float | UseDefault | None = DEFAULT,
        request: pb.MxCommandRequest | None = None,
        size_bound: int | None = None,
    ) -> list[Any]:
        """Run a bulk command, split into several requests when it would not fit in one
        message (or has more rows than one reply should carry); results keep input order.
        ``request``: the request ``cmd`` was built in (:meth:`_request`); ``size_bound``:
        a bound on ``cmd``'s encoded size that the caller knows (of at most
        :data:`_SMALL_BULK` rows): within the budget, it is sent without measuring it
        (protobuf measures a message by encoding it)."""
        self._check_open()
        budget = self._client.options.max_message_bytes // _BULK_REQUEST_SHARE
        results: list[Any] = []
        parts = (
            (cmd,)
            if size_bound is not None and size_bound <= budget
            else split_bulk_command(cmd, budget)
        )
        for part in parts:
            if part is cmd and isinstance(request, pb.MxCommandRequest):
                # Sent as built, inside its request (no copy of its rows).
                reply = check_mxaccess(await self._client._invoke_request(request, timeout))
            else:
                reply = await self._client.invoke(self._session_id, part, timeout=timeout)
            rows = _list_rows(self._result(reply, field, cls).results)
            if results:
                results.extend(rows)
            else:
                results = rows
        return results

    def _request(self) -> tuple[pb.MxCommandRequest, pb.MxCommand]:
        """A request of this session and its command, to fill in place: a bulk command
        built inside its request is sent without a copy of its rows (:meth:`_bulk`)."""
        request = pb.MxCommandRequest(session_id=self._session_id)
        return request, request.command

    async def _bulk_subscribe(self, cmd: pb.MxCommand) -> list[pb.SubscribeResult]:
        return await self._bulk(cmd, "bulk_subscribe", pb.BulkSubscribeReply)

    async def _bulk_write(
        self, cmd: pb.MxCommand, wait: bool, wait_timeout: float | None
    ) -> list[pb.BulkWriteResult]:
        """Run a bulk write; with ``wait``, each accepted row's outcome replaces its
        acceptance: a row refused in its ``OnWriteComplete`` becomes ``was_successful =
        False`` with that completion's statuses and a decoded ``error_message``."""
        if not wait:
            return await self._bulk(cmd, "bulk_write", pb.BulkWriteReply)
        payload = getattr(cmd, cmd.WhichOneof("payload") or "write_bulk")
        keys = [(payload.server_handle, e.item_handle) for e in payload.entries]

        async def send() -> list[pb.BulkWriteResult]:
            return await self._bulk(cmd, "bulk_write", pb.BulkWriteReply)

        rows, events = await self._correlated(
            keys, send, lambda rs: [r.was_successful for r in rs], wait_timeout
        )
        for row, event in zip(rows, events, strict=True):
            if event is not None and not event.succeeded:
                row.was_successful = False
                del row.statuses[:]
                row.statuses.extend(event.statuses)
                row.error_message = f"refused in OnWriteComplete #{event.worker_sequence}: " + (
                    "; ".join(describe_status(st) for st in event.failed_statuses)
                )
        return rows

    async def add_item_bulk(
        self, server_handle: int, tag_addresses: Iterable[str]
    ) -> list[pb.SubscribeResult]:
        """``AddItemBulk``: one ``SubscribeResult`` per reference, in order. Rows that
        failed have ``was_successful = False``; they never raise."""
        return await self._bulk_subscribe(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_ADD_ITEM_BULK,
                add_item_bulk=pb.AddItemBulkCommand(
                    server_handle=server_handle, tag_addresses=_strings(tag_addresses)
                ),
            )
        )

    async def advise_item_bulk(
        self, server_handle: int, item_handles: Iterable[int], *, supervisory: bool = False
    ) -> list[pb.SubscribeResult]:
        """``AdviseItemBulk`` (``supervisory`` uses AdviseSupervisory)."""
        return await self._bulk_subscribe(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_ADVISE_ITEM_BULK,
                advise_item_bulk=pb.AdviseItemBulkCommand(
                    server_handle=server_handle,
                    item_handles=_handles(item_handles),
                    supervisory=supervisory,
                ),
            )
        )

    async def remove_item_bulk(
        self, server_handle: int, item_handles: Iterable[int]
    ) -> list[pb.SubscribeResult]:
        """``RemoveItemBulk``."""
        return await self._bulk_subscribe(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_REMOVE_ITEM_BULK,
                remove_item_bulk=pb.RemoveItemBulkCommand(
                    server_handle=server_handle, item_handles=_handles(item_handles)
                ),
            )
        )

    async def unadvise_item_bulk(
        self, server_handle: int, item_handles: Iterable[int]
    ) -> list[pb.SubscribeResult]:
        """``UnAdviseItemBulk``."""
        return await self._bulk_subscribe(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_UN_ADVISE_ITEM_BULK,
                un_advise_item_bulk=pb.UnAdviseItemBulkCommand(
                    server_handle=server_handle, item_handles=_handles(item_handles)
                ),
            )
        )

    async def subscribe_bulk(
        self,
        server_handle: int,
        tag_addresses: Iterable[str],
        *,
        buffered_update_interval_ms: int = 0,
        supervisory: bool = False,
    ) -> list[pb.SubscribeResult]:
        """``SubscribeBulk``: AddItem + Advise per reference (buffered items when
        ``buffered_update_interval_ms > 0``)."""
        return await self._bulk_subscribe(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_SUBSCRIBE_BULK,
                subscribe_bulk=pb.SubscribeBulkCommand(
                    server_handle=server_handle,
                    tag_addresses=_strings(tag_addresses),
                    buffered_update_interval_ms=_int32(
                        buffered_update_interval_ms, "buffered_update_interval_ms"
                    ),
                    supervisory=supervisory,
                ),
            )
        )

    async def unsubscribe_bulk(
        self, server_handle: int, item_handles: Iterable[int]
    ) -> list[pb.SubscribeResult]:
        """``UnsubscribeBulk``: UnAdvise + RemoveItem per item."""
        return await self._bulk_subscribe(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_UNSUBSCRIBE_BULK,
                unsubscribe_bulk=pb.UnsubscribeBulkCommand(
                    server_handle=server_handle, item_handles=_handles(item_handles)
                ),
            )
        )

    async def write_bulk(
        self,
        server_handle: int,
        entries: Mapping[int, object] | Iterable[tuple[int, object] | pb.WriteBulkEntry],
        *,
        user_id: int = 0,
        value_type: ValueType | None = None,
        wait: bool = False,
        wait_timeout: float | None = DEFAULT_WRITE_WAIT,
    ) -> list[pb.BulkWriteResult]:
        """``WriteBulk``: ``entries`` maps item handles to values (a mapping or
        ``(item_handle, value)`` pairs, or ready ``WriteBulkEntry`` rows).

        A row's ``was_successful`` says the entry was accepted; its outcome is the item's
        ``OnWriteComplete``. With ``wait=True`` the rows report the outcomes instead (a
        refused entry: ``was_successful = False``, the completion's statuses, a decoded
        ``error_message``); per-row failures still never raise, a missing completion
        raises :class:`MxGatewayWriteTimeoutError` after ``wait_timeout`` seconds. The same
        holds for the other bulk writes."""
        cmd = pb.MxCommand(kind=pb.MX_COMMAND_KIND_WRITE_BULK)
        cmd.write_bulk.server_handle = server_handle
        rows = cmd.write_bulk.entries
        for i, entry in enumerate(_pairs(entries)):
            if isinstance(entry, pb.WriteBulkEntry):
                rows.append(entry)
                continue
            handle, value = entry
            row = rows.add(user_id=user_id)
            _fill_row(row, i, handle, value, value_type)
        return await self._bulk_write(cmd, wait, wait_timeout)

    async def write2_bulk(
        self,
        server_handle: int,
        entries: Iterable[tuple[int, object, datetime] | pb.Write2BulkEntry],
        *,
        user_id: int = 0,
        value_type: ValueType | None = None,
        wait: bool = False,
        wait_timeout: float | None = DEFAULT_WRITE_WAIT,
    ) -> list[pb.BulkWriteResult]:
        """``Write2Bulk``: ``(item_handle, value, timestamp)`` rows."""
        cmd = pb.MxCommand(kind=pb.MX_COMMAND_KIND_WRITE2_BULK)
        cmd.write2_bulk.server_handle = server_handle
        rows = cmd.write2_bulk.entries
        for i, entry in enumerate(entries):
            if isinstance(entry, pb.Write2BulkEntry):
                rows.append(entry)
                continue
            handle, value, ts = entry
            row = rows.add(user_id=user_id, timestamp_value=_time(ts, f"entry {i} timestamp"))
            _fill_row(row, i, handle, value, value_type)
        return await self._bulk_write(cmd, wait, wait_timeout)

    async def write_secured_bulk(
        self,
        server_handle: int,
        entries: Mapping[int, object] | Iterable[tuple[int, object] | pb.WriteSecuredBulkEntry],
        *,
        current_user_id: int = 0,
        verifier_user_id: int | None = None,
        value_type: ValueType | None = None,
        wait: bool = False,
        wait_timeout: float | None = DEFAULT_WRITE_WAIT,
    ) -> list[pb.BulkWriteResult]:
        """``WriteSecuredBulk``: ``(item_handle, value)`` rows written as
        ``current_user_id``/``verifier_user_id`` (pass ``WriteSecuredBulkEntry`` rows for
        per-row users)."""
        verifier = current_user_id if verifier_user_id is None else verifier_user_id
        cmd = pb.MxCommand(kind=pb.MX_COMMAND_KIND_WRITE_SECURED_BULK)
        cmd.write_secured_bulk.server_handle = server_handle
        rows = cmd.write_secured_bulk.entries
        for i, entry in enumerate(_pairs(entries)):
            if isinstance(entry, pb.WriteSecuredBulkEntry):
                rows.append(entry)
                continue
            handle, value = entry
            row = rows.add(current_user_id=current_user_id, verifier_user_id=verifier)
            _fill_row(row, i, handle, value, value_type)
        return await self._bulk_write(cmd, wait, wait_timeout)

    async def write_secured2_bulk(
        self,
        server_handle: int,
        entries: Iterable[tuple[int, object, datetime] | pb.WriteSecured2BulkEntry],
        *,
        current_user_id: int = 0,
        verifier_user_id: int | None = None,
        value_type: ValueType | None = None,
        wait: bool = False,
        wait_timeout: float | None = DEFAULT_WRITE_WAIT,
    ) -> list[pb.BulkWriteResult]:
        """``WriteSecured2Bulk``: ``(item_handle, value, timestamp)`` rows."""
        verifier = current_user_id if verifier_user_id is None else verifier_user_id
        cmd = pb.MxCommand(kind=pb.MX_COMMAND_KIND_WRITE_SECURED2_BULK)
        cmd.write_secured2_bulk.server_handle = server_handle
        rows = cmd.write_secured2_bulk.entries
        for i, entry in enumerate(entries):
            if isinstance(entry, pb.WriteSecured2BulkEntry):
                rows.append(entry)
                continue
            handle, value, ts = entry
            row = rows.add(
                current_user_id=current_user_id,
                verifier_user_id=verifier,
                timestamp_value=_time(ts, f"entry {i} timestamp"),
            )
            _fill_row(row, i, handle, value, value_type)
        return await self._bulk_write(cmd, wait, wait_timeout)

    async def read_bulk(
        self,
        server_handle: int,
        tag_addresses: Iterable[str],
        *,
        timeout_ms: int = 0,
        timeout: float | UseDefault | None = DEFAULT,
    ) -> list[pb.BulkReadResult]:
        """``ReadBulk``: the current value of each reference, in order.

        ``timeout_ms`` is how long the worker waits for each tag's first value (0: the
        worker's default). Already advised tags answer from the cache (``was_cached``).
        The call deadline defaults to the client timeout plus ``timeout_ms`` per tag.
        """
        tags, plain = _checked_strings(tag_addresses, "tag_addresses")
        _int32(timeout_ms, "timeout_ms")
        if timeout_ms < 0:
            raise ValueError("timeout_ms must be >= 0")
        if timeout is DEFAULT:
            base = self._client.options.timeout
            timeout = None if base is None else base + len(tags) * timeout_ms / 1000
        if len(tags) > _SMALL_BULK:
            return await self._read_many(server_handle, tags, plain, timeout_ms, timeout)
        request, cmd = self._request()
        cmd.kind = pb.MX_COMMAND_KIND_READ_BULK
        read = cmd.read_bulk
        read.server_handle = server_handle
        read.tag_addresses.extend(tags)
        read.timeout_ms = timeout_ms
        # A few tags (a single read, most calls): each is at most 4 bytes a character
        # plus its tag and length; the handle, timeout, kind and the payload's own tag
        # and length take less than 32.
        bound = 4 * (sum(map(len, tags)) + len(tags)) + 32
        return await self._bulk(
            cmd, "bulk_read", pb.BulkReadReply, timeout=timeout, request=request, size_bound=bound
        )

    async def _read_many(
        self,
        server_handle: int,
        tags: list[str],
        plain: bool,
        timeout_ms: int,
        timeout: float | UseDefault | None,
    ) -> list[pb.BulkReadResult]:
        """:meth:`read_bulk` of more than :data:`_SMALL_BULK` tags: sent as bytes encoded
        ahead (``mxgateway._encoded``), those of the session's previous large read when it
        asked for the same tags (``plain``: every tag is ``str`` itself, so equal lists are
        the same references), else encoded now and remembered for the next read. A command
        too large for one request is split as every bulk command is, and not remembered."""
        self._check_open()
        memo = self._read_memo
        if memo is None or not (plain and memo.matches(server_handle, tags, timeout_ms)):
            count = len(tags)
            if count > MAX_BULK_ENTRIES:
                return await self._bulk(
                    _read_command(server_handle, tags, timeout_ms),
                    "bulk_read",
                    pb.BulkReadReply,
                    timeout=timeout,
                )
            cuts = _pipe_cuts(count)
            commands = [
                _read_command(server_handle, tags[a:b], timeout_ms).SerializeToString()
                for a, b in itertools.pairwise(cuts)
            ]
            # The slices together are a few bytes larger than the command of them all.
            if sum(map(len, commands)) > self._client.options.max_message_bytes // (
                _BULK_REQUEST_SHARE
            ):
                cmd = _read_command(server_handle, tags, timeout_ms)
                return await self._bulk(cmd, "bulk_read", pb.BulkReadReply, timeout=timeout)
            memo = ReadMemo(server_handle, tags, timeout_ms, commands)
            if plain:
                self._read_memo = memo
        requests = memo.requests(self._session_id, self._client._next_correlation_id)
        if len(requests) == 1:
            reply = check_mxaccess(await self._client._invoke_request(requests[0], timeout))
            return _list_rows(self._result(reply, "bulk_read", pb.BulkReadReply).results)
        parts: list[Sequence[pb.BulkReadResult]] = []

        def take(reply: pb.MxCommandReply) -> None:
            # Decoded (by gRPC's deserializer) and checked while the gateway computes the
            # next reply; the rows are listed together at the end (one pause of the GC).
            parts.append(self._result(check_mxaccess(reply), "bulk_read", pb.BulkReadReply).results)

        await self._client._invoke_many(requests, timeout, take)
        return _list_rows(*parts)

    # -- events -----------------------------------------------------------------------
    def events(
        self,
        after_worker_sequence: int | None = None,
        *,
        new_only: bool = False,
        resume: bool = True,
        max_resume_attempts: int = 5,
    ) -> EventStream:
        """Typed events of this session (``DataChange``, ``WriteComplete``, ...).

        Reads ``StreamEventBatches`` (``StreamEvents`` on older gateways), reports gaps
        as :class:`EventGap` and, when ``resume`` is on, re-subscribes after a dropped
        stream from the last delivered sequence.

        Where it starts: by default with the oldest event the gateway still holds for the
        session, so nothing raised before iterating is lost (e.g. the first value an
        ``advise`` raised); an :class:`EventGap` first if the replay ring has already let
        some go. ``after_worker_sequence=N`` starts after event ``N`` (a resume point,
        e.g. an earlier stream's ``last_worker_sequence``); ``new_only=True`` starts with
        events raised from now on.

        Raises:
            ValueError: both ``after_worker_sequence`` and ``new_only``, or a negative
                sequence.
        """
        self._check_open()
        if new_only:
            if after_worker_sequence is not None:
                raise ValueError("give after_worker_sequence or new_only, not both")
        elif after_worker_sequence is None:
            after_worker_sequence = 0  # the oldest retained event
        previous = self._last_events() if self._last_events is not None else None
        stream = EventStream(
            self._client,
            self._session_id,
            after_worker_sequence=after_worker_sequence,
            resume=resume,
            max_resume_attempts=max_resume_attempts,
            # A collected previous iterator was closed by the collection; a write waiter's
            # private stream is closed as soon as its write completes.
            follows_closed_stream=self._last_events is not None
            and (previous is None or previous.closed or previous is self._private),
            observer=self._writes.observe,
        )
        self._last_events = weakref.ref(stream)
        return stream

    def events_raw(self, after_worker_sequence: int | None = None) -> Stream[pb.MxEvent]:
        """The generated ``MxEvent`` messages of ``StreamEvents``, untouched."""
        self._check_open()
        return self._client.stream_events_raw(self._session_id, after_worker_sequence)

    # -- lifecycle --------------------------------------------------------------------
    async def close(
        self, *, timeout: float | UseDefault | None = DEFAULT
    ) -> pb.CloseSessionReply | None:
        """Close the session (releases its advises, items and registrations).

        Idempotent: later calls return ``None``; a session the gateway no longer knows
        counts as closed.
        """
        if self._closed:
            return None
        self._closed = True
        self._read_memo = None
        try:
            return await self._client.close_session(self._session_id, timeout=timeout)
        except MxGatewaySessionNotFoundError:
            _log.debug("session %s was already gone", self._session_id)
            return None
        finally:
            self._client._forget(self._session_id)

    async def __aenter__(self) -> Session:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Session {self._session_id}{' closed' if self._closed else ''}>"
