"""GatewaySimulator: the whole simulated gateway as an async context manager.

It assembles the pieces (key store and interceptor, Galaxy service or an in-memory catalog,
the plant, the session manager, the servicers, health and reflection), binds the address and
exposes what a client needs: ``endpoint``, ``api_key`` and ``ca_file``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import importlib
import ipaddress
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from mxgateway._logsafe import get_logger
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim._alarms import AlarmMonitor
from mxgateway_sim._auth import ApiKeyStore, AuthInterceptor, new_key
from mxgateway_sim._bodygate import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_WAITING_CALLS_PER_KEY,
    BodyGate,
)
from mxgateway_sim._builtin import builtin_catalog
from mxgateway_sim._catalog import TagCatalog
from mxgateway_sim._faults import (
    WORKER_CRASH_MESSAGE,
    FaultInjector,
    FaultPlan,
)
from mxgateway_sim._gcpolicy import VALVE_CHECK_S, ServerGcPolicy
from mxgateway_sim._limits import DEFAULT_MAX_MESSAGE_BYTES, LIMITS, check_limits
from mxgateway_sim._plant import Plant
from mxgateway_sim._runtime import MxAccessRuntime
from mxgateway_sim._servicer import GatewayServicer, add_gateway_servicer
from mxgateway_sim._sessions import SessionManager, SessionOptions
from mxgateway_sim._simconfig import SimSettings
from mxgateway_sim._simruntime import DEFAULT_USERS, SimulatedRuntime, SimUser
from mxgateway_sim._stats import GatewayStats, TimedGalaxy
from mxgateway_sim._tls import TlsFiles, ensure_self_signed
from mxgateway_sim._workerclient import WorkerSettings
from mxgateway_sim._workers import ISOLATIONS, ProcessIsolation, SessionIsolation

if TYPE_CHECKING:
    from mxgateway_sim._opstatus import EventRates, GatewayStatus

log = get_logger("mxgateway_sim")

TlsMode = Literal["self-signed"] | tuple[str | Path, str | Path] | None
"""None = plaintext, ``"self-signed"`` = generated CA + cert in ``tls_dir``, or (cert, key)."""

GATEWAY_SERVICE = "mxaccess_gateway.v1.MxAccessGateway"
GALAXY_SERVICE = "galaxy_repository.v1.GalaxyRepository"
MAX_MESSAGE_BYTES = DEFAULT_MAX_MESSAGE_BYTES
"""Default gRPC message limit (``SessionOptions.max_message_bytes``, ``--max-message-bytes``)."""
DEFAULT_MAX_SESSIONS = 64
# Shortest client ping interval the server tolerates on a stream with no data.
KEEPALIVE_MIN_PING_MS = 5_000
DEFAULT_IDLE_TIMEOUT_S = 300.0
"""A connection with no call in progress for this long is closed (GOAWAY; clients reconnect)."""
DEFAULT_HEADER_TIMEOUT_S = 10.0
"""A new connection must finish its TLS and HTTP/2 handshake (preface, SETTINGS) in time."""


COUNT_LIMIT_FLAGS: tuple[tuple[str, str], ...] = (
    ("--max-sessions", "max_sessions"),
    ("--max-sessions-per-key", "max_sessions_per_key"),
    ("--lease-seconds", "lease_s"),
    ("--max-pending-commands", "max_pending_commands"),
    ("--command-timeout-seconds", "command_timeout_s"),
    ("--event-queue-size", "event_queue_limit"),
    ("--overflow-policy", "overflow_policy"),
    ("--max-subscribers", "max_subscribers"),
    ("--replay-ring-size", "replay_ring_size"),
    ("--replay-ring-seconds", "replay_ring_age_s"),
    ("--closed-session-memory", "closed_memory"),
    ("--closed-session-seconds", "closed_memory_s"),
)
"""``mxgw-sim serve`` flags of the ``SessionOptions`` limits other than the byte limits
(those are in ``_limits.LIMITS``); the status page lists both."""


REGISTERED_METHODS = frozenset({"/grpc.health.v1.Health/Check"})
"""The methods registered with gRPC core (the others are served through generic handlers).

gRPC core queues the calls of a registered method apart from the others, so a flood of
other calls cannot hold up a health check. But grpc.aio's server waits for the next call of
every registered method and of the rest at once (``asyncio.wait`` over one future each),
and pays for that on every call it accepts: about 6,400 instructions per registered method
(callgrind), so registering the eight health and Galaxy methods the generated code
registers cost each unary call ~51k instructions, a sixth of a bare grpc.aio call. Only
the health check, which a load balancer polls while the gateway may be flooded, keeps it."""


class _RegisterOnly:
    """Hands a generated ``add_*Servicer_to_server`` a server that registers with gRPC core
    only the methods in :data:`REGISTERED_METHODS`; every method is still served (the
    generated code adds a generic handler for all of them as well)."""

    def __init__(self, server: aio.Server) -> None:
        self._server = server

    @classmethod
    def wrap(cls, server: aio.Server) -> aio.Server:
        """``server`` wrapped, typed as the server the generated code expects (it calls
        only the two methods below)."""
        return cast("aio.Server", cls(server))

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        chosen = {m: h for m, h in handlers.items() if f"/{service}/{m}" in REGISTERED_METHODS}
        if chosen:
            self._server.add_registered_method_handlers(service, chosen)  # type: ignore[attr-defined]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BindError(OSError):
    """The listen address cannot be bound (in use, or not an address of this host)."""


def _port_taken(host: str, port: int) -> bool:
    """True when ``host:port`` is already bound (so gRPC core is not asked, and does not
    print its own error line to stderr). Port 0 is never taken; unresolvable hosts are left
    to gRPC, whose failure is reported as :class:`BindError` too."""
    if port == 0:
        return False
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


class GatewaySimulator:
    """A real ``grpc.aio`` MXAccess Gateway whose MXAccess runtime is simulated.

    ``async with GatewaySimulator() as sim:`` binds ``127.0.0.1`` on a free port; connect to
    ``sim.endpoint`` with ``authorization: Bearer {sim.api_key}`` (and ``sim.ca_file`` as the
    root certificate when TLS is on).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Sequence[str] | None = None,
        key_store: ApiKeyStore | None = None,
        allow_anonymous: bool = False,
        tls: TlsMode = None,
        tls_dir: Path | None = None,
        catalog: TagCatalog | None = None,
        galaxy_db: Path | None = None,
        galaxy_objects: int | None = None,
        galaxy_poll_interval: float = 2.0,
        galaxy_page_bytes: int | None = None,
        galaxy_source: Any = None,
        seed: int = 0,
        scan_interval_ms: int = 200,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        session_options: SessionOptions | None = None,
        flaky_one_in: int | None = None,
        faults: FaultPlan | None = None,
        users: Sequence[SimUser] = DEFAULT_USERS,
        runtime_factory: Callable[[Plant], MxAccessRuntime] | None = None,
        tune_gc: bool = True,
        gc_tenure: bool = False,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        max_waiting_calls_per_key: int = DEFAULT_MAX_WAITING_CALLS_PER_KEY,
        session_isolation: SessionIsolation = "inline",
        worker_settings: WorkerSettings | None = None,
        metrics_listen: tuple[str, int] | None = None,
        metrics_allow_remote: bool = False,
    ) -> None:
        if (
            metrics_listen is not None
            and not metrics_allow_remote
            and not is_loopback(metrics_listen[0])
        ):
            raise ValueError(
                f"--metrics-listen {metrics_listen[0]} is not a loopback address; the "
                "metrics and status page have no authentication: add "
                "--metrics-allow-remote to serve them on the network"
            )
        self._metrics_listen = metrics_listen
        self._ops: Any = None
        self.stats = GatewayStats()
        """Operating counters (kept across :meth:`restart`); read by the metrics endpoint."""
        self.runtime_name = (
            "simulated"
            if runtime_factory is None
            else getattr(runtime_factory, "runtime_name", "custom")
        )
        """What runs the sessions' MXAccess (``simulated``, ``mxaccess``; the status page)."""
        self._host = host
        self._port = port
        self._store = key_store or ApiKeyStore(allow_anonymous=allow_anonymous)
        if allow_anonymous:
            self._store.allow_anonymous = True
        keys = list(api_keys) if api_keys is not None else []
        if api_keys is None and key_store is None and not allow_anonymous:
            keys = [new_key()]
        for key in keys:
            self._store.add(key)
        self._keys = keys
        self._tls = tls
        self._tls_dir = tls_dir
        self._catalog = catalog
        self._galaxy_db = galaxy_db
        self._galaxy_objects = galaxy_objects
        self._galaxy_poll = galaxy_poll_interval
        self._galaxy_page_bytes = galaxy_page_bytes
        self._galaxy_source = galaxy_source
        """A ``mxgateway_sim.galaxy.GalaxySource`` (a real ZB on SQL Server) instead of the
        SQLite file; None: the SQLite Galaxy."""
        self._seed = seed
        self._scan_ms = scan_interval_ms
        plan = faults or FaultPlan()
        if flaky_one_in is not None:  # the older keyword: the plan's quality faults
            plan = dataclasses.replace(plan, quality_flaky_one_in=flaky_one_in)
        self.faults = FaultInjector(plan)
        """The fault plan in force and its counters (``sim.faults.replace(plan)`` switches)."""
        self._users = tuple(users)
        self._runtime_factory = runtime_factory
        self._tune_gc = tune_gc
        self._gc_tenure = tune_gc and gc_tenure
        """Freeze what survives a collection, and check the valve (a full collection when
        the frozen objects grew) every ``VALVE_CHECK_S`` (``mxgw-sim serve``;
        ``mxgateway_sim._gcpolicy``)."""
        self._gc_valve: asyncio.TimerHandle | None = None
        self._gc_valve_task: asyncio.Task[None] | None = None
        self._idle_timeout_ms = max(1, int(idle_timeout_s * 1000))
        self._header_timeout_ms = max(1, int(header_timeout_s * 1000))
        self.body_gate = BodyGate(body_timeout_s, max_waiting_calls_per_key, self.stats)
        """Bounds each call's wait for its first request message (``--body-timeout-seconds``,
        ``--max-waiting-calls-per-key``)."""
        self._gc_tuned = False
        if session_isolation not in ISOLATIONS:
            raise ValueError(f"session_isolation must be one of {', '.join(ISOLATIONS)}")
        if session_isolation == "process" and runtime_factory is not None:
            raise ValueError(
                "runtime_factory runs in the gateway; it needs session_isolation inline"
            )
        self.session_isolation: SessionIsolation = session_isolation
        self._workers = ProcessIsolation(worker_settings or WorkerSettings())
        if session_isolation == "process":
            self.runtime_name = self._workers.settings.runtime
        if session_options is None:
            session_options = SessionOptions(max_sessions=max_sessions)
        elif max_sessions != DEFAULT_MAX_SESSIONS:
            session_options = dataclasses.replace(session_options, max_sessions=max_sessions)
        self._options = session_options
        self._server: aio.Server | None = None
        self._galaxy: Any = None
        self._health: health_aio.HealthServicer | None = None
        self._bound_port = 0
        self._tls_files: TlsFiles | None = None
        self.plant: Plant | None = None
        self.sessions: SessionManager | None = None
        self.alarms: AlarmMonitor | None = None
        self.galaxy_available = False
        self._stopping = False

    # -- what clients need ----------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``host:port`` actually bound (``[::1]:port`` for IPv6 hosts)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._bound_port}"

    @property
    def api_key(self) -> str | None:
        """The first configured plain key (every scope but admin; None without one)."""
        return self._keys[0] if self._keys else None

    @property
    def ca_file(self) -> Path | None:
        """CA certificate to trust (self-signed TLS only)."""
        return self._tls_files.ca if self._tls_files else None

    @property
    def metrics_endpoint(self) -> str | None:
        """``host:port`` of the metrics and status page listener (None: not enabled)."""
        return self._ops.endpoint if self._ops is not None else None

    @property
    def health(self) -> str:
        """``serving``, ``stopping`` (graceful shutdown under way) or ``stopped``."""
        if self._stopping:
            return "stopping"
        return "stopped" if self._server is None else "serving"

    @property
    def galaxy_backend(self) -> str:
        """What serves the Galaxy Repository (the status page)."""
        if self._catalog is not None:
            return "none (in-memory tag catalog)"
        if self._galaxy is None:
            return "none (built-in demo plant)"
        if self._galaxy_source is not None:
            return "SQL Server (ZB)"
        return "SQLite"

    @property
    def galaxy_deploys(self) -> int | None:
        """Deploys detected since start (None without a Galaxy service)."""
        if self._galaxy is None:
            return None
        return max(0, int(self._galaxy.sequence) - 1)

    @property
    def galaxy_watchers(self) -> int:
        """Open WatchDeployEvents streams."""
        return int(self._galaxy.watcher_count) if self._galaxy is not None else 0

    def limits_in_force(self) -> list[tuple[str, str]]:
        """(flag, value) of every session and byte limit, as ``mxgw-sim serve`` spells it."""
        options = self._options
        pairs: list[tuple[str, str]] = []
        for flag, name in COUNT_LIMIT_FLAGS:
            value = getattr(options, name)
            pairs.append((flag, str(getattr(value, "value", value))))
        pairs.extend((limit.flag, str(getattr(options, limit.field))) for limit in LIMITS)
        pairs.append(("--idle-timeout-seconds", f"{self._idle_timeout_ms / 1000:g}"))
        pairs.append(("--header-timeout-seconds", f"{self._header_timeout_ms / 1000:g}"))
        pairs.append(("--body-timeout-seconds", f"{self.body_gate.timeout_s:g}"))
        pairs.append(("--max-waiting-calls-per-key", str(self.body_gate.max_waiting_per_key)))
        return pairs

    def status(self, rates: EventRates | None = None) -> GatewayStatus:
        """The gateway's status now (what the status page shows and the scrape exports)."""
        from mxgateway_sim._opstatus import snapshot

        return snapshot(self, rates)

    @property
    def tls_mode(self) -> str:
        """``plaintext``, ``self-signed`` or ``files``."""
        if self._tls is None:
            return "plaintext"
        return "self-signed" if self._tls == "self-signed" else "files"

    # -- life cycle ------------------------------------------------------------------------

    async def __aenter__(self) -> GatewaySimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _open_catalog(self) -> TagCatalog:
        if self._catalog is not None:
            return self._catalog
        try:
            galaxy: Any = importlib.import_module("mxgateway_sim.galaxy")
            service = galaxy.GalaxyService
        except (ImportError, AttributeError):
            log.info("mxgateway_sim.galaxy is not available; using the built-in demo catalog")
            return builtin_catalog()
        extra: dict[str, Any] = {}
        if self._galaxy_page_bytes is not None:  # else the Galaxy layer's default
            extra["page_bytes"] = self._galaxy_page_bytes
        if self._galaxy_source is not None:
            extra["source"] = self._galaxy_source
        self._galaxy = await service.open(
            self._galaxy_db,
            objects=self._galaxy_objects,
            seed=self._seed,
            poll_interval=self._galaxy_poll,
            **extra,
        )
        self.galaxy_available = True
        catalog: TagCatalog = self._galaxy.catalog
        return catalog

    async def start(self) -> None:
        """Bind, start serving and start the scan clock."""
        if self._server is not None:
            return
        if not len(self._store) and not self._store.allow_anonymous:
            raise ValueError("no API key configured; pass api_keys or allow_anonymous=True")
        check_limits(self._options.max_message_bytes, self._options.max_value_bytes)
        catalog = await self._open_catalog()
        try:
            await self._serve(catalog)
        except BaseException:
            if self._galaxy is not None:
                galaxy, self._galaxy = self._galaxy, None
                await galaxy.close()
            raise

    async def _serve(self, catalog: TagCatalog) -> None:
        plant = self.plant = Plant(
            catalog,
            seed=self._seed,
            scan_interval_ms=self._scan_ms,
            flaky_one_in=self.faults.plan.quality_flaky_one_in,
        )
        factory = self._runtime_factory
        users = self._users
        options = self._options

        sim_settings = SimSettings(
            seed=self._seed,
            scan_interval_ms=self._scan_ms,
            flaky_one_in=plant.flaky_one_in,
            max_items=options.max_items_per_session,
            reference_cache_bytes=options.reference_cache_bytes,
            read_cache_bytes=options.read_cache_bytes,
            first_value_delay_s=options.first_value_delay_s,
            # A buffered batch goes out early rather than outgrow a message.
            max_batch_bytes=options.max_message_bytes // 2,
        )
        if self.session_isolation == "process":
            self._workers.prepare(plant, users, sim_settings)
            self._workers.start_pool()

        def make_runtime() -> MxAccessRuntime:
            if self.session_isolation == "process":
                return self._workers.runtime()
            if factory is not None:
                return factory(plant)
            return sim_settings.runtime(plant, users)

        self.sessions = SessionManager(make_runtime, self._options, self.stats)
        self.faults.sessions = self.sessions
        server = aio.server(
            # One interceptor: the key of each call before its body is read, and the
            # fault plan's per-call faults.
            interceptors=[
                AuthInterceptor(self._store, self.stats, hook=self.faults, gate=self.body_gate)
            ],
            options=[
                ("grpc.max_send_message_length", options.max_message_bytes),
                ("grpc.max_receive_message_length", options.max_message_bytes),
                # Accept client keepalive pings on quiet streams (the client pings every
                # 30 s by default); gRPC's server default would answer "too many pings"
                # and drop a quiet event stream after a couple of minutes.
                ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MIN_PING_MS),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_ping_strikes", 0),
                # Exclusive port: without this, gRPC sets SO_REUSEPORT and a second server
                # on a busy port starts "fine" and takes half of the calls.
                ("grpc.so_reuseport", 0),
                # Hygiene against idle and half-open connections.
                ("grpc.max_connection_idle_ms", self._idle_timeout_ms),
                ("grpc.server_handshake_timeout_ms", self._header_timeout_ms),
            ],
        )
        self.alarms = AlarmMonitor(plant)
        timed = self._metrics_listen is not None
        add_gateway_servicer(
            GatewayServicer(
                self.sessions,
                self.alarms,
                self.faults,
                self.stats,
                timed=timed,
                body_gate=self.body_gate,
            ),
            server,
        )
        services = [GATEWAY_SERVICE]
        if self._galaxy is not None:
            from mxgateway.generated import galaxy_repository_pb2_grpc

            galaxy_servicer = self._galaxy.servicer
            if timed:
                galaxy_servicer = TimedGalaxy(galaxy_servicer, self.stats)
            galaxy_repository_pb2_grpc.add_GalaxyRepositoryServicer_to_server(
                galaxy_servicer, _RegisterOnly.wrap(server)
            )
            services.append(GALAXY_SERVICE)
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, _RegisterOnly.wrap(server))
        # What reflection.enable_server_reflection does for an aio server, through the
        # wrapper (which that function would take for a synchronous server).
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]  # in its __all__
                [
                    pb.DESCRIPTOR.services_by_name["MxAccessGateway"].full_name,
                    *services[1:],
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ]
            ),
            _RegisterOnly.wrap(server),
        )
        address = f"{self._host}:{self._port}"
        credentials = None
        if self._tls is not None:
            if self._tls == "self-signed":
                directory = self._tls_dir or Path(tempfile.mkdtemp(prefix="mxgw-sim-tls-"))
                self._tls_files = ensure_self_signed(directory)
            else:
                cert, key = self._tls
                self._tls_files = TlsFiles(Path(cert), Path(key))
            # Checked here so a bad file is reported as such, not as "Failed to bind".
            credentials = grpc.ssl_server_credentials([self._tls_files.read()])
        try:
            if _port_taken(self._host, self._port):
                raise RuntimeError("the port is in use")
            if credentials is None:
                self._bound_port = server.add_insecure_port(address)
            else:
                self._bound_port = server.add_secure_port(address, credentials)
        except RuntimeError:  # grpc: "Failed to bind to address ..."
            self._bound_port = 0
        if not self._bound_port:
            raise BindError(
                f"cannot listen on {address}: the port is in use or the address is not "
                "one of this host's"
            )
        ops = None
        if self._metrics_listen is not None:
            ops = await self._start_ops(*self._metrics_listen)
        try:
            await server.start()
        except BaseException:
            if ops is not None:
                await ops.stop()
            raise
        self._ops = ops
        self._stopping = False
        self._server = server
        for name in ("", *services):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        plant.start()
        self.sessions.start()
        if self._tune_gc:
            ServerGcPolicy.acquire(
                tenure=self._gc_tenure, held=self._gc_held, hide=self._gc_held_objects
            )
            self._gc_tuned = True
            if self._gc_tenure and ServerGcPolicy.tenuring():
                self._schedule_gc_valve()
        log.info("mxgw-sim listening on %s (%s)", self.endpoint, self.tls_mode)

    def _schedule_gc_valve(self) -> None:
        self._gc_valve = asyncio.get_running_loop().call_later(VALVE_CHECK_S, self._run_gc_valve)

    def _gc_held(self) -> int:
        """Tracked objects this simulator holds alive on purpose (the GC policy's valve does
        not count them as growth): the plant's attribute models and samples, and each
        in-process session's items, parsed references and cached read rows."""
        held = 0 if self.plant is None else self.plant.tracked_objects()
        if self.sessions is not None:
            for session in self.sessions.sessions():
                if isinstance(session.runtime, SimulatedRuntime):
                    held += session.runtime.tracked_objects()
        return held

    def _gc_held_objects(self) -> list[object]:
        """The objects :meth:`_gc_held` counts (and their containers): the valve's full
        collection does not walk them."""
        objects = [] if self.plant is None else self.plant.held_objects()
        if self.sessions is not None:
            for session in self.sessions.sessions():
                if isinstance(session.runtime, SimulatedRuntime):
                    objects += session.runtime.held_objects()
        return objects

    def _run_gc_valve(self) -> None:
        """The valve's timer: its check runs as a task (a full collection takes turns)."""
        self._gc_valve = None
        self._gc_valve_task = asyncio.get_running_loop().create_task(self._gc_valve_check())

    async def _gc_valve_check(self) -> None:
        """Tenure's valve: a full collection when the frozen objects grew (the garbage
        tenured objects may hold; the loop held a slice at a time), logged either way."""
        t0 = time.perf_counter()
        check = await ServerGcPolicy.valve_sliced()
        if check.found is None:
            log.info(
                "garbage collection check: %d tracked objects, %d of them held by items and "
                "attribute models (of the others, fewest since the last full collection %d): "
                "no full collection",
                check.frozen,
                check.held,
                check.low,
            )
        else:
            log.info(
                "full garbage collection: %d unreachable objects, over %.0f ms (tracked objects "
                "%d, %d of them held by items and attribute models, of the others fewest "
                "since the last full collection %d; %d frozen after)",
                check.found,
                (time.perf_counter() - t0) * 1000,
                check.frozen,
                check.held,
                check.low,
                check.frozen_after,
            )
        self._schedule_gc_valve()

    async def _start_ops(self, host: str, port: int) -> Any:
        try:
            from mxgateway_sim._opsserver import OpsServer
        except ImportError:
            raise ValueError(
                "--metrics-listen needs the prometheus-client package: "
                "pip install 'mxaccess-gateway-client[sim]'"
            ) from None
        ops = OpsServer(self.status, host, port)
        try:
            await ops.start()
        except OSError as exc:
            raise BindError(
                f"cannot listen on {host}:{port} for metrics: {exc.strerror or exc}"
            ) from None
        # A restart listens on the same port again.
        self._metrics_listen = (host, ops.bound_port)
        return ops

    async def restart(self, grace: float | None = 0.5, downtime_s: float = 0.0) -> None:
        """Stop gracefully and start again on the same port, as a real gateway restart does.

        Sessions, their handles and event logs are lost (streams get SERVER_SHUTDOWN, then
        UNAVAILABLE); keys, TLS material, the plant seed and the fault plan are kept.
        """
        port = self._bound_port
        await self.stop(grace)
        if downtime_s > 0:
            await asyncio.sleep(downtime_s)
        self._port = port
        await self.start()

    def fault_session(self, session_id: str, message: str = WORKER_CRASH_MESSAGE) -> bool:
        """Fault a session as if its worker crashed (FAULTED; streams get SESSION_FAULTED).

        Returns False when there is no such session.
        """
        return self.faults.crash(session_id, message)

    async def stop(self, grace: float | None = 2.0) -> None:
        """Graceful stop: streams get SERVER_SHUTDOWN, sessions close, then the server stops."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True  # the status page says "stopping" meanwhile
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        assert self.sessions is not None and self.plant is not None
        # The sessions close side by side: a worker gets its shutdown timeout to acknowledge
        # and as long again to exit; whatever is left then is killed.
        bound = 2 * self._workers.settings.shutdown_timeout_s
        await self.sessions.shutdown(bound)
        if self.alarms is not None:
            self.alarms.close()
        await server.stop(grace)
        await self.sessions.shutdown(bound)  # anything opened during the grace period
        await self._workers.stop_pool()
        self._stopping = False
        ops, self._ops = self._ops, None
        if ops is not None:
            await ops.stop()
        await self.plant.stop()
        if self._gc_valve is not None:
            self._gc_valve.cancel()
            self._gc_valve = None
        task, self._gc_valve_task = self._gc_valve_task, None
        if task is not None and not task.done():
            task.cancel()  # a sliced full collection gives back what it hid
            await asyncio.wait({task})  # not awaited: as the plant's clock (Plant.stop)
            if not task.cancelled():
                task.result()
        if self._gc_tuned:
            self._gc_tuned = False
            ServerGcPolicy.release(
                tenure=self._gc_tenure, held=self._gc_held, hide=self._gc_held_objects
            )
        if self._galaxy is not None:
            galaxy, self._galaxy = self._galaxy, None
            await galaxy.close()
        self._workers.cleanup()
