"""Typed session events and the resuming event iterator behind ``Session.events()``.

The iterator reads ``StreamEventBatches`` (``StreamEvents`` when the gateway answers
UNIMPLEMENTED), decodes each batch in one tight loop into slotted event objects, and hands
them out one by one without any per-event queue. It tracks ``worker_sequence``: duplicates
(after a resume) are dropped, holes become an :class:`EventGap` (with a warning and a
counter), and when the stream drops (UNAVAILABLE, or the gateway disconnecting a slow
subscriber) it re-subscribes with ``after_worker_sequence`` so nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from operator import length_hint
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mxgateway._enums import enum_name
from mxgateway._errors import (
    ClientClosedError,
    MxGatewayError,
    MxGatewayOverloadedError,
    MxGatewaySessionFaultedError,
    MxGatewaySessionStateError,
    MxGatewayUnimplementedError,
)
from mxgateway._eventwire import full_event, is_view
from mxgateway._logsafe import get_logger
from mxgateway._retry import RESUMABLE_STREAM_ERRORS, resume_policy
from mxgateway._status import failed_statuses
from mxgateway._values import MxPythonValue, from_mx_value
from mxgateway.generated import mxaccess_gateway_pb2 as pb

if TYPE_CHECKING:
    from mxgateway._client import GatewayClient
    from mxgateway._transport import Stream

__all__ = [
    "AlarmTransition",
    "BufferedDataChange",
    "BufferedValue",
    "DataChange",
    "Event",
    "EventGap",
    "EventStream",
    "OperationComplete",
    "StreamFault",
    "WriteComplete",
    "decode_events",
]

_log = get_logger(__name__)
_log.addHandler(logging.NullHandler())

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_timedelta = timedelta


_fromtimestamp = datetime.fromtimestamp
_UTC = timezone.utc
# Below this many seconds a float holds microseconds exactly enough for fromtimestamp's
# rounding to give the same instant as the exact path (2**53 us is ~285 years).
_FAST_TS_LIMIT = 8_000_000_000


_last_ts: list[Any] = [None, None, None]
"""(seconds, microseconds, datetime) of the last conversion: the changes of one scan share
their timestamp, and a ``datetime`` is immutable, so the next one is usually free."""


_timestamp_from_bytes = Timestamp.FromString


def _ts_of_bytes(data: bytes) -> datetime:
    """:func:`_ts` of a serialized ``Timestamp`` (the stream's view of a data change)."""
    return _ts(_timestamp_from_bytes(data))


def _ts(ts: Any) -> datetime:
    """``Timestamp`` -> aware UTC ``datetime`` (same result as ``timestamp_to_datetime``)."""
    s = ts.seconds
    us = ts.nanos // 1000
    last = _last_ts
    if last[1] == us and last[0] == s:
        result: datetime = last[2]
        return result
    if 0 <= s < _FAST_TS_LIMIT:
        result = _fromtimestamp(s + us / 1e6, _UTC)
    else:
        result = _EPOCH + _timedelta(seconds=s, microseconds=us)
    last[0], last[1], last[2] = s, us, result
    return result


class DataChange:
    """An ``OnDataChange``: a new value, quality and timestamp of an advised item.

    Attributes:
        worker_sequence: Position in the session's event sequence.
        server_handle: The registration (hLMX) the item belongs to.
        item_handle: The item (hItem).
        value: The value as a Python object (see :func:`mxgateway.from_mx_value`).
        quality: OPC-style 16-bit quality (192 = Good).
        timestamp: The source timestamp of the value, an aware UTC ``datetime`` (the events
            of one scan share one ``datetime`` object: it is converted once per run of
            events with the same timestamp).

    :attr:`statuses` (the MXAccess status records; a failure ``category`` means the event
    reports an error rather than a value) and :attr:`raw` (the ``MxEvent`` this was decoded
    from) are looked up on each access: iterating events costs nothing for them.
    """

    # The event is kept as ((container, base), index) rather than as its ``MxEvent``
    # wrapper: one object fewer for the garbage collector to track per event (the pair is
    # shared by a decoded chunk and keeps the parsed batch alive, as the wrapper did), and
    # the index within a chunk (below DECODE_CHUNK) is one of Python's cached small ints.
    __slots__ = (
        "_i",
        "_src",
        "item_handle",
        "quality",
        "server_handle",
        "timestamp",
        "value",
        "worker_sequence",
    )

    def __init__(
        self,
        worker_sequence: int,
        server_handle: int,
        item_handle: int,
        value: MxPythonValue,
        quality: int,
        timestamp: datetime | None,
        raw: pb.MxEvent,
        _index: int = -1,
    ) -> None:
        """``timestamp`` None: converted from ``raw``. (``_index`` is the decoder's: ``raw``
        is then the batch's ``events`` and ``_index`` the position in it.)"""
        self.worker_sequence = worker_sequence
        self.server_handle = server_handle
        self.item_handle = item_handle
        self.value = value
        self.quality = quality
        if _index < 0:  # a lone event (not one of a decoded batch)
            self._src: tuple[Sequence[pb.MxEvent], int] = ((raw,), 0)
            self._i = 0
        else:
            self._src = (raw, 0)  # type: ignore[assignment]
            self._i = _index
        if timestamp is None:
            timestamp = _ts(self._event().on_data_change.timestamp)
        self.timestamp: datetime = timestamp

    def _event(self) -> pb.MxEvent:
        events, base = self._src
        return events[base + self._i]

    @property
    def raw(self) -> pb.MxEvent:
        """The ``MxEvent`` this was decoded from (parsed again from the stream's view of
        it on each access, see :mod:`mxgateway._eventwire`)."""
        return full_event(self._event())

    @property
    def statuses(self) -> Sequence[pb.MxStatusProxy]:
        """The event's ``MxStatusProxy`` records (normally one)."""
        return self.raw.on_data_change.statuses

    @property
    def is_good(self) -> bool:
        """True when the OPC quality is Good (the top two bits set, e.g. 192)."""
        return self.quality & 0xC0 == 0xC0

    def __repr__(self) -> str:
        return (
            f"DataChange(worker_sequence={self.worker_sequence}, "
            f"server_handle={self.server_handle}, item_handle={self.item_handle}, "
            f"value={self.value!r}, quality={self.quality}, "
            f"timestamp={self.timestamp.isoformat()})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataChange):
            return NotImplemented
        return (
            self.worker_sequence == other.worker_sequence
            and self.server_handle == other.server_handle
            and self.item_handle == other.item_handle
            and self.value == other.value
            and self.quality == other.quality
            and self.timestamp == other.timestamp
        )

    __hash__ = None  # type: ignore[assignment]


class _Outcome:
    """``succeeded`` / ``failed_statuses`` of a completion event, by status category."""

    __slots__ = ()
    statuses: Sequence[pb.MxStatusProxy]

    @property
    def failed_statuses(self) -> tuple[pb.MxStatusProxy, ...]:
        """The statuses whose category is a failure (not OK, PENDING or unset)."""
        return failed_statuses(self.statuses)

    @property
    def succeeded(self) -> bool:
        """True when no status reports a failure (decided by category, not ``success``)."""
        return not self.failed_statuses


@dataclass(slots=True, repr=True, eq=True)
class WriteComplete(_Outcome):
    """An ``OnWriteComplete``: the outcome of an earlier write (see ``statuses``).

    Upstream a write's reply is a plain OK once MXAccess accepted it; this event carries
    whether it took effect. :attr:`succeeded` decides by status ``category``.
    """

    worker_sequence: int
    server_handle: int
    item_handle: int
    statuses: Sequence[pb.MxStatusProxy]
    raw: pb.MxEvent


@dataclass(slots=True, repr=True, eq=True)
class OperationComplete(_Outcome):
    """An ``OperationComplete``: the outcome of an earlier operation."""

    worker_sequence: int
    server_handle: int
    item_handle: int
    statuses: Sequence[pb.MxStatusProxy]
    raw: pb.MxEvent


@dataclass(slots=True, repr=True, eq=True)
class BufferedValue:
    """One sample of a :class:`BufferedDataChange`."""

    value: MxPythonValue
    quality: int
    timestamp: datetime


@dataclass(slots=True, repr=True, eq=True)
class BufferedDataChange:
    """An ``OnBufferedDataChange``: the samples collected since the last delivery."""

    worker_sequence: int
    server_handle: int
    item_handle: int
    data_type: int
    samples: list[BufferedValue]
    statuses: Sequence[pb.MxStatusProxy]
    raw: pb.MxEvent


@dataclass(slots=True, repr=True, eq=True)
class AlarmTransition:
    """An alarm transition delivered on the session stream (see ``raw.on_alarm_transition``)."""

    worker_sequence: int
    alarm_full_reference: str
    transition_kind: int
    raw: pb.MxEvent


@dataclass(slots=True, repr=True, eq=True)
class StreamFault:
    """A notice about the stream itself: overflow, session faulted/closed, server shutdown.

    ``kind`` is a ``StreamFaultKind`` value; :attr:`kind_name` its short name.
    """

    kind: int
    message: str
    first_missing_sequence: int
    missing_count: int
    raw: pb.MxEvent

    @property
    def kind_name(self) -> str:
        """``EVENT_QUEUE_OVERFLOW``, ``SESSION_CLOSED``, ... (``UNKNOWN(<n>)`` when newer
        than these bindings)."""
        return enum_name(pb.StreamFaultKind, self.kind)


@dataclass(slots=True, repr=True, eq=True)
class EventGap:
    """Events this subscriber will never see: ``missing_count`` events from
    ``first_missing_sequence`` on.

    ``reason`` is ``"replay-gap"`` (the gateway's replay buffer no longer held them) or
    ``"sequence-gap"`` (the sequence jumped). ``raw`` is the gateway's notice, if any.
    """

    first_missing_sequence: int
    missing_count: int
    reason: str
    raw: pb.MxEvent | None = None


Event: TypeAlias = (
    DataChange
    | WriteComplete
    | OperationComplete
    | BufferedDataChange
    | AlarmTransition
    | StreamFault
    | EventGap
)
"""Anything :meth:`Session.events` yields."""

_DATA = pb.MX_EVENT_FAMILY_ON_DATA_CHANGE
_FAULT_REPLAY_GAP = pb.STREAM_FAULT_KIND_REPLAY_GAP


class _Tracker:
    """Sequence bookkeeping shared by the decoder and the iterator."""

    __slots__ = ("duplicates", "faults", "gaps", "last", "missed", "tracking")

    def __init__(self, after: int | None) -> None:
        self.last = after or 0
        self.tracking = after is not None
        self.gaps = 0
        self.missed = 0
        self.duplicates = 0
        self.faults: list[StreamFault] = []


def _decode_other(event: Any, out: list[Event], tr: _Tracker) -> None:
    ev = full_event(event)  # the rarer events keep the generated types throughout
    body = ev.WhichOneof("body")
    seq = ev.worker_sequence
    if body == "on_write_complete":
        b = ev.on_write_complete
        out.append(WriteComplete(seq, b.server_handle, b.item_handle, b.statuses, ev))
    elif body == "operation_complete":
        c = ev.operation_complete
        out.append(OperationComplete(seq, c.server_handle, c.item_handle, c.statuses, ev))
    elif body == "on_buffered_data_change":
        d = ev.on_buffered_data_change
        samples = [
            BufferedValue(from_mx_value(s.value), s.quality, _ts(s.timestamp)) for s in d.samples
        ]
        out.append(
            BufferedDataChange(
                seq, d.server_handle, d.item_handle, d.data_type, samples, d.statuses, ev
            )
        )
    elif body == "stream_fault":
        f = ev.stream_fault
        if f.kind == _FAULT_REPLAY_GAP:
            first, count = f.first_missing_sequence, f.missing_count
            tr.gaps += 1
            tr.missed += count
            end = first + count - 1
            if end > tr.last:
                tr.last = end
            tr.tracking = True
            _log.warning(
                "event stream of %s lost %d events from sequence %d (replay gap)",
                ev.session_id,
                count,
                first,
            )
            out.append(EventGap(first, count, "replay-gap", ev))
        else:
            fault = StreamFault(f.kind, f.message, f.first_missing_sequence, f.missing_count, ev)
            tr.faults.append(fault)
            out.append(fault)
    elif body == "on_alarm_transition":
        a = ev.on_alarm_transition
        out.append(AlarmTransition(seq, a.alarm_full_reference, a.transition_kind, ev))
    elif body == "on_data_change":
        # A data change whose family field was not set (the fast path keys on family).
        dc = ev.on_data_change
        out.append(
            DataChange(
                seq,
                dc.server_handle,
                dc.item_handle,
                from_mx_value(dc.value),
                dc.quality,
                None,
                ev,
            )
        )
    else:
        _log.debug("ignoring event %d without a known body", seq)


DECODE_CHUNK = 256
"""Events decoded at a time out of one received batch. The decoded events of a chunk are
alive together until the caller has taken them; a chunk well below the collector's
young-generation threshold (700 allocations) keeps them from surviving into older
generations, whose collections then stay rare (a whole 2,000-event batch decoded at once
made full collections of the application's heap frequent)."""


def decode_events(
    events: Sequence[pb.MxEvent],
    out: list[Event],
    tr: _Tracker,
    start: int = 0,
    stop: int | None = None,
    it: Iterator[pb.MxEvent] | None = None,
) -> None:
    """Decode ``events[start:stop]`` into ``out``, dropping duplicates and inserting gap
    notices. A :class:`DataChange` keeps ``(events, start)`` and its index after ``start``
    (see ``raw``).

    ``events`` are generated ``MxEvent`` messages or the stream's view of them
    (:mod:`mxgateway._eventwire`, whose data-change timestamps are bytes): both decode to
    the same events. ``it``: an iterator of ``events`` standing at ``start`` (a received
    message is decoded a chunk at a time through one iterator, cheaper than indexing)."""
    if stop is None:
        stop = len(events)
    if it is None:
        it = iter(events)
        for _ in range(start):
            next(it)
    last = tr.last
    tracking = tr.tracking
    # The sequence that follows the last one seen (-1 before any: never a sequence), so
    # that the common event costs one comparison.
    expect = last + 1 if tracking else -1
    # The changes of one scan share their timestamp: convert it only when the Timestamp
    # differs from the previous event's (the events then share one datetime object).
    ts: object = None
    stamp: datetime | None = None
    # Locals: one lookup per call instead of one per event.
    data, append, convert = _DATA, out.append, from_mx_value
    to_datetime: Callable[[Any], datetime] = (
        _ts_of_bytes if stop > start and is_view(events[start]) else _ts
    )
    new, change = object.__new__, DataChange
    chunk = (events, start)  # a DataChange's _src: its index is then below DECODE_CHUNK
    for i, ev in zip(range(stop - start), it, strict=False):
        seq = ev.worker_sequence
        if seq == expect:
            expect = seq + 1
        elif seq:
            if tracking:
                if seq < expect:
                    tr.duplicates += 1
                    continue
                out.append(_sequence_gap(ev, expect, seq, tr))
            else:
                tracking = True
            expect = seq + 1
        d = ev.on_data_change
        item = d.item_handle
        # A non-zero item handle means on_data_change is the body (the family need not be
        # read); otherwise it is a data change only by its family, as before.
        if item or ev.family == data:
            v = d.value
            # A set oneof member reads non-zero only when it is the one set: the common
            # kinds skip WhichOneof (a zero or any other kind takes the full conversion).
            value: MxPythonValue = v.double_value
            if not value:
                value = v.int32_value
                if not value:
                    value = convert(v)
            t = d.timestamp
            if t != ts:
                ts, stamp = t, to_datetime(t)
            # DataChange(seq, ..., stamp, events, i) without the call of __init__ (a third of
            # the cost of making one): its slots, as __init__ sets them for a batch.
            dc = new(change)
            dc.worker_sequence = seq
            dc.server_handle = d.server_handle
            dc.item_handle = item
            dc.value = value
            dc.quality = d.quality
            dc.timestamp = stamp  # type: ignore[assignment]
            dc._src = chunk
            dc._i = i
            append(dc)
        else:
            if tracking:
                last = expect - 1
            tr.last, tr.tracking = last, tracking
            _decode_other(ev, out, tr)
            last, tracking = tr.last, tr.tracking
            expect = last + 1 if tracking else -1
    if tracking:
        last = expect - 1
    tr.last, tr.tracking = last, tracking


def _sequence_gap(ev: Any, expect: int, seq: int, tr: _Tracker) -> EventGap:
    """The notice of the events from ``expect`` to before ``seq`` (counted and logged)."""
    missing = seq - expect
    tr.gaps += 1
    tr.missed += missing
    _log.warning(
        "event stream of %s skipped %d events from sequence %d",
        ev.session_id,
        missing,
        expect,
    )
    return EventGap(expect, missing, "sequence-gap")


def _resume_point(event: Event) -> int:
    """The sequence a caller who has seen ``event`` can resume after (0: none)."""
    if isinstance(event, EventGap):
        return event.first_missing_sequence + event.missing_count - 1
    if isinstance(event, StreamFault):
        return 0
    return event.worker_sequence


_TERMINAL_FAULTS = {
    pb.STREAM_FAULT_KIND_SESSION_CLOSED,
    pb.STREAM_FAULT_KIND_SESSION_FAULTED,
}


class EventStream:
    """Async iterator of typed events of one session (what ``Session.events()`` returns).

    Use ``async for event in session.events(): ...``; breaking out of the loop, ``aclose()``
    or leaving ``async with`` closes the underlying gRPC stream. A cancelled read (e.g.
    ``asyncio.wait_for(events.__anext__(), 1)`` timing out) cancels the gRPC call but not
    the iterator: the next read re-subscribes after the last delivered event.

    Attributes (read-only counters):
        last_worker_sequence: The sequence of the last event handed to the caller (the
            end of an :class:`EventGap` counts), never one still buffered: a safe resume
            point for ``session.events(after_worker_sequence=...)``.
        gap_count: How many :class:`EventGap` notices were produced.
        missed_events: How many events those gaps cover in total.
        duplicates_dropped: Replayed events dropped because they were already delivered.
        resume_count: How many times the stream was re-opened after a drop.
    """

    def __init__(
        self,
        client: GatewayClient,
        session_id: str,
        *,
        after_worker_sequence: int | None = None,
        resume: bool = True,
        max_resume_attempts: int = 5,
        resume_backoff: float = 0.05,
        use_batches: bool = True,
        follows_closed_stream: bool = False,
        observer: Callable[[list[Event]], None] | None = None,
    ) -> None:
        if after_worker_sequence is not None and after_worker_sequence < 0:
            raise ValueError("after_worker_sequence must be >= 0")
        if max_resume_attempts < 0:
            raise ValueError("max_resume_attempts must be >= 0")
        self._client = client
        self._session_id = session_id
        self._tracker = _Tracker(after_worker_sequence)
        self._resume = resume
        self._max_attempts = max_resume_attempts
        self._resume_policy = resume_policy(resume_backoff, max_resume_attempts)
        self._batches = use_batches and client._batches_supported
        self._stream: Stream[Any] | None = None
        self._buf: list[Event] = []
        # Hands out ``_buf`` (an iterator costs the caller's every event less than an
        # index kept here); how far it got is ``len(_buf)`` less what it has left.
        self._next: Iterator[Event] = iter(self._buf)
        # The received message's events not decoded yet (decoded DECODE_CHUNK at a time).
        self._undecoded: Sequence[pb.MxEvent] = ()
        self._undecoded_pos = 0
        self._undecoded_it: Iterator[pb.MxEvent] | None = None  # standing at _undecoded_pos
        # The resume point of what was handed out before ``_buf`` was (re)filled.
        self._handed_base = after_worker_sequence or 0
        self._closed = False
        self._ended_by: int | None = None
        self._overflowed = False
        self._opened = False
        self._reopening = False
        # Opened right after this session's previous stream was closed: the gateway may
        # still hold that subscriber for a moment, so FAILED_PRECONDITION is retried.
        self._follows_closed = follows_closed_stream
        # Sees every decoded batch before the caller does (the session's write
        # correlation); reads are serialised so a waiter can read ahead for the caller.
        self._observer = observer
        self._read_lock = asyncio.Lock()
        self._deferred: BaseException | None = None
        self.resume_count = 0

    # -- counters ---------------------------------------------------------------------
    @property
    def session_id(self) -> str:
        """The session whose events this iterator delivers."""
        return self._session_id

    @property
    def last_worker_sequence(self) -> int:
        """The sequence of the last event handed to the caller (0 before any).

        Events decoded but still buffered (a batch is decoded at once) do not count, so
        resuming from this value never skips an event the caller has not seen.
        """
        buf = self._buf
        for i in range(len(buf) - length_hint(self._next) - 1, -1, -1):
            seq = _resume_point(buf[i])
            if seq:
                return seq
        return self._handed_base

    def _replace_buffer(self, buf: list[Event], pos: int) -> None:
        """Install a new buffer, remembering how far the old one was handed out."""
        self._handed_base = self.last_worker_sequence
        # Left with nothing to hand out: an `async for` holding the old iterator
        # (_iterate) then asks for the next read instead of going on with the old buffer.
        deque(self._next, maxlen=0)
        self._buf = buf
        self._next = iter(buf)
        for _ in range(pos):
            next(self._next)

    @property
    def gap_count(self) -> int:
        """How many EventGap notices were produced."""
        return self._tracker.gaps

    @property
    def missed_events(self) -> int:
        """How many events those gaps cover in total."""
        return self._tracker.missed

    @property
    def duplicates_dropped(self) -> int:
        """Replayed events dropped because they were already delivered."""
        return self._tracker.duplicates

    @property
    def closed(self) -> bool:
        """True once the iterator has ended or :meth:`aclose` was called."""
        return self._closed

    @property
    def uses_batches(self) -> bool:
        """True while reading ``StreamEventBatches`` (False after the fallback)."""
        return self._batches

    # -- iteration --------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Event]:
        """What ``async for`` runs: an asynchronous generator handing out the events
        :meth:`__anext__` would, in the same order and from the same buffer (a resumed
        generator costs each event about a quarter less than a call of ``__anext__``)."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            # ``_next`` is read again after each read: a write waiter may have put a new
            # buffer in place meanwhile. An iterator replaced while this loop held it is
            # run dry first (_replace_buffer), so a closed stream hands out nothing more.
            for event in self._next:
                yield event
            try:
                event = await self._fill()
            except StopAsyncIteration:
                return
            yield event

    async def __anext__(self) -> Event:
        for event in self._next:
            return event
        return await self._fill()

    def _open(self) -> Stream[Any]:
        tr = self._tracker
        after = tr.last if tr.tracking else None
        self._reopening = self._opened or self._follows_closed
        if self._opened and after is None:
            # Re-opened before the first event: replay whatever the ring holds rather
            # than risk losing events produced while we were away.
            after = 0
        self._opened = True
        return self._client._stream_event_view(self._session_id, after, batches=self._batches)

    async def _fill(self) -> Event:
        async with self._read_lock:
            for event in self._next:  # read ahead by a write waiter meanwhile
                return event
            deferred, self._deferred = self._deferred, None
            if deferred is not None:  # how the stream ended while a waiter read ahead
                raise deferred
            buf = await self._read_batch()
            self._replace_buffer(buf, 1)
            return buf[0]

    async def _read_ahead(self, done: Callable[[], bool]) -> None:
        """Read one more batch into the buffer without handing it out (write waiters do,
        so the outcome of a write arrives while the caller is not iterating); nothing
        once ``done()``. How the stream ends is kept for the caller's next read and raised
        here too."""
        async with self._read_lock:
            if done():
                return
            if self._deferred is not None:
                raise self._deferred
            try:
                more = await self._read_batch()
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                self._deferred = exc
                raise
            if not length_hint(self._next):
                self._replace_buffer(more, 0)
            else:
                self._buf.extend(more)

    async def _established(self, timeout: float) -> None:
        """Open the gRPC stream if needed and wait (at most ``timeout``) until the gateway
        has attached it, i.e. sent its response headers. A refusal (e.g. the session
        already has a subscriber) raises here, before the caller sends anything else."""
        stream = self._stream
        if stream is not None and self._read_lock.locked():
            # Someone is reading this open stream (the caller's `async for`, blocked until
            # an event comes): do not queue behind that read, only wait for the headers.
            # (asyncio.TimeoutError: wait_for's; not the built-in TimeoutError on 3.10.)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(stream.call.initial_metadata()), timeout)
            return
        async with self._read_lock:
            attempts = 0
            while True:
                if self._closed:
                    raise ClientClosedError(f"the event stream of {self._session_id} is closed")
                stream = self._stream
                if stream is None:
                    stream = self._stream = self._open()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stream.call.initial_metadata(), timeout)
                if not stream.call.done():
                    return
                code = await stream.call.code()
                self._stream = None
                if code == grpc.StatusCode.UNIMPLEMENTED and self._batches:
                    self._client._batches_supported = False
                    self._batches = False
                    # That call never attached: the next one is the first, from the
                    # requested start (not a replay that could hold older completions).
                    self._opened = False
                    continue
                if (
                    code == grpc.StatusCode.FAILED_PRECONDITION
                    and self._reopening
                    and attempts < self._max_attempts
                ):  # the gateway has not yet released this session's previous subscriber
                    await asyncio.sleep(self._resume_policy.backoff(attempts + 1))
                    attempts += 1
                    continue
                with contextlib.suppress(StopAsyncIteration):
                    await stream.__anext__()  # raises the call's error, mapped
                raise MxGatewaySessionStateError(
                    f"the event stream of {self._session_id} ended as soon as it opened",
                    session_id=self._session_id,
                )

    def _decode_chunk(self) -> list[Event]:
        """Decode the next DECODE_CHUNK events of the received message (see
        :data:`DECODE_CHUNK`); the observer sees them before the caller does."""
        events, start = self._undecoded, self._undecoded_pos
        stop = min(start + DECODE_CHUNK, len(events))
        # Taken, and put back only once the chunk is decoded whole: an iterator left
        # part-way by an error must not be paired with the next chunk's positions.
        it, self._undecoded_it = self._undecoded_it, None
        if stop >= len(events):
            self._undecoded, self._undecoded_pos = (), 0
        else:
            self._undecoded_pos = stop
        buf: list[Event] = []
        decode_events(events, buf, self._tracker, start, stop, it)
        if stop < len(events):
            self._undecoded_it = it
        faults = self._tracker.faults
        if faults:
            for fault in faults:
                self._note_fault(fault)
            faults.clear()
        if buf and self._observer is not None:
            self._observer(buf)
        return buf

    async def _read_batch(self) -> list[Event]:
        """Read messages until one decodes into at least one event (resuming as set up).

        What is left of the last message is decoded first (without touching the stream),
        so the tracker never runs ahead of the events decoded and a resume starts right
        after them."""
        attempts = 0
        while True:
            if self._undecoded and not self._closed:
                buf = self._decode_chunk()
                if buf:
                    return buf
                continue
            if self._closed:
                raise StopAsyncIteration
            stream = self._stream
            if stream is None:
                stream = self._stream = self._open()
            try:
                msg = await stream.__anext__()
            except StopAsyncIteration:
                self._stream = None
                if self._ended_by == pb.STREAM_FAULT_KIND_SESSION_FAULTED:
                    self._closed = True
                    raise MxGatewaySessionFaultedError(
                        f"session {self._session_id} faulted; close it",
                        session_id=self._session_id,
                    ) from None
                self._closed = True
                raise
            except MxGatewayUnimplementedError:
                self._stream = None
                if not self._batches:
                    self._closed = True
                    raise
                _log.info("gateway has no StreamEventBatches; falling back to StreamEvents")
                self._client._batches_supported = False
                self._batches = False
                continue
            except MxGatewayError as exc:
                self._stream = None
                if self._ended_by == pb.STREAM_FAULT_KIND_SESSION_FAULTED:
                    # The SESSION_FAULTED notice said why the stream ends, whatever status
                    # the gateway closes it with (e.g. ABORTED): raise the documented error.
                    self._closed = True
                    raise MxGatewaySessionFaultedError(
                        f"session {self._session_id} faulted; close it",
                        session_id=self._session_id,
                    ) from exc
                if not self._resumable(exc) or attempts >= self._max_attempts:
                    self._closed = True
                    raise
                delay = self._resume_policy.backoff(attempts + 1)
                attempts += 1
                self.resume_count += 1
                self._overflowed = False
                _log.warning(
                    "event stream of %s dropped (%s); resuming after sequence %d in %.2f s "
                    "(attempt %d of %d)",
                    self._session_id,
                    type(exc).__name__,
                    self._tracker.last,
                    delay,
                    attempts,
                    self._max_attempts,
                )
                await asyncio.sleep(delay)
                continue
            except asyncio.CancelledError:
                # The read was cancelled (the task was, e.g. by asyncio.wait_for timing
                # out). End this gRPC call but not the iterator: the next __anext__
                # re-subscribes after the last delivered event, so nothing is lost.
                self._stream = None
                stream.cancel()
                raise
            except BaseException:
                self._stream = None
                self._closed = True
                stream.cancel()
                raise
            attempts = 0
            self._undecoded = msg.events if self._batches else (msg,)
            self._undecoded_pos = 0
            self._undecoded_it = iter(self._undecoded)

    def _note_fault(self, fault: StreamFault) -> None:
        if fault.kind in _TERMINAL_FAULTS:
            self._ended_by = fault.kind
        elif fault.kind == pb.STREAM_FAULT_KIND_EVENT_QUEUE_OVERFLOW:
            self._overflowed = True
        _log.warning("event stream of %s: %s %s", self._session_id, fault.kind_name, fault.message)

    def _resumable(self, exc: MxGatewayError) -> bool:
        if not self._resume or self._ended_by is not None:
            return False
        if isinstance(exc, RESUMABLE_STREAM_ERRORS):
            return True
        if self._reopening and type(exc) is MxGatewaySessionStateError:
            # FAILED_PRECONDITION on a re-subscription: the gateway has not yet let go of
            # our previous subscription (single-subscriber sessions). Try again shortly.
            return True
        # The gateway disconnects a slow subscriber after an overflow notice.
        return isinstance(exc, MxGatewayOverloadedError) and self._overflowed

    # -- closing ----------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the underlying stream; further iteration ends. Idempotent."""
        self._closed = True
        self._replace_buffer([], 0)
        self._undecoded, self._undecoded_pos, self._undecoded_it = (), 0, None
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"<EventStream {self._session_id} last={self._tracker.last} "
            f"gaps={self._tracker.gaps} resumes={self.resume_count}>"
        )
