"""A session's event log: sequence numbers, the replay ring and the bounded subscriber queues.

Events arrive from the runtime a list at a time (one scan tick's worth), are encoded once,
appended to the replay ring and to every subscriber's queue, and each subscriber is woken
once per list, so the cost per event is a few list operations.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim._domain import MxRuntimeEvent
from mxgateway_sim._wire import EventEncoder, fault_event, unframe


class OverflowPolicy(str, enum.Enum):
    """What happens when a subscriber's queue is full."""

    DISCONNECT_SUBSCRIBER = "disconnect-subscriber"
    """The slow subscriber gets an EVENT_QUEUE_OVERFLOW notice and its stream ends."""
    FAIL_FAST = "fail-fast"
    """The session faults (single-subscriber mode; with several subscribers, disconnect)."""


class EndReason(enum.Enum):
    """Why a subscriber's stream stops."""

    OVERFLOW = "overflow"
    SESSION_CLOSED = "session-closed"
    SESSION_FAULTED = "session-faulted"
    SERVER_SHUTDOWN = "server-shutdown"


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The end of one subscriber's stream and what it missed."""

    reason: EndReason
    message: str
    first_missing: int = 0
    missing: int = 0


class SubscriberRefused(Exception):
    """A new subscriber is not allowed (``limit`` True: the subscriber limit is reached)."""

    def __init__(self, message: str, *, limit: bool) -> None:
        super().__init__(message)
        self.limit = limit


class Subscriber:
    """One attached stream: its queue of framed events and the next sequence it will get."""

    __slots__ = (
        "delivered",
        "end",
        "floor",
        "gap",
        "limit",
        "next_seq",
        "queue",
        "queued_bytes",
        "wake",
    )

    def __init__(self, limit: int, next_seq: int, delivered: list[int] | None = None) -> None:
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        """Bytes in ``queue`` (reset when the queue is found empty: others may clear it)."""
        self.limit = limit
        self.next_seq = next_seq
        self.wake = asyncio.Event()
        self.end: StreamEnd | None = None
        self.gap: tuple[int, int] | None = None
        self.floor = 0
        """Resume point ahead of the log: events at or below it are never queued (0: none)."""
        self.delivered = delivered if delivered is not None else [0]
        """The event log's delivered-events counter (one cell shared by its subscribers, so
        the count costs one addition per batch and survives the subscriber)."""

    def take(self, max_events: int, max_bytes: int) -> list[bytes]:
        """Pop up to ``max_events`` framed events (at least one) within ``max_bytes``."""
        queue = self.queue
        out: list[bytes] = []
        size = 0
        while queue and len(out) < max_events:
            item = queue[0]
            if out and size + len(item) > max_bytes:
                break
            out.append(queue.popleft())
            size += len(item)
        self.next_seq += len(out)
        self.delivered[0] += len(out)
        self.queued_bytes = self.queued_bytes - size if queue else 0
        return out


def _closed(message: str) -> None:
    """The overflow callback of a closed log (nothing is published to it)."""


class EventLog:
    """Sequence numbering, replay ring and fan-out for one session."""

    def __init__(
        self,
        session_id: str,
        *,
        ring_size: int,
        ring_age_s: float,
        queue_limit: int,
        policy: OverflowPolicy,
        queue_bytes: int = 1 << 62,
        ring_bytes: int = 1 << 62,
        multiple_subscribers: bool,
        max_subscribers: int,
        on_fail_fast: Callable[[str], None],
    ) -> None:
        self.encoder = EventEncoder(session_id)
        self.next_seq = 1
        self._ring: deque[bytes] = deque()
        self._ring_size = max(ring_size, 1)
        self._ring_bytes = 0  # bytes of the events in the ring
        self._ring_byte_limit = ring_bytes
        self._queue_bytes = queue_bytes
        self._chunks: deque[tuple[float, int]] = deque()  # (monotonic time, last seq)
        self._ring_age_s = ring_age_s
        self._queue_limit = queue_limit
        self._policy = policy
        self._multiple = multiple_subscribers
        self._max_subscribers = max_subscribers
        self._on_fail_fast = on_fail_fast
        self.subscribers: list[Subscriber] = []
        self._drain_seq = 1
        self.closed: StreamEnd | None = None
        # Operating figures (read by the metrics endpoint; see _stats.py).
        self._delivered = [0]
        self.drained = 0
        self.dropped = 0
        """Events thrown away from overflowing subscriber queues."""
        self.overflow_disconnects = 0
        self.gaps = 0
        """Replay-gap notices sent (a resume from before the ring, an event too large)."""

    @property
    def delivered(self) -> int:
        """Events handed to event streams so far (all subscribers, past ones included)."""
        return self._delivered[0]

    @property
    def ring_bytes(self) -> int:
        """Encoded bytes of the events in the replay ring."""
        return self._ring_bytes

    @property
    def ring_events(self) -> int:
        """Events in the replay ring."""
        return len(self._ring)

    def queue_usage(self) -> tuple[int, int]:
        """Events and encoded bytes waiting in the subscribers' queues."""
        depth = size = 0
        for sub in self.subscribers:
            if sub.queue:
                depth += len(sub.queue)
                size += sub.queued_bytes
        return depth, size

    @property
    def ring_first_seq(self) -> int:
        """Oldest sequence still in the replay ring (``next_seq`` when it is empty)."""
        return self.next_seq - len(self._ring)

    def publish(self, events: Sequence[MxRuntimeEvent]) -> None:
        """Number, encode, retain and fan out a list of runtime events (the runtime's sink)."""
        if not events or self.closed is not None:
            return
        self.publish_framed(self.encoder.encode(events, self.next_seq, time.time()))

    def publish_framed(self, framed: list[bytes]) -> None:
        """Retain and fan out events already encoded as ``0x0A <len> <MxEvent>`` items whose
        ``worker_sequence`` numbers continue from :attr:`next_seq` (a worker's events)."""
        if not framed or self.closed is not None:
            return
        first_seq = self.next_seq
        size = sum(map(len, framed))
        self.next_seq += len(framed)
        ring = self._ring
        ring.extend(framed)
        self._ring_bytes += size
        excess = len(ring) - self._ring_size
        if excess > 0:  # the count limit: drop the oldest
            self._ring_bytes -= sum(len(ring.popleft()) for _ in range(excess))
        while self._ring_bytes > self._ring_byte_limit and ring:  # the byte limit
            self._ring_bytes -= len(ring.popleft())
        now = time.monotonic()
        chunks = self._chunks
        chunks.append((now, self.next_seq - 1))
        cutoff = now - self._ring_age_s
        while chunks and chunks[0][0] < cutoff:
            _, last = chunks.popleft()
            for _ in range(min(last - self.ring_first_seq + 1, len(ring))):
                self._ring_bytes -= len(ring.popleft())
        first = self.ring_first_seq
        while chunks and chunks[0][1] < first:  # evicted by the ring's size limits
            chunks.popleft()
        for sub in list(self.subscribers):
            if not sub.queue:
                sub.queued_bytes = 0
            if sub.floor:
                # Attached with a resume point ahead of the log: only what is above it.
                skip = sub.floor - first_seq + 1
                if skip >= len(framed):
                    continue
                sub.floor = 0
                above = framed[skip:] if skip > 0 else framed
                sub.queue.extend(above)
                sub.queued_bytes += size if skip <= 0 else sum(map(len, above))
            else:
                sub.queue.extend(framed)
                sub.queued_bytes += size
            if len(sub.queue) > sub.limit or sub.queued_bytes > self._queue_bytes:
                self._overflow(sub)
            else:
                sub.wake.set()

    def _overflow(self, sub: Subscriber) -> None:
        missing = len(sub.queue)
        first = sub.next_seq
        self.dropped += missing
        if len(sub.queue) > sub.limit:
            limit = f"{self._queue_limit} events (--event-queue-size)"
        else:
            limit = f"{self._queue_bytes:,} bytes (--event-queue-bytes)"
        sub.queue.clear()
        sub.queued_bytes = 0
        if self._policy is OverflowPolicy.FAIL_FAST and not self._multiple:
            self._on_fail_fast(f"event queue overflow ({limit}); session faulted (fail-fast)")
            return
        self.overflow_disconnects += 1
        self._finish(
            sub,
            StreamEnd(
                EndReason.OVERFLOW,
                f"subscriber fell more than {limit} behind and was "
                "disconnected; resume with after_worker_sequence",
                first,
                missing,
            ),
        )

    def _finish(self, sub: Subscriber, end: StreamEnd) -> None:
        if sub.end is None:
            sub.end = end
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        sub.wake.set()

    def attach(self, after: int | None) -> Subscriber:
        """Add a subscriber; with ``after`` set, queue the retained events after it.

        Raises:
            SubscriberRefused: a second subscriber without multi-subscriber mode, or the
                subscriber limit.
        """
        if self.subscribers and not self._multiple:
            raise SubscriberRefused(
                "the session already has an event subscriber and this gateway allows one",
                limit=False,
            )
        if len(self.subscribers) >= self._max_subscribers:
            raise SubscriberRefused(
                f"the session has {self._max_subscribers} event subscribers (the limit)",
                limit=True,
            )
        sub = Subscriber(self._queue_limit, self.next_seq, self._delivered)
        if after is not None and after + 1 < self.next_seq:
            base = self.ring_first_seq
            start = max(after + 1, base)
            if start > after + 1:
                sub.gap = (after + 1, start - (after + 1))
                self.gaps += 1
            sub.queue.extend(itertools.islice(self._ring, start - base, None))
            sub.queued_bytes = sum(map(len, sub.queue))
            sub.next_seq = start
        elif after is not None and after >= self.next_seq:
            # A resume point ahead of the log (the contract: "greater than"): nothing at or
            # below it is ever delivered, not even events produced from now on.
            sub.floor = after
            sub.next_seq = after + 1
        self.subscribers.append(sub)
        return sub

    def detach(self, sub: Subscriber) -> None:
        """Remove a subscriber whose stream ended."""
        if sub in self.subscribers:
            self.subscribers.remove(sub)

    def end_all(self, end: StreamEnd) -> None:
        """End every subscriber's stream (session closed or faulted, server shutdown)."""
        for sub in list(self.subscribers):
            self._finish(sub, end)

    def close(self, end: StreamEnd) -> None:
        """No more events: end every stream."""
        self.closed = end
        self.end_all(end)
        # The session's method refers back to the session that holds this log: a cycle
        # only a full collection frees once the session has lived long enough to be
        # frozen (mxgateway_sim._gcpolicy); nothing overflows a closed log.
        self._on_fail_fast = _closed

    def drain(self, max_events: int, max_bytes: int = 1 << 62) -> list[bytes]:
        """DrainEvents: retained events not drained before (bare ``MxEvent`` bytes).

        Only what fits in ``max_bytes`` (the reply's room for events) is returned and marked
        drained; the rest stays for the next call. An event too large for any reply is
        replaced by a ``REPLAY_GAP`` notice naming it, so the drain never sticks on it.
        """
        base = self.ring_first_seq
        start = max(self._drain_seq, base)
        stop = self.next_seq if max_events <= 0 else min(self.next_seq, start + max_events)
        events: list[bytes] = []
        size = 0
        seq = start
        for framed in itertools.islice(self._ring, start - base, stop - base):
            if size + len(framed) > max_bytes:
                if not events:
                    events.append(self._too_large_notice(seq, len(framed), max_bytes))
                    self.gaps += 1
                    seq += 1
                break
            events.append(unframe(framed))
            size += len(framed)
            seq += 1
        self._drain_seq = seq
        self.drained += len(events)
        return events

    def _too_large_notice(self, seq: int, size: int, room: int) -> bytes:
        return fault_event(
            self.encoder.session_id,
            pb.STREAM_FAULT_KIND_REPLAY_GAP,
            f"event {seq} is {size:,} bytes and does not fit in a {room:,}-byte reply "
            "(--max-message-bytes); it was skipped",
            seq,
            1,
            now=time.time(),
        ).SerializeToString()
