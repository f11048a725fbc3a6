"""The command table: command name -> coroutine that runs it and returns an exit code.

Commands contain no error handling: they raise, and :func:`mxgateway_cli.main.main` maps the
exception through the one error table.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import mxgateway
from mxgateway_cli._cmd_bench import BENCH_COMMANDS
from mxgateway_cli._cmd_galaxy import GALAXY_COMMANDS
from mxgateway_cli._cmd_session import SESSION_COMMANDS
from mxgateway_cli._context import Context
from mxgateway_cli._demo import DEMO_COMMANDS
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
    **SESSION_COMMANDS,
    **GALAXY_COMMANDS,
    **BENCH_COMMANDS,
    **DEMO_COMMANDS,
}
