"""Gateway sessions: ids, leases, limits, states and the event log of each session.

A session belongs to the API key that opened it, not to a connection: that key (or an
``admin`` key) can use it from any connection; any other key is told there is no such
session, exactly as for an id that never existed. Each key may hold a bounded number of
sessions, so one key cannot take every slot. The lease is renewed by every call and held
while an event stream is attached; a sweep, run at a fraction of the lease, closes sessions
idle past it. Closing releases everything the runtime still holds. Closing is idempotent as
upstream: the registry remembers recently closed sessions (bounded in count and age, with
their owner) and answers the owner's repeat close with the final CLOSED state. Session ids
are secrets of their owner and are logged at DEBUG only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mxgateway._logsafe import get_logger
from mxgateway_sim._domain import ReleaseCounts
from mxgateway_sim._events import EndReason, EventLog, OverflowPolicy, StreamEnd
from mxgateway_sim._limits import (
    DEFAULT_EVENT_QUEUE_BYTES,
    DEFAULT_MAX_ITEMS_PER_SESSION,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_READ_CACHE_BYTES,
    DEFAULT_REFERENCE_CACHE_BYTES,
    DEFAULT_REPLAY_RING_BYTES,
)
from mxgateway_sim._oplog import session_log_fields
from mxgateway_sim._runtime import MxAccessRuntime
from mxgateway_sim._stats import GatewayStats

log = get_logger("mxgateway_sim.sessions")


class SessionState(enum.IntEnum):
    """Life cycle (numbers equal the proto ``SessionState``)."""

    OPENING = 1
    READY = 2
    CLOSING = 3
    CLOSED = 4
    FAULTED = 5


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Limits and event settings of the session manager (defaults follow the upstream)."""

    max_sessions: int = 64
    max_sessions_per_key: int = 16
    lease_s: float = 1800.0
    sweep_interval_s: float | None = None
    """None: :data:`SWEEP_FRACTION` of the lease, at most 30 s (the upstream interval)."""
    max_pending_commands: int = 128
    command_timeout_s: float = 30.0
    replay_ring_size: int = 1024
    replay_ring_age_s: float = 300.0
    event_queue_limit: int = 10_000
    overflow_policy: OverflowPolicy = OverflowPolicy.FAIL_FAST  # upstream's default
    multiple_subscribers: bool = False
    max_subscribers: int = 8
    batch_max_events: int = 10_000
    """Events per ``StreamEventBatches`` message at most (and ``batch_max_bytes``): a
    subscriber can take its whole queue in one message, so a stream that gets one turn of
    the loop per scan still keeps up (with 500, 2,000 tags at a 1 ms scan overflowed)."""
    batch_max_bytes: int = 1 << 20
    batch_linger_s: float = 0.010
    """A busy ``StreamEventBatches`` stream (its last message went out less than this long
    ago) waits until this long after that message before the next one, unless
    :attr:`batch_linger_events` are queued: at most ~100 messages a second under load, each
    with more events (gRPC's per-message cost in a Python client is ~150 us), while a
    stream quiet for this long sends its next event at once. 0 turns it off."""
    batch_linger_events: int = 1000
    """Queued events that end a linger at once (a full enough message goes out now)."""
    closed_memory: int = 1024
    """Closed sessions the registry remembers for an idempotent repeat CloseSession (each
    entry is an id and a timestamp, about 200 bytes, so the bound is about 200 KiB)."""
    closed_memory_s: float = 600.0
    """How long a closed session is remembered; after that a repeat close is NOT_FOUND."""
    # Byte limits (the table in _limits.py: flags, defaults, refusals).
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_items_per_session: int = DEFAULT_MAX_ITEMS_PER_SESSION
    event_queue_bytes: int = DEFAULT_EVENT_QUEUE_BYTES
    replay_ring_bytes: int = DEFAULT_REPLAY_RING_BYTES
    reference_cache_bytes: int = DEFAULT_REFERENCE_CACHE_BYTES
    read_cache_bytes: int = DEFAULT_READ_CACHE_BYTES
    first_value_delay_s: float = 0.0
    """Seconds from Advise to the item's first OnDataChange (upstream: 3-8 s; 0 = at once)."""


SWEEP_FRACTION = 0.05
"""Default sweep interval as a share of the lease: a session is closed at most 5 % late."""
MAX_SWEEP_INTERVAL_S = 30.0
MIN_SWEEP_INTERVAL_S = 0.01


def sweep_interval(options: SessionOptions) -> float:
    """Seconds between lease sweeps: the explicit option, else proportional to the lease."""
    if options.sweep_interval_s is not None:
        return options.sweep_interval_s
    return min(MAX_SWEEP_INTERVAL_S, max(MIN_SWEEP_INTERVAL_S, options.lease_s * SWEEP_FRACTION))


class SessionLimitError(Exception):
    """OpenSession at the session limit (the gateway's or the key's)."""


class Session:
    """One gateway session: a runtime, its event log, its lease and its in-flight count."""

    def __init__(
        self,
        session_id: str,
        name: str,
        runtime: MxAccessRuntime,
        options: SessionOptions,
        owner: str = "",
        stats: GatewayStats | None = None,
    ) -> None:
        self.id = session_id
        self.name = name
        self.owner = owner
        """Key id (lower case) of the key that opened the session."""
        self.runtime = runtime
        self.options = options
        self.stats = stats
        self.opened_at = time.time()
        self.state = SessionState.OPENING
        self.pending = 0
        self.last_used = time.monotonic()
        self.fault_message = ""
        self.done = asyncio.Event()  # set once CLOSED: a concurrent close waits for it
        self.events = EventLog(
            session_id,
            ring_size=options.replay_ring_size,
            ring_age_s=options.replay_ring_age_s,
            queue_limit=options.event_queue_limit,
            queue_bytes=options.event_queue_bytes,
            ring_bytes=options.replay_ring_bytes,
            policy=options.overflow_policy,
            multiple_subscribers=options.multiple_subscribers,
            max_subscribers=options.max_subscribers,
            on_fail_fast=self._overflowed,
        )
        self.log_fields = session_log_fields(session_id, self.owner)
        """``extra=`` of this session's log lines: its id prefix and key id."""

    def __repr__(self) -> str:
        return f"Session({self.id!r}, state={self.state.name})"

    def touch(self) -> None:
        """Renew the lease."""
        self.last_used = time.monotonic()

    def expired(self, now: float) -> bool:
        """True when idle past the lease with no stream attached."""
        return not self.events.subscribers and now - self.last_used > self.options.lease_s

    def _overflowed(self, message: str) -> None:
        self.fault(message, cause="overflow")

    def fault(self, message: str, *, cause: str = "other") -> None:
        """Move to FAULTED (only CloseSession is accepted afterwards) and end the streams.

        ``cause`` (``overflow``, ``worker_lost``, ``injected`` or ``other``) labels the
        fault in the metrics.
        """
        if self.state in (SessionState.CLOSED, SessionState.CLOSING):
            return
        first = self.state is not SessionState.FAULTED
        self.state = SessionState.FAULTED
        self.fault_message = message
        if first and self.stats is not None:
            self.stats.session_faulted(self, cause, message)
        log.warning("a session of key %s faulted: %s", self.owner, message, extra=self.log_fields)
        log.debug("session %s faulted", self.id)
        self.events.close(StreamEnd(EndReason.SESSION_FAULTED, message))


@dataclass(frozen=True, slots=True)
class CloseResult:
    """What CloseSession reports (``repeat``: the session was already closed, nothing
    was released by this call)."""

    session_id: str
    final_state: SessionState
    released: ReleaseCounts
    repeat: bool = False


class SessionManager:
    """Opens, finds, sweeps and closes sessions."""

    def __init__(
        self,
        runtime_factory: Callable[[], MxAccessRuntime],
        options: SessionOptions,
        stats: GatewayStats | None = None,
    ) -> None:
        self._factory = runtime_factory
        self.options = options
        self.stats = stats
        self._sessions: dict[str, Session] = {}
        # id -> monotonic close time, oldest first; bounded by closed_memory(_s).
        self._closed: OrderedDict[str, tuple[float, str]] = OrderedDict()  # (time, owner)
        self._opening = 0
        self._opening_by_key: dict[str, int] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        """Open sessions (a copy)."""
        return list(self._sessions.values())

    def get(self, session_id: str) -> Session | None:
        """The session with this id, or None (no ownership check: the gateway's own view)."""
        return self._sessions.get(session_id)

    def find(self, session_id: str, key_id: str, *, admin: bool = False) -> Session | None:
        """The session if the key ``key_id`` may use it (its owner, or ``admin``), else None.

        None for another key's session, exactly as for an unknown id: callers answer both
        alike, so a key cannot learn that another key's session exists.
        """
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if not (admin or session.owner == key_id.lower()):
            if self.stats is not None:
                self.stats.authorization_failed("not_owner")
            return None
        return session

    def owned_by(self, key_id: str) -> int:
        """Sessions the key holds (open or opening)."""
        owner = key_id.lower()
        held = sum(1 for s in self._sessions.values() if s.owner == owner)
        return held + self._opening_by_key.get(owner, 0)

    async def open(self, name: str, owner: str = "") -> Session:
        """Create a session owned by the key ``owner`` and start its runtime.

        Raises:
            SessionLimitError: ``max_sessions`` sessions are open, or the key holds
                ``max_sessions_per_key``.
        """
        owner = owner.lower()
        options = self.options
        if len(self._sessions) + self._opening >= options.max_sessions:
            self._refused("max_sessions")
            raise SessionLimitError(
                f"the gateway has {options.max_sessions} open sessions (the limit, --max-sessions)"
            )
        if self.owned_by(owner) >= options.max_sessions_per_key:
            self._refused("max_sessions_per_key")
            raise SessionLimitError(
                f"this API key has {options.max_sessions_per_key} open sessions "
                "(the per-key limit, --max-sessions-per-key); close one first"
            )
        self._opening += 1
        self._opening_by_key[owner] = self._opening_by_key.get(owner, 0) + 1
        try:
            session_id = f"session-{secrets.token_hex(16)}"
            session = Session(session_id, name, self._factory(), options, owner, self.stats)
            bind = getattr(session.runtime, "bind_session", None)
            if bind is not None:  # a worker-process runtime: its id, event log and fault
                bind(session)
            await session.runtime.start(session.events.publish)
            session.state = SessionState.READY
            self._sessions[session_id] = session
        finally:
            self._opening -= 1
            left = self._opening_by_key[owner] - 1
            if left:
                self._opening_by_key[owner] = left
            else:
                del self._opening_by_key[owner]
        if self.stats is not None:
            self.stats.session_opened()
        log.info(
            "key %s opened a session (%s; %d open)",
            owner,
            name or "unnamed",
            len(self._sessions),
            extra=session.log_fields,
        )
        log.debug("session %s opened for key %s", session_id, owner)
        return session

    def _refused(self, limit: str) -> None:
        if self.stats is not None:
            refusals = self.stats.session_limit_refusals
            refusals[limit] = refusals.get(limit, 0) + 1

    def was_closed(
        self, session_id: str, key_id: str | None = None, *, admin: bool = False
    ) -> bool:
        """True when the registry still remembers closing this session (for ``key_id``: only
        if that key owned it, or is ``admin``)."""
        self._forget_closed(time.monotonic())
        entry = self._closed.get(session_id)
        if entry is None:
            return False
        return key_id is None or admin or entry[1] == key_id.lower()

    def _remember_closed(self, session_id: str, owner: str) -> None:
        now = time.monotonic()
        self._closed[session_id] = (now, owner)
        self._closed.move_to_end(session_id)
        self._forget_closed(now)

    def _forget_closed(self, now: float) -> None:
        closed = self._closed
        while len(closed) > self.options.closed_memory:
            closed.popitem(last=False)
        cutoff = now - self.options.closed_memory_s
        while closed and next(iter(closed.values()))[0] < cutoff:
            closed.popitem(last=False)

    async def close(
        self,
        session_id: str,
        reason: EndReason = EndReason.SESSION_CLOSED,
        message: str = "",
        *,
        key_id: str | None = None,
        admin: bool = False,
        why: str = "closed",
    ) -> CloseResult | None:
        """Release everything and close; None when the registry does not know the session.

        Idempotent (as upstream): closing a session that is closing waits for that close,
        and closing one the registry still remembers answers CLOSED with nothing released.
        With ``key_id`` (a caller's close), another key's session, open or remembered, is
        None as an unknown one is, unless ``admin``. ``why`` labels the close in the metrics
        (``closed``, ``lease_expired``, ``shutdown``).
        """
        session = self._sessions.get(session_id)
        if session is not None and key_id is not None:
            session = self.find(session_id, key_id, admin=admin)
            if session is None:
                return None
        if session is not None and session.state is SessionState.CLOSING:
            await session.done.wait()
            session = None
        if session is None:
            if not self.was_closed(session_id, key_id, admin=admin):
                return None
            return CloseResult(session_id, SessionState.CLOSED, ReleaseCounts(), repeat=True)
        session.state = SessionState.CLOSING  # Invoke answers SESSION_NOT_READY meanwhile
        try:
            released = await session.runtime.release_all()
            await session.runtime.close()
        finally:
            session.state = SessionState.CLOSED
            self._sessions.pop(session_id, None)
            self._remember_closed(session_id, session.owner)
            session.done.set()
            session.events.close(StreamEnd(reason, message or f"session {reason.value}"))
            if self.stats is not None:
                self.stats.session_closed(session, why)
        log.info(
            "a session of key %s closed: %d advises, %d items, %d registrations released",
            session.owner,
            released.advises,
            released.items,
            released.registrations,
            extra=session.log_fields,
        )
        return CloseResult(session_id, session.state, released)

    async def sweep(self) -> list[str]:
        """Close every session whose lease expired; returns their ids."""
        now = time.monotonic()
        expired = [s.id for s in self._sessions.values() if s.expired(now)]
        if expired:
            log.info("%d session lease(s) expired", len(expired))
        for session_id in expired:
            log.debug("session %s lease expired", session_id)
            await self.close(
                session_id, EndReason.SESSION_CLOSED, "session lease expired", why="lease_expired"
            )
        return expired

    def start(self) -> None:
        """Start the periodic lease sweep."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_loop(), name="mxgw-sim-lease-sweep"
            )

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(sweep_interval(self.options))
            try:
                await self.sweep()
            except Exception:  # keep sweeping; one bad runtime must not stop the sweep
                log.exception("lease sweep failed")

    async def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop sweeping, end every stream with SERVER_SHUTDOWN and close every session.

        The sessions close side by side (a worker process each takes up to its shutdown
        timeout); after ``timeout_s`` in all, the closes still running are cancelled, which
        kills their workers.
        """
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        closes = [
            asyncio.ensure_future(
                self.close(
                    session_id,
                    EndReason.SERVER_SHUTDOWN,
                    "the gateway is shutting down",
                    why="shutdown",
                )
            )
            for session_id in list(self._sessions)
        ]
        if not closes:
            return
        _, late = await asyncio.wait(closes, timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            log.warning(
                "%d of %d sessions did not close within %g s; their runtimes were stopped",
                len(late),
                len(closes),
                timeout_s,
            )
        for outcome in await asyncio.gather(*closes, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.warning("a session failed to close: %s: %s", type(outcome).__name__, outcome)
