"""``Subscription``: advised tags whose values keep coming across gateway restarts.

``GatewayClient.subscribe(items)`` returns a :class:`Subscription`, an async iterator (and
async context manager) of :class:`TagValue` objects. One supervisor task owns everything:

1. open a session, ``Register``, start the session's event stream (replaying from the start
   of the session, so no initial value can be missed), ``SubscribeBulk`` the items in
   chunks (per-item failures become :class:`ItemFailure` entries of the iterator);
2. pump the typed events into a bounded queue (a slow consumer blocks the pump, and so the
   gRPC stream: back-pressure, never an unbounded buffer);
3. when the stream ends for good, get a session back: at once after a loss, then after a
   jittered exponential backoff between failed attempts (cut short as soon as the channel
   reconnects). If the session may still exist (the connection was lost, not the session)
   and the gateway says it is READY, re-attach to it: its stream resumes after the last
   delivered event. Otherwise (the gateway restarted, closed, faulted or forgot the
   session) close what is left of it and go back to 1 with a new session. Values that
   arrive after such a recovery are marked ``resynchronized``;
4. when the stream reports an :class:`EventGap` on the same session (events dropped for a
   slow subscriber, or no longer in the replay ring), pass the gap on, then read the
   current value of every item with ``ReadBulk`` (chunked; answered from the session's
   advise cache) and queue those values, marked ``resynchronized``, before the events that
   follow the gap (``resync_on_gap``). The pump does the read itself, so later live values
   queue behind the read ones and win.

A short drop of the connection (a network blip, a keepalive timeout) is handled one level
below, by the event stream's own resume from the last ``worker_sequence``; a longer one by
the re-attach of step 3. Neither opens a new session, loses or marks anything.

States (:class:`SubscriptionState`): ``CONNECTING`` -> ``CONNECTED`` -> (``RECONNECTING``
-> ``RESYNCHRONIZED`` (new session) or ``CONNECTED`` (same session))* -> ``CLOSED``;
observable as :attr:`Subscription.state`, through :meth:`Subscription.state_changes`,
:meth:`Subscription.wait_for_state` and an ``on_state_change`` callback.

This module is the supervisor (the per-session runner); the values it hands out are in
``_tagvalues.py`` and the state broadcasting in ``_statebroadcast.py`` (names re-exported
here, so ``mxgateway._subscription.TagValue`` keeps working).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import FrameType, MappingProxyType, TracebackType
from typing import TYPE_CHECKING

from mxgateway._boundedqueue import BoundedQueue
from mxgateway._errors import (
    ClientClosedError,
    MxAccessError,
    MxGatewayAuthenticationError,
    MxGatewayCancelledError,
    MxGatewayError,
    MxGatewayProtocolError,
    MxGatewaySessionFaultedError,
    MxGatewaySessionNotFoundError,
    MxGatewaySessionNotReadyError,
    MxGatewaySessionStateError,
    MxGatewayTimeoutError,
    MxGatewayUnavailableError,
)
from mxgateway._events import DECODE_CHUNK, DataChange, EventGap, EventStream, StreamFault
from mxgateway._logsafe import get_logger
from mxgateway._retry import DEFAULT_RECONNECT, FATAL_ERRORS, RetryPolicy, is_transient
from mxgateway._statebroadcast import StateBroadcaster
from mxgateway._tagvalues import (
    ItemFailure,
    StateChange,
    SubscriptionEvent,
    SubscriptionState,
    TagValue,
)
from mxgateway._values import from_mx_value
from mxgateway.generated import mxaccess_gateway_pb2 as pb

if TYPE_CHECKING:
    from mxgateway._client import GatewayClient
    from mxgateway._session import Session

__all__ = [
    "DEFAULT_RECONNECT",
    "ItemFailure",
    "StateChange",
    "Subscription",
    "SubscriptionEvent",
    "SubscriptionState",
    "TagValue",
]

_log = get_logger(__name__)
_log.addHandler(logging.NullHandler())

_CLOSE_OLD_SESSION_TIMEOUT = 2.0
_DATA_CHANGE = pb.MX_EVENT_FAMILY_ON_DATA_CHANGE

# Errors of the read after a gap that mean the session or the connection is in trouble:
# they end the session's stream like a stream error would (re-attach or new session), and
# the read is done again on a re-attached session. Any other error (no read scope, an
# overloaded gateway, an MXAccess failure...) only skips that resynchronisation.
_RESYNC_PROPAGATE = (
    MxGatewayUnavailableError,
    MxGatewayTimeoutError,
    MxGatewayCancelledError,
    MxGatewaySessionNotFoundError,
    MxGatewaySessionStateError,
    MxGatewayAuthenticationError,
    ClientClosedError,
)


class _End:
    __slots__ = ()


_END = _End()
_NOTHING = object()  # what polling an empty queue answers


def _unlinked(error: BaseException) -> BaseException:
    """``error``, to keep: its traceback no longer holds what it passed through.

    The subscription keeps the error it failed with (``error``, the ``CLOSED`` state) and
    the frames the error passed through keep the subscription (``self``): a cycle, freed
    only by a collection. The finished frames lose their locals (what a traceback prints
    stays); the one still running (the supervisor's, where the error was caught) leaves
    the traceback. From Python 3.12 a finished frame also keeps its caller's frame
    (``f_back``), the supervisor's: that one loses its locals once its task is done.
    """
    kept: list[TracebackType] = []
    tb = error.__traceback__
    while tb is not None:
        try:
            tb.tb_frame.clear()
        except RuntimeError:  # the running frame
            _clear_when_done(tb.tb_frame)
        else:
            kept.append(tb)
        tb = tb.tb_next
    first = None
    for entry in reversed(kept):
        entry.tb_next, first = first, entry
    return error.with_traceback(first)


def _clear_when_done(frame: FrameType) -> None:
    """Clear ``frame`` (drop its locals) once it has finished, if it is the frame of the
    current task's coroutine (a frame is cleared only when finished: clearing a suspended
    one would close its coroutine on 3.12)."""
    task = asyncio.current_task()
    if task is not None and getattr(task.get_coro(), "cr_frame", None) is frame:
        task.add_done_callback(lambda _task: frame.clear())


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    if isinstance(items, (str, bytes)):
        raise ValueError("items must be a sequence of tag references, not a single string")
    out: dict[str, None] = {}
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"items[{i}] must be a non-empty string")
        out.setdefault(item, None)
    if not out:
        raise ValueError("items is empty: subscribe to at least one tag")
    return tuple(out)


class _SessionEnded(Exception):
    """Internal: the pump saw the session end (closed by the gateway, server shutdown)."""

    def __init__(self, error: MxGatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class Subscription:
    """Tags advised on a gateway, delivered as one iterator that survives restarts.

    Obtain with :meth:`GatewayClient.subscribe` and use as an async context manager::

        async with client.subscribe(["Tank01.Level", "Pump01.Speed"]) as sub:
            async for update in sub:
                if isinstance(update, TagValue):
                    print(update.tag, update.value, update.resynchronized)

    The iteration yields :class:`TagValue` for values, :class:`ItemFailure` for items the
    gateway refused (in the first or a new session) and :class:`~mxgateway.EventGap` when
    events of a session were lost (followed, with ``resync_on_gap``, by the current value
    of every item, read again and marked ``resynchronized``). It ends when the subscription
    is closed (:meth:`aclose`, leaving ``async with``, closing the client) and raises the
    error when recovery gives up (an error that reconnecting cannot fix, such as a rejected
    API key, or the reconnect policy running out).

    Breaking out of ``async for`` does not close the subscription (use ``async with``).
    """

    def __init__(
        self,
        client: GatewayClient,
        items: Iterable[str],
        *,
        client_name: str = "mxgateway-py",
        session_name: str = "",
        supervisory: bool = False,
        queue_size: int = 10_000,
        reconnect: RetryPolicy | None = DEFAULT_RECONNECT,
        on_state_change: Callable[[StateChange], None] | None = None,
        chunk_size: int = 1000,
        resume_attempts: int = 3,
        resync_on_gap: bool = True,
    ) -> None:
        self._items = _dedupe(items)
        if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
            raise ValueError("queue_size must be an int >= 1")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError("chunk_size must be an int >= 1")
        if reconnect is not None and not isinstance(reconnect, RetryPolicy):
            raise ValueError("reconnect must be a RetryPolicy or None")
        if resume_attempts < 0:
            raise ValueError("resume_attempts must be >= 0")
        self._client = client
        self._client_name = client_name
        self._session_name = session_name
        self._supervisory = supervisory
        self._chunk = chunk_size
        self._reconnect = reconnect if reconnect is not None else RetryPolicy.disabled()
        self._resume_attempts = resume_attempts
        self._queue: BoundedQueue[SubscriptionEvent | _End] = BoundedQueue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._states = StateBroadcaster(on_state_change, len(self._items))
        self._live: _Live | None = None
        self._failed: dict[str, ItemFailure] = {}
        self._pending: set[int] = set()
        self._error: BaseException | None = None
        self._finished = False
        self._closing = False
        self._established = False
        self._attempt = 0
        self._end_reported = False
        self.recoveries = 0
        """How many times the subscription came back on a new session."""
        self.reattachments = 0
        """How many times it came back to the same session after losing the connection."""
        self.resync_on_gap = bool(resync_on_gap)
        """After an :class:`~mxgateway.EventGap`, read every item again (``ReadBulk``) and
        yield the values marked ``resynchronized``. May be changed at any time; it applies
        from the next gap on."""
        self.gap_resyncs = 0
        """How many times the items were read again after an event gap."""

    # -- what the application sees ------------------------------------------------------
    @property
    def items(self) -> tuple[str, ...]:
        """The subscribed references (duplicates removed, in order)."""
        return self._items

    @property
    def state(self) -> SubscriptionState:
        """The current state."""
        return self._states.state

    @property
    def last_state_change(self) -> StateChange:
        """The most recent transition (with its error, if any)."""
        return self._states.last_change

    @property
    def session_id(self) -> str | None:
        """The session in use (or being re-attached), ``None`` while there is none."""
        return self._live.session.session_id if self._live is not None else None

    @property
    def failed_items(self) -> Mapping[str, ItemFailure]:
        """Items the current session could not add or advise (tag -> failure)."""
        return MappingProxyType(self._failed)

    @property
    def awaiting_first_value(self) -> int:
        """Items of the current session that have not delivered a value yet."""
        return len(self._pending)

    @property
    def error(self) -> BaseException | None:
        """The error the subscription failed with, once ``CLOSED`` by a failure.

        Its traceback shows where it was raised; the library's frames in it keep no locals
        (they would keep the subscription, which keeps the error: a reference cycle)."""
        return self._error

    @property
    def closed(self) -> bool:
        """True once the subscription is ``CLOSED``."""
        return self._states.state is SubscriptionState.CLOSED

    def state_changes(self) -> AsyncIterator[StateChange]:
        """An async iterator of the transitions from now on, ending after ``CLOSED``.

        It first yields the current state (as the last :class:`StateChange`), so nothing
        is missed between creating it and reading it. It buffers up to 256 changes
        (the oldest are dropped beyond that).
        """
        return self._states.changes()

    async def wait_for_state(
        self, *states: SubscriptionState, timeout: float | None = None
    ) -> StateChange:
        """Wait until the state is one of ``states``; returns that transition.

        Raises:
            asyncio.TimeoutError: ``timeout`` seconds passed first.
            MxGatewayError: The subscription closed with an error before that.
        """
        if not states:
            raise ValueError("name at least one state")
        self.start()
        return await asyncio.wait_for(self._states.wait_for(states, lambda: self._error), timeout)

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the supervisor task (done by ``async with`` or the first read)."""
        if self._task is None and not self._closing:
            self._task = asyncio.ensure_future(self._run())
            self._states.notify(self._states.last_change)  # the initial CONNECTING

    async def aclose(self) -> None:
        """Stop: cancel the supervisor, close the session, state ``CLOSED``. Idempotent."""
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if self._error is None:
            # Closed by the application: what is still queued is dropped, the iteration
            # ends now. (After a failure the consumer still drains it, then gets the error.)
            while not self._queue.empty():
                self._queue.get_nowait()
        self._finish(None)
        self._client._forget_subscription(self)

    close = aclose

    async def __aenter__(self) -> Subscription:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> SubscriptionEvent:
        queue = self._queue
        item = queue.poll(_NOTHING)
        if item is _NOTHING:
            if self._finished:
                item = _END
            else:
                self.start()
                item = await queue.get()
        if item is _END:
            end = self._end()
            # The raised error's traceback keeps this frame and the subscription keeps the
            # error (``error``): with either in a local, a cycle freed only by a collection.
            del self
            try:
                raise end
            finally:
                del end
        return item  # type: ignore[return-value]

    def _end(self) -> BaseException:
        """What the iteration ends with: the error it failed with, once, then
        ``StopAsyncIteration``."""
        error = self._error
        if error is not None and not self._end_reported:
            self._end_reported = True
            return error
        return StopAsyncIteration()

    def __repr__(self) -> str:
        return (
            f"<Subscription {len(self._items)} items {self.state.name} "
            f"session={self.session_id} recoveries={self.recoveries}>"
        )

    # -- state ----------------------------------------------------------------------------
    def _set_state(
        self,
        state: SubscriptionState,
        *,
        error: BaseException | None = None,
        attempt: int = 0,
    ) -> None:
        self._states.set(state, session_id=self.session_id, error=error, attempt=attempt)

    def _finish(self, error: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        if error is not None:
            self._error = _unlinked(error)
        self._set_state(SubscriptionState.CLOSED, error=error)
        if not self._queue.full():
            self._queue.put_nowait(_END)  # wakes a consumer waiting on an empty queue

    # -- the supervisor -------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        recovering = False
        attempt = 0
        lost_at = loop.time()
        failure: BaseException | None = None
        try:
            while True:
                attempt += 1
                self._set_state(
                    SubscriptionState.RECONNECTING if recovering else SubscriptionState.CONNECTING,
                    error=failure,
                )
                self._established = False
                self._attempt = attempt
                gone = False
                try:
                    live = self._live
                    if live is not None and not await self._still_there(live):
                        live = None
                    if live is not None:
                        await self._run_session(live, fresh=False)
                    else:
                        live = self._live = await self._open(recovering)
                        await self._run_session(live, fresh=True)
                except _SessionEnded as ended:  # closed by the gateway, or shutting down
                    failure = ended.error
                    gone = True
                except FATAL_ERRORS:
                    raise
                except MxGatewayError as exc:
                    failure = exc
                live = self._live
                if gone or live is None or not (live.established and _may_still_exist(failure)):
                    # The session is gone (or half made): close what is left of it. A
                    # session lost to the network is kept: the next attempt re-attaches.
                    await self._drop_session()
                if self._established:
                    # A working session was lost: a new recovery begins now.
                    recovering = True
                    attempt = 0
                    lost_at = loop.time()
                    self._set_state(SubscriptionState.RECONNECTING, error=failure)
                    continue  # the first attempt goes out at once
                if not self._reconnect.allows(attempt, loop.time() - lost_at):
                    assert failure is not None
                    raise failure
                delay = self._reconnect.backoff(attempt)
                _log.info(
                    "subscription: connection attempt %d failed (%s); next in %.2f s",
                    attempt,
                    type(failure).__name__,
                    delay,
                )
                await self._pause(delay)
        except asyncio.CancelledError:
            await self._drop_session()
            self._finish(None)
            raise
        except Exception as exc:
            await self._drop_session()
            self._finish(exc)
        except BaseException as exc:
            self._finish(exc)
            raise

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less: until the channel (re)connects, when it is
        down now. The next attempt then goes out as soon as the gateway listens again
        instead of at the end of a backoff that grew while it was away."""
        await self._client.transport.pause(delay)

    async def _drop_session(self) -> None:
        live, self._live = self._live, None
        self._pending = set()
        if live is None or live.session.closed:
            return
        try:
            await live.session.close(timeout=_CLOSE_OLD_SESSION_TIMEOUT)
        except MxGatewayError as exc:
            _log.debug("could not close session %s: %s", live.session.session_id, exc)

    async def _still_there(self, live: _Live) -> bool:
        """Does the gateway still have the session we lost the stream of? (Errors other
        than "no such session" propagate: the attempt failed, try again later.)"""
        try:
            state = await live.session.get_session_state()
        except (MxGatewaySessionNotFoundError, MxGatewaySessionStateError, MxAccessError) as exc:
            _log.info("session %s is gone (%s): opening a new one", live.session.session_id, exc)
            await self._drop_session()
            return False
        if state == pb.SESSION_STATE_READY:
            return True
        _log.info("session %s is no longer ready: opening a new one", live.session.session_id)
        await self._drop_session()
        return False

    async def _open(self, recovering: bool) -> _Live:
        session = await self._client.open_session(self._session_name)
        live = _Live(session, recovering)
        self._live = live  # from here on a failure closes it
        live.handle = await session.register(self._client_name)
        return live

    async def _subscribe_items(self, live: _Live, pump: asyncio.Future[None]) -> bool:
        """``SubscribeBulk`` every item; False if the stream failed meanwhile."""
        session, session_id = live.session, live.session.session_id
        failures: dict[str, ItemFailure] = {}
        items = self._items
        for start in range(0, len(items), self._chunk):
            if pump.done():
                return False  # the stream failed already: awaiting the pump raises why
            chunk = items[start : start + self._chunk]
            rows = await session.subscribe_bulk(live.handle, chunk, supervisory=self._supervisory)
            if len(rows) != len(chunk):
                raise MxGatewayProtocolError(
                    f"SubscribeBulk answered {len(rows)} rows for {len(chunk)} items",
                    session_id=session_id,
                )
            for tag, row in zip(chunk, rows, strict=True):
                if row.was_successful:
                    live.tags[row.item_handle] = tag
                else:
                    failures[tag] = ItemFailure(
                        tag, row.error_message, row.hresult, live.recovered, session_id, row
                    )
        if pump.done():
            return False
        self._failed = failures
        self._pending = set(live.tags)
        for failure in failures.values():
            _log.warning(
                "subscription: %s could not be subscribed: %s", failure.tag, failure.message
            )
            await self._queue.put(failure)
        return True

    async def _run_session(self, live: _Live, *, fresh: bool) -> None:
        """Stream one session's events into the queue; always ends by raising
        (``_established`` tells whether the session was up before it was lost).

        ``fresh``: a new session whose items are still to be subscribed; otherwise the
        stream of a session we lost the connection to is resumed after its last event.
        """
        session_id = live.session.session_id
        events = EventStream(
            self._client,
            session_id,
            # A fresh session replays from its start (no initial value can be missed); a
            # resumed one from its last delivered event (nothing lost, nothing repeated).
            after_worker_sequence=0 if fresh else live.last_seq,
            resume=True,
            max_resume_attempts=self._resume_attempts,
        )
        ready = asyncio.Event()
        pump = asyncio.ensure_future(self._pump(events, ready, live))
        try:
            if not fresh or await self._subscribe_items(live, pump):
                ready.set()
                self._established = live.established = True
                if fresh and live.recovered:
                    self.recoveries += 1
                    state = SubscriptionState.RESYNCHRONIZED
                else:
                    if not fresh:
                        self.reattachments += 1
                    state = SubscriptionState.CONNECTED
                self._set_state(state, attempt=self._attempt)
            await pump  # the pump only ever ends by raising: the session's stream is over
        finally:
            if not pump.done():
                pump.cancel()
            await asyncio.wait({pump})
            if not pump.cancelled():
                pump.exception()  # retrieved: never "exception was never retrieved"
            live.last_seq = max(live.last_seq, events.last_worker_sequence)
            await events.aclose()

    async def _resync(self, live: _Live, pending: set[int]) -> None:
        """After an event gap: ``ReadBulk`` the subscribed items (``chunk_size`` per call;
        the gateway answers from the session's advise cache) and queue the values as
        ``resynchronized`` :class:`TagValue` objects. Runs inside the pump, so the events
        after the gap wait (in the stream, with back-pressure) until it is done."""
        sequence, live.resync_seq = live.resync_seq, 0
        if not self.resync_on_gap:
            return
        session, session_id = live.session, live.session.session_id
        handles = {tag: handle for handle, tag in live.tags.items()}
        tags = [tag for tag in self._items if tag in handles]
        queue = self._queue
        server_handle = live.handle
        for start in range(0, len(tags), self._chunk):
            chunk = tags[start : start + self._chunk]
            try:
                rows = await session.read_bulk(server_handle, chunk)
                if len(rows) != len(chunk):
                    raise MxGatewayProtocolError(
                        f"ReadBulk answered {len(rows)} rows for {len(chunk)} items",
                        session_id=session_id,
                    )
            except _RESYNC_PROPAGATE:
                live.resync_seq = sequence  # the stream ends; a re-attached session reads
                raise
            except MxGatewayError as exc:
                _log.warning(
                    "subscription: could not read the items again after an event gap "
                    "(%s: %s); they show their next change",
                    type(exc).__name__,
                    exc,
                )
                return
            for tag, row in zip(chunk, rows, strict=True):
                if not row.was_successful:
                    _log.warning(
                        "subscription: %s could not be read after an event gap: %s",
                        tag,
                        row.error_message,
                    )
                    continue
                item_handle = handles[tag]
                raw = pb.MxEvent(
                    session_id=session_id, worker_sequence=sequence, family=_DATA_CHANGE
                )
                data = raw.on_data_change
                data.server_handle = server_handle
                data.item_handle = item_handle
                data.value.CopyFrom(row.value)
                data.quality = row.quality
                data.timestamp.CopyFrom(row.timestamp)
                data.statuses.extend(row.statuses)
                change = DataChange(
                    sequence,
                    server_handle,
                    item_handle,
                    from_mx_value(row.value),
                    row.quality,
                    None,
                    raw,
                )
                initial = item_handle in pending  # its first value was lost in the gap
                if initial:
                    pending.discard(item_handle)
                await queue.put(
                    TagValue(tag, change, session_id, initial=initial, resynchronized=True)
                )
        self.gap_resyncs += 1
        _log.info(
            "subscription: %d items read again after an event gap in session %s",
            len(tags),
            session_id,
        )

    async def _pump(self, events: EventStream, ready: asyncio.Event, live: _Live) -> None:
        queue = self._queue
        tags = live.tags
        session_id = live.session.session_id
        recovered = live.recovered
        pending: set[int] = set()
        started = False
        unyielded = 0  # values queued since the pump last let the consumer run
        if live.resync_seq:
            # A read after a gap was cut short when the stream was lost: do it now, on the
            # re-attached session, before the events that follow.
            await ready.wait()
            pending = self._pending
            started = True
            await self._resync(live, pending)
        async for event in events:
            if type(event) is DataChange:
                if not started:
                    await ready.wait()
                    pending = self._pending
                    started = True
                tag = tags.get(event.item_handle)
                if tag is None:
                    continue
                if pending and event.item_handle in pending:
                    pending.discard(event.item_handle)
                    value = TagValue(tag, event, session_id, initial=True, resynchronized=recovered)
                else:  # the common case, without keyword arguments (cheaper per value)
                    value = TagValue(tag, event, session_id)
                # Queue.put() is exactly this when there is room; without the coroutine it
                # costs less per value (the common case: the consumer keeps up).
                if not queue.offer(value):
                    await queue.put(value)
                    unyielded = 0
                else:
                    unyielded += 1
                    if unyielded >= DECODE_CHUNK:
                        # Let the consumer take these before queueing more: values taken
                        # while young never reach the collector's older generations (a
                        # whole batch queued at once made full collections frequent).
                        unyielded = 0
                        await asyncio.sleep(0)
            elif isinstance(event, EventGap):
                await queue.put(event)
                if self.resync_on_gap:
                    live.resync_seq = event.first_missing_sequence + event.missing_count - 1
                    if not started:
                        await ready.wait()  # a fresh session: the items are subscribed now
                        pending = self._pending
                        started = True
                    await self._resync(live, pending)
            elif (
                isinstance(event, StreamFault)
                and event.kind == pb.STREAM_FAULT_KIND_SERVER_SHUTDOWN
            ):
                raise _SessionEnded(
                    MxGatewayUnavailableError(
                        event.message or "the gateway is shutting down",
                        session_id=session_id,
                    )
                )
        raise _SessionEnded(
            MxGatewaySessionNotFoundError(
                f"the gateway closed session {session_id}", session_id=session_id
            )
        )


class _Live:
    """The session a subscription runs on: its handles and where its stream got to."""

    __slots__ = (
        "established",
        "handle",
        "last_seq",
        "recovered",
        "resync_seq",
        "session",
        "tags",
    )

    def __init__(self, session: Session, recovered: bool) -> None:
        self.session = session
        self.recovered = recovered  # opened by a recovery: first values are resynchronised
        self.handle = 0
        self.tags: dict[int, str] = {}
        self.last_seq = 0
        self.established = False  # items subscribed, values flowing (at least once)
        self.resync_seq = 0  # the end of an event gap whose read is not done yet (0: none)


def _may_still_exist(error: BaseException | None) -> bool:
    """After losing an established session's stream with ``error``: may the session still
    exist on the gateway (so re-attaching is worth a try)? Only for transient trouble
    (:func:`mxgateway._retry.is_transient`) or our old stream still counting
    (FAILED_PRECONDITION); a session reported missing, closing, faulted or shut down is gone."""
    if isinstance(
        error,
        (
            MxGatewaySessionNotFoundError,
            MxGatewaySessionNotReadyError,
            MxGatewaySessionFaultedError,
        ),
    ):
        return False
    return is_transient(error) or isinstance(error, MxGatewaySessionStateError)
