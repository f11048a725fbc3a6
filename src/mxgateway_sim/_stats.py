"""The gateway's operating figures: plain counters the metrics endpoint and status page read.

Everything here is a Python ``int`` or a small dict, updated where the event happens and
read only when someone scrapes ``/metrics`` or opens the status page, so the gateway pays
no Prometheus library call on any path. Per-event figures are not counted here at all:
they are read from each session's event log when asked (see :meth:`GatewayStats.events`),
and a session's totals are folded in when it closes, so the counters never go backwards.
Labels come from bounded sets: command kinds and status codes of the contract, a few
reasons, and key ids (one per configured key).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grpc import aio

from mxgateway._logsafe import escape_log_text
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim._oplog import session_prefix

if TYPE_CHECKING:
    from mxgateway_sim._events import EventLog
    from mxgateway_sim._sessions import Session

__all__ = [
    "LATENCY_BUCKETS_S",
    "EventTotals",
    "FaultRecord",
    "GatewayStats",
    "Histogram",
    "TimedGalaxy",
    "timed_invoke",
]

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds of the latency histograms (seconds; ``+Inf`` is implied)."""

RECENT_FAULTS = 20
"""Session faults the status page lists (the newest first)."""

FAULT_CAUSES = ("overflow", "worker_lost", "injected", "other")
"""Why a session faulted (the ``cause`` label of ``mxgw_sessions_faulted_total``)."""


class Histogram:
    """Counts of observations per bucket of :data:`LATENCY_BUCKETS_S`, and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them (cumulative, ending with +Inf)."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS_S), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def _timed_call(
    counts: dict[tuple[str, str], int],
    latency: dict[str, Histogram],
    name: str,
    outcome: str,
    seconds: float,
) -> None:
    """Count one call by (name, outcome) and add its duration to ``name``'s histogram."""
    key = (name, outcome)
    counts[key] = counts.get(key, 0) + 1
    histogram = latency.get(name)
    if histogram is None:
        histogram = latency[name] = Histogram()
    histogram.observe(seconds)


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One session fault as the status page lists it (texts already escaped)."""

    when: float
    session: str
    key_id: str
    cause: str
    message: str


@dataclass(slots=True)
class EventTotals:
    """Event figures summed over sessions (closed ones included for the counters)."""

    raised: int = 0
    delivered: int = 0
    drained: int = 0
    dropped: int = 0
    overflow_disconnects: int = 0
    gaps: int = 0
    queue_events: int = 0
    queue_bytes: int = 0
    queue_bytes_max: int = 0
    ring_events: int = 0
    ring_bytes: int = 0
    ring_bytes_max: int = 0

    def add_counters(self, log: EventLog) -> None:
        """Add one event log's counters (not its gauges)."""
        self.raised += log.next_seq - 1
        self.delivered += log.delivered
        self.drained += log.drained
        self.dropped += log.dropped
        self.overflow_disconnects += log.overflow_disconnects
        self.gaps += log.gaps


@dataclass
class GatewayStats:
    """Counters of one gateway (kept across :meth:`GatewaySimulator.restart`)."""

    started: float = field(default_factory=time.time)
    sessions_opened: int = 0
    sessions_closed: dict[str, int] = field(default_factory=dict)
    """By reason: ``closed`` (CloseSession), ``lease_expired``, ``shutdown``."""
    sessions_faulted: dict[str, int] = field(default_factory=dict)
    """By cause (:data:`FAULT_CAUSES`)."""
    session_limit_refusals: dict[str, int] = field(default_factory=dict)
    """OpenSession refused by a limit: ``max_sessions``, ``max_sessions_per_key``."""
    authentication_failures: dict[str, int] = field(default_factory=dict)
    """By reason: ``missing_key``, ``invalid_key``."""
    authorization_failures: dict[str, int] = field(default_factory=dict)
    """By reason: ``method_scope``, ``command_scope``, ``not_owner``."""
    stalled_calls: dict[str, int] = field(default_factory=dict)
    """Calls ended because their first request message did not come: ``body_timeout``
    (``--body-timeout-seconds``) or ``waiting_limit`` (``--max-waiting-calls-per-key``)."""
    commands: dict[tuple[str, str], int] = field(default_factory=dict)
    """(kind, status) -> count; status is the reply's protocol status (or a gRPC code)."""
    command_latency: dict[str, Histogram] = field(default_factory=dict)
    galaxy_latency: dict[str, Histogram] = field(default_factory=dict)
    galaxy_requests: dict[tuple[str, str], int] = field(default_factory=dict)
    """(method, gRPC code) -> count."""
    retired: EventTotals = field(default_factory=EventTotals)
    """Event counters of the sessions that closed."""
    faults: deque[FaultRecord] = field(default_factory=lambda: deque(maxlen=RECENT_FAULTS))

    # -- sessions ------------------------------------------------------------------------

    def session_opened(self) -> None:
        self.sessions_opened += 1

    def session_closed(self, session: Session, reason: str) -> None:
        """A session left the registry: count it and keep its event counters."""
        self.sessions_closed[reason] = self.sessions_closed.get(reason, 0) + 1
        self.retired.add_counters(session.events)

    def session_faulted(self, session: Session, cause: str, message: str) -> None:
        cause = cause if cause in FAULT_CAUSES else "other"
        self.sessions_faulted[cause] = self.sessions_faulted.get(cause, 0) + 1
        self.faults.appendleft(
            FaultRecord(
                time.time(),
                session_prefix(session.id),
                session.owner,
                cause,
                escape_log_text(message[:300]),
            )
        )

    # -- calls ---------------------------------------------------------------------------

    def authentication_failed(self, reason: str) -> None:
        self.authentication_failures[reason] = self.authentication_failures.get(reason, 0) + 1

    def authorization_failed(self, reason: str) -> None:
        self.authorization_failures[reason] = self.authorization_failures.get(reason, 0) + 1

    def body_timed_out(self) -> None:
        """A call's first request message did not arrive within ``--body-timeout-seconds``."""
        self.stalled_calls["body_timeout"] = self.stalled_calls.get("body_timeout", 0) + 1

    def waiting_calls_refused(self) -> None:
        """A call refused: its key had ``--max-waiting-calls-per-key`` calls waiting."""
        self.stalled_calls["waiting_limit"] = self.stalled_calls.get("waiting_limit", 0) + 1

    def command(self, kind: str, status: str, seconds: float) -> None:
        """One Invoke: its kind, the status it answered and how long it took."""
        _timed_call(self.commands, self.command_latency, kind, status, seconds)

    def galaxy_request(self, method: str, code: str, seconds: float) -> None:
        """One GalaxyRepository call: its method, gRPC code and duration."""
        _timed_call(self.galaxy_requests, self.galaxy_latency, method, code, seconds)

    # -- events --------------------------------------------------------------------------

    def events(self, sessions: Iterable[Session]) -> EventTotals:
        """Event counters (closed sessions included) and queue/ring gauges (open ones)."""
        retired = self.retired
        totals = EventTotals(
            raised=retired.raised,
            delivered=retired.delivered,
            drained=retired.drained,
            dropped=retired.dropped,
            overflow_disconnects=retired.overflow_disconnects,
            gaps=retired.gaps,
        )
        for session in sessions:
            log = session.events
            totals.add_counters(log)
            depth, size = log.queue_usage()
            totals.queue_events += depth
            totals.queue_bytes += size
            totals.queue_bytes_max = max(totals.queue_bytes_max, size)
            ring = log.ring_bytes
            totals.ring_events += log.ring_events
            totals.ring_bytes += ring
            totals.ring_bytes_max = max(totals.ring_bytes_max, ring)
        return totals


_KIND_NAMES: dict[int, str] = {
    number: name.removeprefix("MX_COMMAND_KIND_").lower()
    for name, number in pb.MxCommandKind.items()
}
_STATUS_NAMES: dict[int, str] = {
    number: name.removeprefix("PROTOCOL_STATUS_CODE_").lower()
    for name, number in pb.ProtocolStatusCode.items()
}
_OK = "ok"

Invoke = Callable[[pb.MxCommandRequest, Any], Awaitable["pb.MxCommandReply | bytes"]]


def timed_invoke(invoke: Invoke, stats: GatewayStats) -> Invoke:
    """``invoke`` counting each command by kind and answered status, with its latency.

    Used only with metrics on: the cost is two clock reads and three dict updates per
    command, nothing per event. Kinds and statuses outside the contract count as
    ``unknown``; a call refused by ``abort`` (a missing scope) as ``permission_denied``.
    """

    async def timed(request: pb.MxCommandRequest, context: Any) -> pb.MxCommandReply | bytes:
        started = time.perf_counter()
        kind = _KIND_NAMES.get(request.command.kind, "unknown")
        try:
            reply = await invoke(request, context)
        except aio.AbortError:  # the only abort of Invoke: the key lacks the kind's scope
            stats.command(kind, "permission_denied", time.perf_counter() - started)
            raise
        except asyncio.CancelledError:  # the caller went away
            stats.command(kind, "cancelled", time.perf_counter() - started)
            raise
        except Exception:
            stats.command(kind, "error", time.perf_counter() - started)
            raise
        if isinstance(reply, bytes):  # a bulk reply encoded by the servicer: always OK
            status = _OK
        else:
            status = _STATUS_NAMES.get(reply.protocol_status.code, "unknown")
        stats.command(kind, status, time.perf_counter() - started)
        return reply

    return timed


GALAXY_TIMED_METHODS: tuple[str, ...] = (
    "TestConnection",
    "GetLastDeployTime",
    "DiscoverHierarchy",
    "BrowseChildren",
)
"""The unary GalaxyRepository methods whose latency is measured (the stream is not)."""


class TimedGalaxy:
    """A GalaxyRepository servicer whose unary methods count and time each call."""

    def __init__(self, servicer: Any, stats: GatewayStats) -> None:
        self._servicer = servicer
        self._stats = stats

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._servicer, name)
        if name not in GALAXY_TIMED_METHODS:
            return method
        stats = self._stats

        async def timed(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code = "error"
            try:
                reply = await method(request, context)
                code = "ok"
                return reply
            except aio.AbortError:
                found = context.code()
                code = found.name.lower() if found is not None else "error"
                raise
            except asyncio.CancelledError:
                code = "cancelled"
                raise
            finally:
                stats.galaxy_request(name, code, time.perf_counter() - started)

        return timed
