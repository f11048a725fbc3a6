"""The command line of ``mxgw-py``: every command, every flag, one argparse tree.

argparse is used (stdlib, exit code 2 convention), but it never exits the process itself:
:class:`_Parser` raises :class:`~mxgateway_cli._errors.CliUsageError` instead, so usage
errors go through the same error table as everything else.
"""

from __future__ import annotations

import argparse
import math
from typing import IO, TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

import mxgateway
from mxgateway._secret import NoEchoArgumentParser
from mxgateway_cli._errors import CliUsageError, HelpRequested
from mxgateway_cli._exit_codes import ExitCode

__all__ = ["HelpRequested", "build_parser"]


class _Parser(NoEchoArgumentParser):
    """An ArgumentParser that raises instead of exiting and prints to our streams.

    Flags are never abbreviated (``--password x`` must not become ``--password-env x``), and
    unrecognized arguments are reported without their values: either could echo a secret.
    """

    out_stream: IO[str] | None = None
    """Where help text goes (set by :func:`build_parser` on every parser of the tree)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("mxgw-py").strip()
        raise CliUsageError(f"{command}: {message}" if command else message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._print_message(message, None)
        if status:
            raise CliUsageError(message or "usage error")
        raise HelpRequested

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message:
            stream = self.out_stream
            if stream is None:
                return super()._print_message(message, file)
            stream.write(message)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _integer(text: str) -> int:
    """``text`` as a base-10 integer (the first check of every integer flag)."""
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _int32(text: str) -> int:
    value = _integer(text)
    if not -(2**31) <= value < 2**31:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range for a 32-bit integer")
    return value


_handle = _int32


_EXIT_CODES_HELP = "exit codes: " + ", ".join(
    f"{code.value} {code.name.lower()}" for code in ExitCode
)

_EPILOG = (
    _EXIT_CODES_HELP + ". Connection defaults come from MXGATEWAY_ENDPOINT, MXGATEWAY_PLAINTEXT, "
    "MXGATEWAY_CA_FILE, MXGATEWAY_SERVER_NAME_OVERRIDE and MXGATEWAY_API_KEY when the flags "
    "are not given. Full reference: `mxgw-py docs`."
)


def _output_flags(parser: argparse.ArgumentParser, *, ndjson: bool = False) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--json",
        action="store_true",
        help="deterministic JSON on stdout (errors as JSON on stderr)",
    )
    if ndjson:
        group.add_argument(
            "--ndjson",
            action="store_true",
            help="one JSON object per line as items arrive (implies --json)",
        )
    group.add_argument(
        "--debug", action="store_true", help="show the traceback of unexpected errors"
    )


def _connection_flags(parser: argparse.ArgumentParser, *, timeout_help: str | None = None) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--endpoint", metavar="HOST:PORT", help="gateway address (default localhost:5000)"
    )
    group.add_argument(
        "--plaintext", action="store_true", help="unencrypted channel (never implied)"
    )
    group.add_argument("--tls", action="store_true", help="TLS channel (the default)")
    group.add_argument("--ca-file", metavar="PEM", help="CA certificate(s) to trust")
    group.add_argument(
        "--server-name-override", metavar="NAME", help="TLS host name to verify instead"
    )
    group.add_argument("--api-key", metavar="KEY", help="API key (prefer --api-key-env)")
    group.add_argument(
        "--api-key-env", metavar="NAME", help="read the API key from environment variable NAME"
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        help=timeout_help or "deadline of each gateway call (default 30)",
    )


def _session_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session-id", required=True, metavar="ID", help="session to use")


def _server_handle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server-handle", required=True, type=_handle, metavar="N", help="handle from register"
    )


def _item_handle(parser: argparse.ArgumentParser, *, repeat: bool = False) -> None:
    if repeat:
        parser.add_argument(
            "--item-handle",
            required=True,
            type=_handle,
            action="append",
            metavar="N",
            help="item handle (repeat; pairs with --value by position)",
        )
    else:
        parser.add_argument(
            "--item-handle", required=True, type=_handle, metavar="N", help="handle from add-item"
        )


def _wait_flags(parser: argparse.ArgumentParser) -> None:
    """How a write waits for its outcome (the item's OnWriteComplete)."""
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the write's OnWriteComplete and report its outcome (default); "
        "--no-wait prints the reply once the write is accepted",
    )
    parser.add_argument(
        "--wait-timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the OnWriteComplete (default 30)",
    )


def _type_flag(
    parser: argparse.ArgumentParser, *, required: bool = True, help_text: str = ""
) -> None:
    parser.add_argument(
        "--type",
        required=required,
        choices=list(mxgateway.VALUE_TYPES),
        metavar="TYPE",
        help=help_text or "value type: " + "|".join(mxgateway.VALUE_TYPES),
    )


def _value_flags(parser: argparse.ArgumentParser, *, repeat: bool = False) -> None:
    _type_flag(parser)
    parser.add_argument(
        "--value",
        required=True,
        action="append" if repeat else "store",
        metavar="TEXT",
        help=(
            "value text (bool: true/false; datetime: ISO 8601 with zone; elapsed: seconds; "
            "bytes: base64)" + ("; repeat once per --item-handle" if repeat else "")
        ),
    )


def _bulk_write_flags(parser: argparse.ArgumentParser, *, secured: bool, timestamp: bool) -> None:
    """The bulk write family: handles and values by position, as repeated flags or as
    upstream's comma-separated lists."""
    parser.add_argument(
        "--item-handle",
        type=_handle,
        action="append",
        metavar="N",
        help="item handle (repeat; pairs with --value by position)",
    )
    parser.add_argument("--item-handles", metavar="CSV", help="item handles, comma-separated")
    _type_flag(parser)
    parser.add_argument(
        "--value", action="append", metavar="TEXT", help="value text (repeat, per handle)"
    )
    parser.add_argument(
        "--values", metavar="CSV", help="values, comma-separated (CSV quoting for commas)"
    )
    if timestamp:
        parser.add_argument(
            "--timestamp", metavar="ISO", help="value timestamp, ISO 8601 with zone (default now)"
        )
    if secured:
        parser.add_argument(
            "--current-user-id",
            type=_int32,
            required=True,
            metavar="N",
            help="authenticated operator",
        )
        parser.add_argument(
            "--verifier-user-id",
            type=_int32,
            metavar="N",
            help="authenticated verifier (default: the current user)",
        )
    else:
        parser.add_argument(
            "--user-id", type=_int32, default=0, metavar="N", help="user id (0 = none)"
        )


def _duration_flag(parser: argparse.ArgumentParser) -> None:
    """A benchmark's measurement window."""
    parser.add_argument(
        "--duration-seconds",
        type=_positive_seconds,
        default=5.0,
        metavar="S",
        help="measurement window (default 5)",
    )


def build_parser(out_stream: IO[str] | None = None) -> argparse.ArgumentParser:
    """The complete ``mxgw-py`` parser; help text goes to ``out_stream`` (default stdout)."""
    parser = _Parser(
        prog="mxgw-py",
        description="Command-line client of the MXAccess Gateway (AVEVA System Platform).",
        epilog=_EPILOG,
    )
    parser.out_stream = out_stream
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text, epilog=_EPILOG)
        assert isinstance(command, _Parser)
        command.out_stream = out_stream
        return command

    p = add("version", "print package and protocol versions")
    _output_flags(p)

    p = add("docs", "print the command reference (docs/cli.md; shipped with the package)")
    _output_flags(p)

    p = add("demo", "run a guided tour against an embedded simulator (no gateway needed)")
    p.add_argument(
        "--events", type=_positive_int, default=6, metavar="N", help="live changes to show"
    )
    _output_flags(p)

    p = add("read", "read tags by name: current value, quality and time (own session)")
    p.add_argument("tag", nargs="+", metavar="TAG", help="tag reference, e.g. Tank01.Level")
    _connection_flags(
        p, timeout_help="deadline of each call and of the wait for first values (default 30)"
    )
    _output_flags(p)

    p = add("watch", "watch tags by name: every change until Ctrl+C (own session)")
    p.add_argument("tag", nargs="+", metavar="TAG", help="tag reference, e.g. Tank01.Level")
    p.add_argument("--max-events", type=_positive_int, metavar="N", help="stop after N changes")
    p.add_argument(
        "--duration", type=_positive_seconds, metavar="SECONDS", help="stop after SECONDS"
    )
    _connection_flags(p)
    _output_flags(p, ndjson=True)

    p = add("set", "write a tag by name with its own type and report the outcome")
    p.add_argument("tag", metavar="TAG", help="tag reference, e.g. Tank01.InletValve.Cmd")
    p.add_argument("value", metavar="VALUE", help="value text, parsed as the attribute's type")
    _type_flag(p, required=False, help_text="force the value type (default: the attribute's own)")
    p.add_argument("--user-id", type=_int32, default=0, metavar="N", help="user id (0 = none)")
    p.add_argument(
        "--wait-timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the OnWriteComplete (default 30)",
    )
    _connection_flags(
        p, timeout_help="deadline of each call and of the wait for the first value (default 30)"
    )
    _output_flags(p)

    p = add("open-session", "open a session and print its id")
    p.add_argument("--client-name", default="mxgw-py", metavar="NAME", help="client session name")
    _connection_flags(p)
    _output_flags(p)

    p = add("close-session", "close a session and release its handles")
    _session_flag(p)
    _connection_flags(p)
    _output_flags(p)

    p = add("register", "Register: get a server handle")
    _session_flag(p)
    p.add_argument("--client-name", default="mxgw-py", metavar="NAME", help="MXAccess client name")
    _connection_flags(p)
    _output_flags(p)

    p = add("unregister", "Unregister a server handle")
    _session_flag(p)
    _server_handle(p)
    _connection_flags(p)
    _output_flags(p)

    p = add("add-item", "AddItem: get an item handle for a reference")
    _session_flag(p)
    _server_handle(p)
    p.add_argument("--item", required=True, metavar="REF", help="reference, e.g. Tank01.Level")
    _connection_flags(p)
    _output_flags(p)

    for name, text in (
        ("remove-item", "RemoveItem: release an item handle"),
        ("advise", "Advise: subscribe to an item's data changes"),
        ("advise-supervisory", "AdviseSupervisory: supervisory subscription"),
        ("unadvise", "UnAdvise: stop an item's subscription"),
    ):
        p = add(name, text)
        _session_flag(p)
        _server_handle(p)
        _item_handle(p)
        _connection_flags(p)
        _output_flags(p)

    p = add("write", "Write a value")
    _session_flag(p)
    _server_handle(p)
    _item_handle(p)
    _value_flags(p)
    p.add_argument("--user-id", type=_int32, default=0, metavar="N", help="user id (0 = none)")
    _wait_flags(p)
    _connection_flags(p)
    _output_flags(p)

    p = add("write2", "Write2: write a value with a timestamp")
    _session_flag(p)
    _server_handle(p)
    _item_handle(p)
    _value_flags(p)
    p.add_argument(
        "--timestamp", metavar="ISO", help="value timestamp, ISO 8601 with zone (default now)"
    )
    p.add_argument("--user-id", type=_int32, default=0, metavar="N", help="user id (0 = none)")
    _wait_flags(p)
    _connection_flags(p)
    _output_flags(p)

    p = add("write-secured", "WriteSecured: write with operator (and verifier) ids")
    _session_flag(p)
    _server_handle(p)
    _item_handle(p)
    _value_flags(p)
    p.add_argument(
        "--current-user-id", type=_int32, required=True, metavar="N", help="authenticated operator"
    )
    p.add_argument(
        "--verifier-user-id",
        type=_int32,
        metavar="N",
        help="authenticated verifier (default: the current user)",
    )
    _wait_flags(p)
    _connection_flags(p)
    _output_flags(p)

    p = add("authenticate-user", "AuthenticateUser: get a user id for secured writes")
    _session_flag(p)
    _server_handle(p)
    p.add_argument("--user", required=True, metavar="NAME", help="user name (DOMAIN\\user)")
    p.add_argument(
        "--password-env",
        required=True,
        metavar="NAME",
        help="read the password from environment variable NAME (never from the command line)",
    )
    _connection_flags(p)
    _output_flags(p)

    p = add("stream-events", "print a session's events")
    _session_flag(p)
    p.add_argument("--max-events", type=_positive_int, metavar="N", help="stop after N events")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--after-sequence",
        type=_non_negative_int,
        metavar="N",
        help="start after worker sequence N (default: the oldest event the gateway holds)",
    )
    start.add_argument(
        "--new-only",
        action="store_true",
        help="only events raised from now on (default: the oldest event the gateway holds)",
    )
    _connection_flags(p, timeout_help="stop listening after SECONDS and exit 0")
    _output_flags(p, ndjson=True)

    p = add("read-bulk", "ReadBulk: read current values of many references")
    _session_flag(p)
    _server_handle(p)
    p.add_argument("--item", action="append", metavar="REF", help="reference (repeat)")
    p.add_argument("--items", metavar="CSV", help="references, comma-separated (upstream's form)")
    p.add_argument(
        "--read-timeout-ms",
        "--timeout-ms",
        dest="read_timeout_ms",
        type=_non_negative_int,
        default=0,
        metavar="MS",
        help="wait per tag for its first value (0 = worker default)",
    )
    _connection_flags(p)
    _output_flags(p)

    for name, text in (
        ("write-bulk", "WriteBulk: write many items in one call"),
        ("write2-bulk", "Write2Bulk: write many items with a timestamp"),
        ("write-secured-bulk", "WriteSecuredBulk: secured writes of many items"),
        ("write-secured2-bulk", "WriteSecured2Bulk: secured writes with a timestamp"),
    ):
        p = add(name, text)
        _session_flag(p)
        _server_handle(p)
        _bulk_write_flags(p, secured="secured" in name, timestamp="2" in name)
        _connection_flags(p)
        _output_flags(p)

    p = add("batch", "run one command line per stdin line (upstream's batch protocol)")
    _connection_flags(p, timeout_help="default --timeout of each line's command")
    _output_flags(p)

    p = add("stream-alarms", "print active alarms, then alarm changes (session-less)")
    p.add_argument(
        "--filter-prefix", metavar="PREFIX", help="only alarms whose reference starts so"
    )
    p.add_argument("--max-messages", type=_positive_int, metavar="N", help="stop after N messages")
    _connection_flags(p, timeout_help="stop listening after SECONDS and exit 0")
    _output_flags(p, ndjson=True)

    p = add("acknowledge-alarm", "acknowledge an alarm by reference (session-less)")
    p.add_argument("--reference", required=True, metavar="REF", help="full alarm reference")
    p.add_argument("--comment", metavar="TEXT", help="operator comment")
    p.add_argument("--operator", metavar="USER", help="operator user name")
    _connection_flags(p)
    _output_flags(p)

    p = add("smoke", "open, register, add, advise, stream a few events, close")
    p.add_argument("--item", required=True, metavar="REF", help="reference to subscribe to")
    p.add_argument("--client-name", default="mxgw-py-smoke", metavar="NAME", help="client name")
    p.add_argument(
        "--max-events", type=_positive_int, default=1, metavar="N", help="events to wait for"
    )
    _connection_flags(p, timeout_help="deadline of each call and of the event wait (default 30)")
    _output_flags(p)

    p = add("galaxy-test-connection", "check the gateway can reach the Galaxy Repository")
    _connection_flags(p)
    _output_flags(p)

    p = add("galaxy-last-deploy", "print the Galaxy's last deploy time")
    _connection_flags(p)
    _output_flags(p)

    p = add("galaxy-discover", "list deployed objects with their attributes, page by page")
    root = p.add_mutually_exclusive_group()
    root.add_argument("--root-tag-name", metavar="TAG", help="walk only this subtree")
    root.add_argument("--root-path", metavar="PATH", help="subtree by contained path (A/B/C)")
    root.add_argument("--root-id", type=_int32, metavar="ID", help="subtree by gobject id")
    p.add_argument("--max-depth", type=_non_negative_int, metavar="N", help="levels below the root")
    p.add_argument(
        "--category-id",
        type=_int32,
        action="append",
        metavar="ID",
        help="template category (repeat)",
    )
    p.add_argument(
        "--template", action="append", metavar="TAG", help="template in the chain (repeat)"
    )
    p.add_argument("--tag-glob", metavar="GLOB", help="tag name glob (* and ?)")
    p.add_argument("--no-attributes", action="store_true", help="objects only")
    p.add_argument("--alarm-only", action="store_true", help="only alarm-bearing objects")
    p.add_argument("--historized-only", action="store_true", help="only historized objects")
    p.add_argument(
        "--page-size", type=_positive_int, metavar="N", help="objects per page (server default)"
    )
    _connection_flags(p, timeout_help="deadline of each page request (default 30)")
    _output_flags(p, ndjson=True)

    p = add("galaxy-watch", "print Galaxy deploy events")
    p.add_argument("--max-events", type=_positive_int, metavar="N", help="stop after N events")
    p.add_argument(
        "--last-seen", metavar="ISO", help="deploy time already known (suppresses the bootstrap)"
    )
    _connection_flags(p, timeout_help="stop listening after SECONDS and exit 0")
    _output_flags(p, ndjson=True)

    p = add("bench-read-bulk", "measure ReadBulk calls per second and latency")
    p.add_argument("--item", action="append", metavar="REF", help="reference (repeat)")
    p.add_argument("--items", metavar="CSV", help="references, comma-separated")
    p.add_argument(
        "--bulk-size",
        type=_positive_int,
        default=10,
        metavar="N",
        help="references per call when taken from the Galaxy (default 10)",
    )
    _duration_flag(p)
    p.add_argument(
        "--timeout-ms",
        type=_non_negative_int,
        default=0,
        metavar="MS",
        help="ReadBulk's wait per tag for a first value (0 = worker default)",
    )
    p.add_argument(
        "--advise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="advise the items first so reads answer from the cache (default)",
    )
    _connection_flags(p)
    _output_flags(p)

    p = add("bench-stream-events", "measure event throughput and latency")
    p.add_argument(
        "--sessions",
        "--session-count",
        dest="sessions",
        type=_positive_int,
        default=1,
        metavar="N",
        help="sessions (default 1)",
    )
    p.add_argument("--items", type=_positive_int, default=10, metavar="M", help="items per session")
    p.add_argument(
        "--item",
        action="append",
        metavar="REF",
        help="reference to advise (repeat; default: taken from the Galaxy)",
    )
    _duration_flag(p)
    p.add_argument(
        "--per-event", action="store_true", help="use StreamEvents (one event per message)"
    )
    _connection_flags(p)
    _output_flags(p)
    return parser
