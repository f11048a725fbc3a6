"""Gateway sessions: ids, leases, limits, states and the event log of each session.

A session belongs to the gateway, not to a connection: any caller with its id can use it.
Its lease is renewed by every call and held while an event stream is attached; a sweep
closes sessions idle past their lease. Closing releases everything the runtime still holds.
Closing is idempotent as upstream: the registry remembers recently closed sessions (bounded
in count and age) and answers a repeat close with the final CLOSED state.
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

from mxgateway_sim._domain import ReleaseCounts
from mxgateway_sim._events import EndReason, EventLog, OverflowPolicy, StreamEnd
from mxgateway_sim._limits import (
    DEFAULT_EVENT_QUEUE_BYTES,
    DEFAULT_MAX_ITEMS_PER_SESSION,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_REFERENCE_CACHE_BYTES,
    DEFAULT_REPLAY_RING_BYTES,
)
from mxgateway_sim._logsafe import get_logger
from mxgateway_sim._runtime import MxAccessRuntime

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
    lease_s: float = 1800.0
    sweep_interval_s: float = 30.0
    max_pending_commands: int = 128
    command_timeout_s: float = 30.0
    replay_ring_size: int = 1024
    replay_ring_age_s: float = 300.0
    event_queue_limit: int = 10_000
    overflow_policy: OverflowPolicy = OverflowPolicy.FAIL_FAST  # upstream's default
    multiple_subscribers: bool = False
    max_subscribers: int = 8
    batch_max_events: int = 500
    batch_max_bytes: int = 1 << 20
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


class SessionLimitError(Exception):
    """OpenSession at the session limit."""


class Session:
    """One gateway session: a runtime, its event log, its lease and its in-flight count."""

    def __init__(
        self, session_id: str, name: str, runtime: MxAccessRuntime, options: SessionOptions
    ) -> None:
        self.id = session_id
        self.name = name
        self.runtime = runtime
        self.options = options
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
            on_fail_fast=self.fault,
        )

    def __repr__(self) -> str:
        return f"Session({self.id!r}, state={self.state.name})"

    def touch(self) -> None:
        """Renew the lease."""
        self.last_used = time.monotonic()

    def expired(self, now: float) -> bool:
        """True when idle past the lease with no stream attached."""
        return not self.events.subscribers and now - self.last_used > self.options.lease_s

    def fault(self, message: str) -> None:
        """Move to FAULTED (only CloseSession is accepted afterwards) and end the streams."""
        if self.state in (SessionState.CLOSED, SessionState.CLOSING):
            return
        self.state = SessionState.FAULTED
        self.fault_message = message
        log.warning("session %s faulted: %s", self.id, message)
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
        self, runtime_factory: Callable[[], MxAccessRuntime], options: SessionOptions
    ) -> None:
        self._factory = runtime_factory
        self.options = options
        self._sessions: dict[str, Session] = {}
        # id -> monotonic close time, oldest first; bounded by closed_memory(_s).
        self._closed: OrderedDict[str, float] = OrderedDict()
        self._opening = 0
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        """Open sessions (a copy)."""
        return list(self._sessions.values())

    def get(self, session_id: str) -> Session | None:
        """The session with this id, or None."""
        return self._sessions.get(session_id)

    async def open(self, name: str) -> Session:
        """Create a session and start its runtime.

        Raises:
            SessionLimitError: ``max_sessions`` sessions are open.
        """
        if len(self._sessions) + self._opening >= self.options.max_sessions:
            raise SessionLimitError(
                f"the gateway has {self.options.max_sessions} open sessions (the limit)"
            )
        self._opening += 1
        try:
            session_id = f"session-{secrets.token_hex(16)}"
            session = Session(session_id, name, self._factory(), self.options)
            await session.runtime.start(session.events.publish)
            session.state = SessionState.READY
            self._sessions[session_id] = session
        finally:
            self._opening -= 1
        log.info("session %s opened (%s)", session_id, name or "unnamed")
        return session

    def was_closed(self, session_id: str) -> bool:
        """True when the registry still remembers closing this session."""
        self._forget_closed(time.monotonic())
        return session_id in self._closed

    def _remember_closed(self, session_id: str) -> None:
        now = time.monotonic()
        self._closed[session_id] = now
        self._closed.move_to_end(session_id)
        self._forget_closed(now)

    def _forget_closed(self, now: float) -> None:
        closed = self._closed
        while len(closed) > self.options.closed_memory:
            closed.popitem(last=False)
        cutoff = now - self.options.closed_memory_s
        while closed and next(iter(closed.values())) < cutoff:
            closed.popitem(last=False)

    async def close(
        self, session_id: str, reason: EndReason = EndReason.SESSION_CLOSED, message: str = ""
    ) -> CloseResult | None:
        """Release everything and close; None when the registry does not know the session.

        Idempotent (as upstream): closing a session that is closing waits for that close,
        and closing one the registry still remembers answers CLOSED with nothing released.
        """
        session = self._sessions.get(session_id)
        if session is not None and session.state is SessionState.CLOSING:
            await session.done.wait()
            session = None
        if session is None:
            if not self.was_closed(session_id):
                return None
            return CloseResult(session_id, SessionState.CLOSED, ReleaseCounts(), repeat=True)
        session.state = SessionState.CLOSING  # Invoke answers SESSION_NOT_READY meanwhile
        try:
            released = await session.runtime.release_all()
            await session.runtime.close()
        finally:
            session.state = SessionState.CLOSED
            self._sessions.pop(session_id, None)
            self._remember_closed(session_id)
            session.done.set()
            session.events.close(StreamEnd(reason, message or f"session {reason.value}"))
        log.info(
            "session %s closed: %d advises, %d items, %d registrations released",
            session_id,
            released.advises,
            released.items,
            released.registrations,
        )
        return CloseResult(session_id, session.state, released)

    async def sweep(self) -> list[str]:
        """Close every session whose lease expired; returns their ids."""
        now = time.monotonic()
        expired = [s.id for s in self._sessions.values() if s.expired(now)]
        for session_id in expired:
            log.info("session %s lease expired", session_id)
            await self.close(session_id, EndReason.SESSION_CLOSED, "session lease expired")
        return expired

    def start(self) -> None:
        """Start the periodic lease sweep."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_loop(), name="mxgw-sim-lease-sweep"
            )

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:  # keep sweeping; one bad runtime must not stop the sweep
                log.exception("lease sweep failed")

    async def shutdown(self) -> None:
        """Stop sweeping, end every stream with SERVER_SHUTDOWN and close every session."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        for session_id in list(self._sessions):
            await self.close(session_id, EndReason.SERVER_SHUTDOWN, "the gateway is shutting down")
