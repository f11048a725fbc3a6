"""The command table: command name -> coroutine that runs it and returns an exit code.

Commands contain no error handling: they raise, and :func:`mxgateway_cli.main.main` maps the
exception through the one error table.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import mxgateway
from mxgateway_cli._context import Context
from mxgateway_cli._errors import CommandFailed
from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._output import dumps

__all__ = ["COMMANDS", "Command"]

Command = Callable[[Context], Coroutine[Any, Any, ExitCode]]


async def cmd_version(ctx: Context) -> ExitCode:
    """Print package, contract and gRPC stack versions."""
    info = mxgateway.version_info()
    if ctx.json:
        ctx.out.write(dumps(info))
    else:
        for key, value in info.items():
            ctx.out.write(f"{key}: {value}\n")
    return ExitCode.OK


COMMANDS: dict[str, Command] = {
    "version": cmd_version,
}


async def _pending(ctx: Context) -> ExitCode:
    """Placeholder while the client library lands: validates input, then stops."""
    ctx.connection()
    if getattr(ctx.args, "type", None) is not None:
        from mxgateway_cli._parsing import parse_value

        values = ctx.args.value if isinstance(ctx.args.value, list) else [ctx.args.value]
        for text in values:
            parse_value(ctx.args.type, text)
    raise CommandFailed(f"{ctx.args.command} is not available yet", ExitCode.ERROR)


for _name in (
    "open-session",
    "close-session",
    "register",
    "unregister",
    "add-item",
    "remove-item",
    "advise",
    "advise-supervisory",
    "unadvise",
    "write",
    "write2",
    "write-secured",
    "authenticate-user",
    "stream-events",
    "read-bulk",
    "write-bulk",
    "smoke",
    "galaxy-test-connection",
    "galaxy-last-deploy",
    "galaxy-discover",
    "galaxy-watch",
    "bench-stream-events",
    "demo",
):
    COMMANDS[_name] = _pending
