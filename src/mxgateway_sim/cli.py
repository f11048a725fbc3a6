"""``mxgw-gateway`` / ``mxgw-sim``: run the gateway, create API keys, simulate a Galaxy redeploy.

``mxgw-gateway serve --runtime simulated|mxaccess`` runs the gateway with either MXAccess
runtime; ``mxgw-sim`` is the same program, its short form for the simulated runtime (the
default of both). ``--session-isolation process`` runs each session's runtime in its own
``mxgw-worker`` process.

``serve`` prints exactly one line once it is listening (JSON with ``--json``) and flushes, so
scripts can wait for it; SIGINT/SIGTERM stop it gracefully (streams get SERVER_SHUTDOWN,
sessions are closed) and it exits 0. Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import json
import os
import signal
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from mxgateway._logsafe import get_logger
from mxgateway._secret import NoEchoArgumentParser, env_secret_missing, unreadable_file
from mxgateway_sim._auth import (
    DEFAULT_KEY_SCOPES,
    SCOPES,
    ApiKeyStore,
    KeyFormatError,
    load_keys_file,
    new_key,
)
from mxgateway_sim._auth import parse_scopes as _parse_scopes
from mxgateway_sim._bodygate import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_WAITING_CALLS_PER_KEY
from mxgateway_sim._domain import VT_DATE_ZONES
from mxgateway_sim._eventloop import EVENT_LOOPS, EventLoopUnavailable, is_uvloop
from mxgateway_sim._eventloop import run as run_event_loop
from mxgateway_sim._events import OverflowPolicy
from mxgateway_sim._faults import FaultPlan, FaultPlanError
from mxgateway_sim._limits import LIMITS
from mxgateway_sim._oplog import LOG_FORMATS, configure_logging
from mxgateway_sim._server import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    BindError,
    GatewaySimulator,
    TlsMode,
)
from mxgateway_sim._sessions import SessionOptions
from mxgateway_sim._tls import TlsSetupError
from mxgateway_sim._workerclient import MAX_WORKER_POOL, WorkerSettings
from mxgateway_sim._workers import ISOLATIONS
from mxgateway_sim.worker import RUNTIMES

_log = get_logger("mxgateway_sim")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


class _Parser(NoEchoArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2.

    Flags are never abbreviated and unrecognized arguments are reported without their
    values, so a mistyped key flag cannot echo the key.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _integer(text: str) -> int:
    """``text`` as an integer (the first check of every integer flag)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _positive(text: str) -> int:
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} cannot be negative")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def _pool_size(text: str) -> int:
    value = _non_negative(text)
    if value > MAX_WORKER_POOL:
        raise argparse.ArgumentTypeError(f"{text} is over the limit of {MAX_WORKER_POOL}")
    return value


_WORKER = WorkerSettings()
PROGRAMS = ("mxgw-sim", "mxgw-gateway")
"""The two names of this program (``mxgw-sim``: the short form for the simulated runtime)."""


def build_parser(prog: str = "mxgw-sim") -> argparse.ArgumentParser:
    """The ``mxgw-sim`` (or ``mxgw-gateway``) argument parser."""
    parser = _Parser(prog=prog, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.set_defaults(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the gateway (simulated runtime by default)")
    serve.add_argument("--listen", default="127.0.0.1:5000", help="HOST:PORT (port 0 = any)")
    runtime = serve.add_argument_group("runtime")
    runtime.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="simulated",
        help="MXAccess runtime: simulated (default) or mxaccess (the COM runtime; Windows "
        "with System Platform and the [mxaccess] extra)",
    )
    runtime.add_argument(
        "--session-isolation",
        choices=ISOLATIONS,
        default="inline",
        help="inline (default): runtimes run in the gateway; process: one mxgw-worker "
        "process per session (a crash faults only its session)",
    )
    runtime.add_argument(
        "--vt-date-zone",
        choices=tuple(VT_DATE_ZONES),
        default="local",
        help="zone of MXAccess's VT_DATE timestamps and Time values (--runtime mxaccess): "
        "local (default: this host's zone) or utc (docs/protocol.md)",
    )
    runtime.add_argument(
        "--worker-python",
        type=Path,
        metavar="PATH",
        help="interpreter that runs the workers (default: this one; MXAccess needs a 32-bit one)",
    )
    for flag, default, words in (
        ("--worker-heartbeat-seconds", _WORKER.heartbeat_s, "heartbeat interval"),
        (
            "--worker-heartbeat-grace-seconds",
            _WORKER.heartbeat_grace_s,
            "a worker silent this long faults its session and is killed",
        ),
        (
            "--worker-startup-seconds",
            _WORKER.startup_timeout_s,
            "a worker must be ready in S seconds",
        ),
    ):
        runtime.add_argument(
            flag, type=_seconds, default=default, metavar="S", help=f"{words} (default {default:g})"
        )
    runtime.add_argument(
        "--worker-pool",
        type=_pool_size,
        default=_WORKER.pool_size,
        metavar="N",
        help="workers started ahead, each waiting (with no session) to be handed to a new "
        f"session (0 to {MAX_WORKER_POOL}, default {_WORKER.pool_size}; 0: start a worker "
        "with its session)",
    )
    tls = serve.add_argument_group("transport (choose one)")
    tls.add_argument("--plaintext", action="store_true", help="serve without TLS")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="server certificate chain")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="server private key")
    tls.add_argument(
        "--tls-self-signed",
        type=Path,
        metavar="DIR",
        help="create (or reuse) a CA and a localhost certificate in DIR",
    )
    keys = serve.add_argument_group("API keys")
    keys.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="key with every scope but admin (repeatable)",
    )
    keys.add_argument(
        "--api-key-env",
        action="append",
        default=[],
        metavar="NAME",
        help="key (every scope but admin) read from environment variable NAME (repeatable; "
        "keeps the key off the command line)",
    )
    keys.add_argument("--api-keys-file", type=Path, metavar="PATH", help="keys with scopes")
    keys.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="accept calls without a key (every scope but admin)",
    )
    galaxy = serve.add_argument_group("plant")
    galaxy.add_argument("--galaxy-db", type=Path, metavar="PATH", help="SQLite Galaxy Repository")
    galaxy.add_argument("--galaxy-objects", type=_positive, metavar="N", help="synthetic galaxy")
    galaxy.add_argument(
        "--galaxy-poll-seconds",
        type=_seconds,
        default=2.0,
        metavar="S",
        help="how often galaxy.time_of_last_deploy is read to detect a deploy (default 2; "
        "upstream polls a real ZB every 30)",
    )
    sql = galaxy.add_mutually_exclusive_group()
    sql.add_argument(
        "--galaxy-sql-server-env",
        metavar="NAME",
        help="serve a real Galaxy Repository on SQL Server (ZB); its connection string is in "
        "environment variable NAME (kept off the command line: it may hold a password)",
    )
    sql.add_argument(
        "--galaxy-sql-server-file",
        type=Path,
        metavar="PATH",
        help="as --galaxy-sql-server-env, the connection string read from PATH (first line)",
    )
    galaxy.add_argument(
        "--galaxy-page-bytes",
        type=_positive,
        metavar="N",
        help="most serialized bytes of the objects of one Galaxy page "
        "(default 4128768: a page fits a 4 MiB client receive limit)",
    )
    galaxy.add_argument("--seed", type=int, default=0, help="value generation seed (default 0)")
    galaxy.add_argument(
        "--scan-interval-ms", type=_positive, default=200, metavar="MS", help="scan period"
    )
    galaxy.add_argument(
        "--no-quality-faults",
        action="store_true",
        help="keep every attribute at Good quality",
    )
    galaxy.add_argument(
        "--faults",
        type=Path,
        metavar="FILE",
        help="JSON fault plan: delays, UNAVAILABLE, dropped/stalled streams, worker crashes",
    )
    limits = serve.add_argument_group("sessions and events")
    limits.add_argument("--max-sessions", type=_positive, default=64, metavar="N")
    limits.add_argument(
        "--max-sessions-per-key",
        type=_positive,
        default=16,
        metavar="N",
        help="sessions one API key may hold at once (default 16)",
    )
    limits.add_argument("--lease-seconds", type=_seconds, default=1800.0, metavar="S")
    limits.add_argument("--max-pending-commands", type=_positive, default=128, metavar="N")
    limits.add_argument("--command-timeout-seconds", type=_seconds, default=30.0, metavar="S")
    limits.add_argument("--replay-ring-size", type=_positive, default=1024, metavar="N")
    limits.add_argument("--replay-ring-seconds", type=_seconds, default=300.0, metavar="S")
    limits.add_argument("--event-queue-size", type=_positive, default=10_000, metavar="N")
    limits.add_argument(
        "--overflow-policy",
        choices=[p.value for p in OverflowPolicy],
        default=OverflowPolicy.FAIL_FAST.value,
        help="on a full subscriber queue: fault the session (fail-fast, upstream's default) "
        "or disconnect only that subscriber",
    )
    limits.add_argument(
        "--multiple-subscribers", action="store_true", help="allow several streams per session"
    )
    limits.add_argument("--max-subscribers", type=_positive, default=8, metavar="N")
    limits.add_argument(
        "--batch-linger-ms",
        type=_non_negative,
        default=10,
        metavar="MS",
        help="a busy StreamEventBatches stream sends at most one message per MS milliseconds "
        "(fewer, fuller messages; a quiet stream sends at once; 0: off; default 10)",
    )
    galaxy.add_argument(
        "--first-value-delay-ms",
        type=_non_negative,
        default=0,
        metavar="MS",
        help="time from Advise to the first OnDataChange (default 0; a real plant: 3000-8000)",
    )
    limits.add_argument(
        "--closed-session-memory",
        type=_positive,
        default=1024,
        metavar="N",
        help="closed sessions remembered so a repeat CloseSession answers CLOSED (default 1024)",
    )
    limits.add_argument(
        "--closed-session-seconds",
        type=_seconds,
        default=600.0,
        metavar="S",
        help="how long a closed session is remembered (default 600)",
    )
    memory = serve.add_argument_group("memory limits (bytes unless named otherwise)")
    for limit in LIMITS:
        memory.add_argument(
            limit.flag,
            dest=limit.field,
            type=_positive,
            default=limit.default,
            metavar="N",
            help=f"{limit.help} (default {limit.default})",
        )
    conns = serve.add_argument_group("connections")
    conns.add_argument(
        "--idle-timeout-seconds",
        type=_seconds,
        default=DEFAULT_IDLE_TIMEOUT_S,
        metavar="S",
        help=f"close a connection with no call for S seconds (default {DEFAULT_IDLE_TIMEOUT_S:g})",
    )
    conns.add_argument(
        "--header-timeout-seconds",
        type=_seconds,
        default=DEFAULT_HEADER_TIMEOUT_S,
        metavar="S",
        help="a new connection must finish its TLS/HTTP/2 handshake within S seconds "
        f"(default {DEFAULT_HEADER_TIMEOUT_S:g})",
    )
    conns.add_argument(
        "--body-timeout-seconds",
        type=_seconds,
        default=DEFAULT_BODY_TIMEOUT_S,
        metavar="S",
        help="a call whose first request message has not arrived S seconds after it started "
        f"ends DEADLINE_EXCEEDED (default {DEFAULT_BODY_TIMEOUT_S:g})",
    )
    conns.add_argument(
        "--max-waiting-calls-per-key",
        type=_positive,
        default=DEFAULT_MAX_WAITING_CALLS_PER_KEY,
        metavar="N",
        help="calls of one API key that may wait for their first request message at once; "
        f"more end RESOURCE_EXHAUSTED (default {DEFAULT_MAX_WAITING_CALLS_PER_KEY})",
    )
    ops = serve.add_argument_group("operations (docs/operations.md)")
    ops.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at /metrics and the status page at / on this address "
        "(off by default; loopback only unless --metrics-allow-remote)",
    )
    ops.add_argument(
        "--metrics-allow-remote",
        action="store_true",
        help="allow --metrics-listen on a non-loopback address (it has no authentication)",
    )
    serve.add_argument("--json", action="store_true", help="print the start line as JSON")
    serve.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="the server's event loop: auto (default: uvloop where it is installed, as it is "
        "with this package except on Windows, else asyncio), asyncio (opt out), or uvloop "
        "(far less CPU per call; its clock counts whole milliseconds)",
    )
    serve.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    serve.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="stderr log lines as text (default) or one JSON object a line",
    )

    keys_cmd = sub.add_parser("keys", help="API key tools")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)
    create = keys_sub.add_parser("create", help="print a new API key")
    create.add_argument(
        "--scopes",
        default=",".join(DEFAULT_KEY_SCOPES),
        help=f"comma-separated scopes of {', '.join(SCOPES)} (default: all but admin)",
    )
    create.add_argument("--name", default="", help="name shown in diagnostics")
    create.add_argument("--json", action="store_true", help="print a keys-file JSON entry")

    deploy = sub.add_parser("deploy", help="simulate a Galaxy redeploy from another process")
    deploy.add_argument("--galaxy-db", type=Path, required=True, metavar="PATH")
    deploy.add_argument("--add", type=_non_negative, default=0, metavar="N", help="objects to add")
    deploy.add_argument("--remove", type=_non_negative, default=0, metavar="N")
    deploy.add_argument("--seed", type=int, default=0)
    return parser


def _split_listen(text: str, flag: str = "--listen") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"{flag} {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _tls_mode(args: argparse.Namespace) -> TlsMode:
    chosen = sum(
        [bool(args.plaintext), bool(args.tls_self_signed), bool(args.tls_cert or args.tls_key)]
    )
    if chosen != 1:
        raise UsageError(
            "choose exactly one transport: --plaintext, --tls-self-signed DIR, "
            "or --tls-cert PEM --tls-key PEM"
        )
    if args.plaintext:
        return None
    if args.tls_self_signed:
        return "self-signed"
    if not (args.tls_cert and args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if not path.is_file():
            raise UsageError(f"TLS file {path} does not exist")
    return (args.tls_cert, args.tls_key)


def _load_keys(args: argparse.Namespace) -> ApiKeyStore:
    """The keys the flags name (the keys file read now); UsageError names a bad one."""
    store = ApiKeyStore(allow_anonymous=args.allow_anonymous)
    for i, key in enumerate(args.api_key, 1):
        try:
            store.add(key)
        except KeyFormatError as exc:
            raise UsageError(f"--api-key #{i}: {exc}") from None
    for name in args.api_key_env:
        value = os.environ.get(name, "").strip()
        if not value:
            raise UsageError(env_secret_missing("--api-key-env"))
        try:
            store.add(value)
        except KeyFormatError as exc:
            raise UsageError(f"--api-key-env {name}: {exc}") from None
    if args.api_keys_file is not None:
        try:
            load_keys_file(args.api_keys_file, store)
        except OSError as exc:
            raise UsageError(unreadable_file("--api-keys-file", args.api_keys_file, exc)) from None
        except KeyFormatError as exc:
            raise UsageError(f"--api-keys-file: {exc}") from None
    return store


def _key_store(args: argparse.Namespace) -> ApiKeyStore:
    store = _load_keys(args)
    if not len(store) and not args.allow_anonymous:
        raise UsageError(
            "no API key configured: pass --api-key-env NAME, --api-keys-file PATH, "
            "--api-key KEY or --allow-anonymous"
        )
    return store


def _reload_keys(args: argparse.Namespace, store: ApiKeyStore) -> None:
    """SIGHUP: read the keys file again; a file that does not load leaves the keys as they are.

    A key no longer in the file is refused from the next call on; calls and streams already
    running are not touched. One log line tells the outcome.
    """
    if args.api_keys_file is None:
        _log.warning("SIGHUP: no --api-keys-file to reload; keys unchanged")
        return
    try:
        fresh = _load_keys(args)
    except UsageError as exc:
        _log.error("keys reload failed, keeping the %d keys in force: %s", len(store), exc)
        return
    store.replace_keys(fresh)
    if len(store):
        _log.warning("keys reloaded from %s: %d in force", args.api_keys_file, len(store))
    else:
        _log.warning(
            "keys reloaded from %s: no key in force, every call is refused", args.api_keys_file
        )


def _galaxy_source(args: argparse.Namespace) -> Any:
    """The SQL Server Galaxy of ``--galaxy-sql-server-env/-file`` (None: the SQLite one).

    Errors never repeat the connection string (it may hold a password).
    """
    if args.galaxy_sql_server_env:
        text = os.environ.get(args.galaxy_sql_server_env, "")
        if not text.strip():  # the name given may be the connection string itself
            raise UsageError(env_secret_missing("--galaxy-sql-server-env"))
        flag = f"--galaxy-sql-server-env {args.galaxy_sql_server_env}"
    elif args.galaxy_sql_server_file is not None:
        flag = f"--galaxy-sql-server-file {args.galaxy_sql_server_file}"
        try:
            text = args.galaxy_sql_server_file.read_text(encoding="utf-8")
        except OSError as exc:
            message = unreadable_file("--galaxy-sql-server-file", args.galaxy_sql_server_file, exc)
            raise UsageError(message) from None
        except UnicodeDecodeError:
            raise UsageError(f"{flag}: the file is not UTF-8 text") from None
        text = next((line for line in text.splitlines() if line.strip()), "")
        if not text.strip():
            raise UsageError(f"{flag}: the file holds no connection string")
    else:
        return None
    if args.galaxy_db or args.galaxy_objects:
        raise UsageError(f"{flag} reads a real Galaxy: drop --galaxy-db/--galaxy-objects")
    galaxy: Any = importlib.import_module("mxgateway_sim.galaxy")
    try:
        return galaxy.sql_server_source(text.strip())
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


async def _serve(args: argparse.Namespace) -> int:
    host, port = _split_listen(args.listen)
    metrics = (
        _split_listen(args.metrics_listen, "--metrics-listen")
        if args.metrics_listen is not None
        else None
    )
    tls = _tls_mode(args)
    store = _key_store(args)
    options = SessionOptions(
        max_sessions=args.max_sessions,
        max_sessions_per_key=args.max_sessions_per_key,
        lease_s=args.lease_seconds,
        max_pending_commands=args.max_pending_commands,
        command_timeout_s=args.command_timeout_seconds,
        replay_ring_size=args.replay_ring_size,
        replay_ring_age_s=args.replay_ring_seconds,
        event_queue_limit=args.event_queue_size,
        overflow_policy=OverflowPolicy(args.overflow_policy),
        multiple_subscribers=args.multiple_subscribers,
        max_subscribers=args.max_subscribers,
        first_value_delay_s=args.first_value_delay_ms / 1000.0,
        batch_linger_s=args.batch_linger_ms / 1000.0,
        closed_memory=args.closed_session_memory,
        closed_memory_s=args.closed_session_seconds,
        **{limit.field: getattr(args, limit.field) for limit in LIMITS},
    )
    plan = FaultPlan()
    if args.faults is not None:
        try:
            plan = FaultPlan.load(args.faults)
        except OSError as exc:
            raise UsageError(f"--faults: cannot read {args.faults}: {exc.strerror}") from None
        except FaultPlanError as exc:
            raise UsageError(f"--faults: {exc}") from None
    if args.no_quality_faults:
        plan = dataclasses.replace(plan, quality_flaky_one_in=0)
    galaxy_source = _galaxy_source(args)
    # Without --galaxy-db the Galaxy is private to this server: a fresh database in a
    # temporary directory removed at exit (two simulators never share, and `deploy` to one
    # never redeploys another). Its path is printed on the listening line for `deploy`.
    scratch: tempfile.TemporaryDirectory[str] | None = None
    galaxy_db = args.galaxy_db
    if galaxy_db is None and galaxy_source is None:
        scratch = tempfile.TemporaryDirectory(prefix="mxgw-sim-galaxy-")
        galaxy_db = Path(scratch.name) / "galaxy.db"
    try:
        return await _serve_with(
            args, host, port, store, tls, options, plan, galaxy_source, galaxy_db, metrics
        )
    finally:
        if scratch is not None:
            scratch.cleanup()


async def _serve_with(
    args: argparse.Namespace,
    host: str,
    port: int,
    store: Any,
    tls: Any,
    options: Any,
    plan: FaultPlan,
    galaxy_source: Any,
    galaxy_db: Path | None,
    metrics: tuple[str, int] | None = None,
) -> int:
    """Run the simulator until SIGINT/SIGTERM (the rest of ``serve``)."""
    try:
        sim = GatewaySimulator(
            host=host,
            port=port,
            key_store=store,
            allow_anonymous=args.allow_anonymous,
            tls=tls,
            tls_dir=args.tls_self_signed,
            galaxy_db=galaxy_db,
            galaxy_objects=args.galaxy_objects,
            galaxy_page_bytes=args.galaxy_page_bytes,
            galaxy_source=galaxy_source,
            galaxy_poll_interval=args.galaxy_poll_seconds,
            seed=args.seed,
            scan_interval_ms=args.scan_interval_ms,
            session_options=options,
            faults=plan,
            idle_timeout_s=args.idle_timeout_seconds,
            header_timeout_s=args.header_timeout_seconds,
            body_timeout_s=args.body_timeout_seconds,
            max_waiting_calls_per_key=args.max_waiting_calls_per_key,
            metrics_listen=metrics,
            metrics_allow_remote=args.metrics_allow_remote,
            gc_tenure=True,  # a process of its own: the server's GC policy in full
            **_runtime_options(args),
        )
    except ValueError as exc:  # a refused combination (a remote metrics address)
        raise UsageError(str(exc)) from None
    sim.runtime_name = args.runtime
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    if hasattr(signal, "SIGHUP"):  # not on Windows
        loop.add_signal_handler(signal.SIGHUP, _reload_keys, args, store)
    try:
        await sim.start()
    except (TlsSetupError, ValueError, sqlite3.Error, BindError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot start: {exc}") from None
    except RuntimeError as exc:  # grpc: failed to bind
        raise UsageError(f"cannot listen on {args.listen}: {exc}") from None
    if (args.galaxy_db or args.galaxy_objects) and not sim.galaxy_available:
        print(
            f"{args.prog}: warning: Galaxy support is not available; "
            "serving the built-in demo plant",
            file=sys.stderr,
        )
    try:
        ca = str(sim.ca_file) if sim.ca_file else None
        db_text = str(galaxy_db) if galaxy_db is not None and sim.galaxy_available else None
        metrics_at = sim.metrics_endpoint
        if args.json:
            doc: dict[str, Any] = {
                "event": "listening",
                "address": sim.endpoint,
                "tls": sim.tls_mode,
                "caFile": ca,
                "galaxy": sim.galaxy_available,
                "galaxyDb": db_text,
                "eventLoop": "uvloop" if is_uvloop(asyncio.get_running_loop()) else "asyncio",
            }
            if metrics_at is not None:
                doc["metrics"] = metrics_at
            line = json.dumps(doc)
        else:
            line = (
                f"{args.prog} listening on {sim.endpoint} tls={sim.tls_mode}"
                + (f" ca={ca}" if ca else "")
                + (f" galaxy-db={db_text}" if db_text else "")
                + (f" metrics={metrics_at}" if metrics_at else "")
            )
        print(line, flush=True)
        await stop.wait()
    finally:
        await sim.stop(grace=2.0)
    return EXIT_OK


def _keys_create(args: argparse.Namespace) -> int:
    try:
        scopes = _parse_scopes(args.scopes)
    except KeyFormatError as exc:
        raise UsageError(f"--scopes: {exc}") from None
    if not scopes:
        raise UsageError("--scopes: give at least one scope")
    key = new_key()
    if args.json:
        entry: dict[str, Any] = {"key": key, "scopes": scopes}
        if args.name:
            entry["name"] = args.name
        print(json.dumps(entry))
    else:
        print(key)
    return EXIT_OK


def _deploy(args: argparse.Namespace) -> int:
    try:
        galaxy: Any = importlib.import_module("mxgateway_sim.galaxy")
        deploy = galaxy.deploy
    except (ImportError, AttributeError):
        raise UsageError("this build has no Galaxy support (mxgateway_sim.galaxy)") from None
    try:
        result = deploy(args.galaxy_db, add=args.add, remove=args.remove, seed=args.seed)
    except sqlite3.Error as exc:  # sqlite's text never names the file
        raise UsageError(
            f"deploy: {args.galaxy_db} is not a writable Galaxy database: {exc}"
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"deploy: {exc}") from None
    print(json.dumps(result, default=str))
    return EXIT_OK


def _runtime_options(args: argparse.Namespace) -> dict[str, Any]:
    """``GatewaySimulator`` keywords of ``--runtime``, ``--session-isolation`` and the
    worker flags.

    Raises:
        UsageError: the mxaccess runtime cannot run here (one line saying why).
    """
    python = str(args.worker_python) if args.worker_python is not None else sys.executable
    settings = WorkerSettings(
        runtime=args.runtime,
        heartbeat_s=args.worker_heartbeat_seconds,
        heartbeat_grace_s=args.worker_heartbeat_grace_seconds,
        startup_timeout_s=args.worker_startup_seconds,
        pool_size=args.worker_pool,
        command=(python, "-m", "mxgateway_sim.worker", "--vt-date-zone", args.vt_date_zone),
        # The gateway's secrets stay in the gateway (workers need none of them).
        private_env=(
            *args.api_key_env,
            *([args.galaxy_sql_server_env] if args.galaxy_sql_server_env else []),
        ),
    )
    options: dict[str, Any] = {
        "session_isolation": args.session_isolation,
        "worker_settings": settings,
    }
    if args.runtime == "mxaccess":
        from mxgateway_mxaccess import ComStartError, mxaccess_runtime_factory, start_problem

        if args.session_isolation == "inline":
            try:
                options["runtime_factory"] = mxaccess_runtime_factory(
                    date_zone=VT_DATE_ZONES[args.vt_date_zone]
                )
            except ComStartError as exc:
                raise UsageError(str(exc)) from None
        elif args.worker_python is None:  # the workers run here: check now, not per session
            problem = start_problem()
            if problem is not None:
                raise UsageError(problem)
    return options


def main(argv: Sequence[str] | None = None, prog: str = "mxgw-sim") -> int:
    """Run ``mxgw-sim`` (or ``mxgw-gateway``) with ``argv``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    try:
        if args.command == "serve":
            configure_logging(args.log_level, args.log_format)
            try:
                return run_event_loop(_serve(args), args.event_loop)
            except EventLoopUnavailable as exc:
                raise UsageError(str(exc)) from None
        if args.command == "keys":
            return _keys_create(args)
        return _deploy(args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def run() -> NoReturn:
    """Console-script entry point (``mxgw-sim``)."""
    sys.exit(main())


def run_gateway() -> NoReturn:
    """Console-script entry point (``mxgw-gateway``)."""
    sys.exit(main(prog="mxgw-gateway"))
