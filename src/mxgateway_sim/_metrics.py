"""The gateway's Prometheus metrics (``prometheus-client``, the ``[sim]`` extra).

One custom collector turns a :class:`~mxgateway_sim._opstatus.GatewayStatus`, taken when
Prometheus scrapes, into metric families: nothing is recorded through the library while the
gateway works (see :mod:`mxgateway_sim._stats`). Names carry their unit (``_seconds``,
``_bytes``, ``_total``); labels come from bounded sets (key ids, command kinds, status
codes, a few reasons), never session ids or tag names. The process's CPU and memory come
from the library's process collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from mxgateway_sim._opstatus import GatewayStatus
from mxgateway_sim._stats import FAULT_CAUSES, Histogram

__all__ = ["GatewayCollector", "MetricsExporter"]

CLOSE_REASONS = ("closed", "lease_expired", "shutdown")
AUTHENTICATION_REASONS = ("missing_key", "invalid_key")
AUTHORIZATION_REASONS = ("method_scope", "command_scope", "not_owner")
SESSION_LIMITS = ("max_sessions", "max_sessions_per_key")
STALLED_CALL_REASONS = ("body_timeout", "waiting_limit")


def _counter(
    name: str, doc: str, label: str, values: Mapping[str, int], always: Iterable[str] = ()
) -> CounterMetricFamily:
    """A counter by one label; the ``always`` values are exported at 0 before they happen
    (so ``rate()`` and ``increase()`` see the first one)."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for value in sorted({*always, *values}):
        family.add_metric([value], values.get(value, 0))
    return family


def _counter2(
    name: str, doc: str, labels: tuple[str, str], values: Mapping[tuple[str, str], int]
) -> CounterMetricFamily:
    """A counter by two labels (only the pairs seen so far)."""
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for pair, count in sorted(values.items()):
        family.add_metric(list(pair), count)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histograms(
    name: str, doc: str, label: str, histograms: Mapping[str, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, histogram in sorted(histograms.items()):
        family.add_metric([value], histogram.cumulative(), histogram.total)
    return family


class GatewayCollector(Collector):
    """Exports a gateway's status (``source()`` is called on every scrape)."""

    def __init__(self, source: Callable[[], GatewayStatus]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        st = self._source()
        stats = st.stats
        info = GaugeMetricFamily(
            "mxgw_build_info",
            "Version, runtime, session isolation and Galaxy backend of the gateway (always 1)",
            labels=["version", "runtime", "isolation", "galaxy"],
        )
        info.add_metric([st.version, st.runtime, st.isolation, st.galaxy], 1)
        yield info
        yield _gauge(
            "mxgw_up", "1 while the gateway serves, 0 while it stops", st.health == "serving"
        )
        yield _gauge(
            "mxgw_start_time_seconds", "Start of the gateway, seconds since the epoch", st.started
        )

        # sessions
        open_by_key = GaugeMetricFamily(
            "mxgw_sessions_open", "Open sessions by the key id that opened them", labels=["key_id"]
        )
        for key_id, count in sorted(st.sessions_by_key.items()):
            open_by_key.add_metric([key_id], count)
        yield open_by_key
        yield CounterMetricFamily(
            "mxgw_sessions_opened", "Sessions opened", value=stats.sessions_opened
        )
        yield _counter(
            "mxgw_sessions_closed",
            "Sessions closed, by reason (CloseSession, lease expiry, shutdown)",
            "reason",
            stats.sessions_closed,
            CLOSE_REASONS,
        )
        yield _counter(
            "mxgw_sessions_faulted",
            "Sessions faulted, by cause (event queue overflow under fail-fast, worker lost, "
            "fault injection, other)",
            "cause",
            stats.sessions_faulted,
            FAULT_CAUSES,
        )
        yield _counter(
            "mxgw_session_limit_refusals",
            "OpenSession calls refused by a session limit",
            "limit",
            stats.session_limit_refusals,
            SESSION_LIMITS,
        )
        yield _gauge(
            "mxgw_workers_alive",
            "Worker processes serving open sessions (process isolation; 0 inline)",
            st.workers_alive,
        )
        yield CounterMetricFamily(
            "mxgw_workers_lost",
            "Worker processes lost (each faulted its session; workers are not restarted: the "
            "client opens a new session)",
            value=stats.sessions_faulted.get("worker_lost", 0),
        )

        # commands
        yield _counter2(
            "mxgw_commands",
            "Invoke commands by kind and the protocol status they answered",
            ("kind", "status"),
            stats.commands,
        )
        yield _histograms(
            "mxgw_command_duration_seconds",
            "Time from an Invoke's arrival to its reply, by command kind",
            "kind",
            stats.command_latency,
        )

        # events
        ev = st.events
        for name, doc, value in (
            ("mxgw_events_raised", "Events the sessions' runtimes raised", ev.raised),
            ("mxgw_events_delivered", "Events sent on event streams", ev.delivered),
            ("mxgw_events_drained", "Events returned by DrainEvents", ev.drained),
            (
                "mxgw_events_dropped",
                "Events dropped from overflowing subscriber queues",
                ev.dropped,
            ),
            (
                "mxgw_event_overflow_disconnects",
                "Subscribers disconnected for overflow (disconnect-subscriber policy)",
                ev.overflow_disconnects,
            ),
            (
                "mxgw_event_gaps",
                "Replay-gap notices sent (resume from before the replay ring, event too large)",
                ev.gaps,
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        for name, doc, value in (
            ("mxgw_event_queue_events", "Events waiting in subscriber queues", ev.queue_events),
            ("mxgw_event_queue_bytes", "Bytes waiting in subscriber queues", ev.queue_bytes),
            (
                "mxgw_event_queue_bytes_max",
                "Bytes waiting in the fullest session's subscriber queues",
                ev.queue_bytes_max,
            ),
            (
                "mxgw_replay_ring_events",
                "Events held in the sessions' replay rings",
                ev.ring_events,
            ),
            ("mxgw_replay_ring_bytes", "Bytes held in the sessions' replay rings", ev.ring_bytes),
            (
                "mxgw_replay_ring_bytes_max",
                "Bytes held in the largest session's replay ring",
                ev.ring_bytes_max,
            ),
        ):
            yield _gauge(name, doc, value)

        # the plant's scan clock: late scans mean values change less often than the scan
        scan = st.scan
        if scan:
            for name, doc, key in (
                ("mxgw_plant_scans", "Scan ticks of the simulated plant", "scans"),
                (
                    "mxgw_plant_late_scans",
                    "Scan ticks that started late (the plant could not keep its scan)",
                    "late_scans",
                ),
                (
                    "mxgw_plant_skipped_scans",
                    "Scan intervals that passed without a tick because the plant was late",
                    "skipped_scans",
                ),
            ):
                yield CounterMetricFamily(name, doc, value=scan.get(key, 0))
            yield _gauge(
                "mxgw_plant_max_behind_seconds",
                "The longest a scan tick started after its due time",
                scan.get("max_behind_ms", 0.0) / 1000,
            )

        # security
        yield _counter(
            "mxgw_authentication_failures",
            "Calls refused UNAUTHENTICATED, by reason",
            "reason",
            stats.authentication_failures,
            AUTHENTICATION_REASONS,
        )
        yield _counter(
            "mxgw_authorization_failures",
            "Calls refused for a missing scope (method or command kind) or another key's session",
            "reason",
            stats.authorization_failures,
            AUTHORIZATION_REASONS,
        )
        yield _counter(
            "mxgw_stalled_calls",
            "Calls ended because their first request message did not come, by reason",
            "reason",
            stats.stalled_calls,
            STALLED_CALL_REASONS,
        )

        # Galaxy
        yield _counter2(
            "mxgw_galaxy_requests",
            "GalaxyRepository calls by method and gRPC code",
            ("method", "code"),
            stats.galaxy_requests,
        )
        yield _histograms(
            "mxgw_galaxy_request_duration_seconds",
            "GalaxyRepository call latency by method",
            "method",
            stats.galaxy_latency,
        )
        if st.galaxy_deploys is not None:
            yield CounterMetricFamily(
                "mxgw_galaxy_deploys", "Galaxy deploys detected", value=st.galaxy_deploys
            )
        yield _gauge(
            "mxgw_galaxy_deploy_watchers", "Open WatchDeployEvents streams", st.galaxy_watchers
        )

        # limits in force, for ratios in alert rules
        limits = GaugeMetricFamily(
            "mxgw_limit", "Numeric limits in force, by mxgw-sim serve flag", labels=["flag"]
        )
        for flag, setting in st.limits:
            try:
                limits.add_metric([flag], float(setting))
            except ValueError:  # a policy name, not a number
                continue
        yield limits


class MetricsExporter:
    """A registry with the gateway collector and the process and platform collectors."""

    def __init__(self, source: Callable[[], GatewayStatus]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(source))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition in the format the scraper accepts, and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
