"""Entry point of ``mxgw-py``: parse, run one command, map any failure to an exit code.

:func:`main` is the only place with error handling. Commands (``_commands``) raise; the
exception goes through :func:`mxgateway_cli._errors.classify`, which picks the exit code from
one table and redacts the message. stdout carries results only; errors go to stderr (a JSON
document under ``--json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import IO

from mxgateway_cli import _quiet_grpc  # noqa: F401  (before anything imports grpc)
from mxgateway_cli._errors import HelpRequested, classify
from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._output import Output

__all__ = ["ExitCode", "main", "run"]

_SECRET_FLAGS = ("--api-key",)


def _argv_secrets(argv: Sequence[str]) -> list[str]:
    """Secrets given on the command line, known before parsing so nothing can echo them."""
    found: list[str] = []
    for index, arg in enumerate(argv):
        for flag in _SECRET_FLAGS:
            if arg == flag and index + 1 < len(argv):
                found.append(argv[index + 1])
            elif arg.startswith(flag + "="):
                found.append(arg[len(flag) + 1 :])
    return found


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: IO[str] | None = None,
) -> int:
    """Run ``mxgw-py`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    out = Output(
        sys.stdout if stdout is None else stdout,
        sys.stderr if stderr is None else stderr,
        json_mode="--json" in args_list or "--ndjson" in args_list,
    )
    for secret in _argv_secrets(args_list):
        out.add_secret(secret)
    debug = "--debug" in args_list
    try:
        if args_list[:1] in (["--version"], ["-V"]):
            args_list[:1] = ["version"]  # `mxgw-py --version` is `mxgw-py version`
        if args_list[:1] == ["version"] and set(args_list[1:]) <= {"--json", "--debug"}:
            # The one command people time: no parser tree, no event loop.
            from mxgateway_cli._cmd_version import print_version

            return int(print_version(out, json="--json" in args_list))
        from mxgateway_cli._commands import command
        from mxgateway_cli._context import Context
        from mxgateway_cli._parser import build_parser

        parser = build_parser(out.stdout)
        args = parser.parse_args(args_list)
        out.ndjson = bool(getattr(args, "ndjson", False))
        if out.ndjson:
            args.json = True  # --ndjson is a JSON mode
        out.json_mode = bool(getattr(args, "json", False))
        ctx = Context(args=args, out=out, env=os.environ if env is None else env, stdin=stdin)
        return int(asyncio.run(command(args.command)(ctx)))
    except HelpRequested:
        return int(ExitCode.OK)
    except BrokenPipeError:
        # The reader closed the pipe: stop quietly. Point the real stdout at devnull so the
        # interpreter's final flush does not fail a second time.
        if stdout is None:
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.BROKEN_PIPE)
    except (Exception, KeyboardInterrupt, asyncio.CancelledError) as exc:
        report = classify(exc, out.secrets)
        if debug:
            out.write("".join(traceback.format_exception(exc)), stream=out.stderr)
        out.error(report)
        return int(report.exit_code)


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())
