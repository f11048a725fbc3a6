"""One consistent view of a running gateway for the status page and the metrics endpoint.

Taken on the event loop (so no session changes half-way through), from the counters of
:mod:`mxgateway_sim._stats` and the open sessions. Per-session figures (id prefix, client
name, queue depth) are for the status page only; the metrics export aggregates them, so no
session id ever becomes a metric label.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mxgateway._version import __version__
from mxgateway_sim._oplog import session_prefix
from mxgateway_sim._stats import EventTotals, FaultRecord, GatewayStats

if TYPE_CHECKING:
    from mxgateway_sim._server import GatewaySimulator
    from mxgateway_sim._sessions import Session

__all__ = ["EventRates", "GatewayStatus", "SessionRow", "snapshot"]

RATE_WINDOW_S = 2.0
"""A session's event rate is measured over at least this long (between two snapshots)."""


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One open session as the status page shows it (``client_name`` is raw: escape it)."""

    prefix: str
    key_id: str
    client_name: str
    age_s: float
    items: int | None
    events: int
    event_rate: float | None
    queue_events: int
    queue_bytes: int
    ring_bytes: int
    subscribers: int
    pending: int
    state: str
    worker_pid: int


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """Everything the status page and the scrape need, at one instant."""

    health: str
    version: str
    started: float
    uptime_s: float
    endpoint: str
    tls: str
    runtime: str
    isolation: str
    galaxy: str
    galaxy_deploys: int | None
    galaxy_watchers: int
    sessions: list[SessionRow]
    sessions_by_key: dict[str, int]
    workers_alive: int
    events: EventTotals
    faults: list[FaultRecord]
    limits: list[tuple[str, str]]
    stats: GatewayStats = field(repr=False)
    scan: dict[str, float] = field(default_factory=dict)
    """The plant's scan clock (``Plant.scan_stats()``: scans, late and skipped scans)."""


class EventRates:
    """Events per second of each session, from the event count seen at earlier snapshots."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, int, float | None]] = {}

    def rate(self, session_id: str, events: int, now: float) -> float | None:
        """The session's rate over the last window (None until there are two samples)."""
        seen = self._seen.get(session_id)
        if seen is None:
            self._seen[session_id] = (now, events, None)
            return None
        when, count, rate = seen
        if now - when >= RATE_WINDOW_S:
            rate = (events - count) / (now - when)
            self._seen[session_id] = (now, events, rate)
        return rate

    def keep(self, session_ids: set[str]) -> None:
        """Forget the sessions that closed."""
        for gone in self._seen.keys() - session_ids:
            del self._seen[gone]


def _row(session: Session, now: float, rates: EventRates) -> SessionRow:
    log = session.events
    depth, queued = log.queue_usage()
    events = log.next_seq - 1
    items = getattr(session.runtime, "item_count", None)
    return SessionRow(
        prefix=session_prefix(session.id),
        key_id=session.owner,
        client_name=session.name,
        age_s=max(0.0, now - session.opened_at),
        items=items if isinstance(items, int) else None,
        events=events,
        event_rate=rates.rate(session.id, events, time.monotonic()),
        queue_events=depth,
        queue_bytes=queued,
        ring_bytes=log.ring_bytes,
        subscribers=len(log.subscribers),
        pending=session.pending,
        state=session.state.name.lower(),
        worker_pid=int(getattr(session.runtime, "pid", 0) or 0),
    )


def snapshot(sim: GatewaySimulator, rates: EventRates | None = None) -> GatewayStatus:
    """The gateway's status now."""
    now = time.time()
    rates = rates or EventRates()
    manager = sim.sessions
    open_sessions = manager.sessions() if manager is not None else []
    rows = [_row(s, now, rates) for s in open_sessions]
    rates.keep({s.id for s in open_sessions})
    by_key: dict[str, int] = {}
    for s in open_sessions:
        by_key[s.owner] = by_key.get(s.owner, 0) + 1
    stats = sim.stats
    return GatewayStatus(
        health=sim.health,
        version=__version__,
        started=stats.started,
        uptime_s=max(0.0, now - stats.started),
        endpoint=sim.endpoint,
        tls=sim.tls_mode,
        runtime=sim.runtime_name,
        isolation=sim.session_isolation,
        galaxy=sim.galaxy_backend,
        galaxy_deploys=sim.galaxy_deploys,
        galaxy_watchers=sim.galaxy_watchers,
        sessions=rows,
        sessions_by_key=by_key,
        workers_alive=sum(1 for r in rows if r.worker_pid and r.state not in ("faulted", "closed")),
        events=stats.events(open_sessions),
        faults=list(stats.faults),
        limits=sim.limits_in_force(),
        stats=stats,
        scan=sim.plant.scan_stats() if sim.plant is not None else {},
    )
