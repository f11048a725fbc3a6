"""The command table: command name -> coroutine that runs it and returns an exit code.

Commands contain no error handling: they raise, and :func:`mxgateway_cli.main.main` maps the
exception through the one error table. A command's module is imported only when that command
runs (:func:`command`), so ``--help``, ``version`` and each command load only what they use
(``demo`` alone loads the simulator, ``galaxy-discover`` alone ``rich.progress``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine
from typing import Any

from mxgateway_cli._context import Context
from mxgateway_cli._exit_codes import ExitCode

__all__ = ["COMMAND_MODULES", "Command", "command"]

Command = Callable[[Context], Coroutine[Any, Any, ExitCode]]

COMMAND_MODULES: dict[str, tuple[str, str]] = {
    "version": ("mxgateway_cli._cmd_version", "VERSION_COMMANDS"),
    "docs": ("mxgateway_cli._cmd_version", "VERSION_COMMANDS"),
    "demo": ("mxgateway_cli._demo", "DEMO_COMMANDS"),
    **dict.fromkeys(
        (
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
        ),
        ("mxgateway_cli._cmd_session", "SESSION_COMMANDS"),
    ),
    **dict.fromkeys(
        ("write2-bulk", "write-secured-bulk", "write-secured2-bulk", "batch"),
        ("mxgateway_cli._cmd_parity", "PARITY_COMMANDS"),
    ),
    **dict.fromkeys(
        ("stream-alarms", "acknowledge-alarm"),
        ("mxgateway_cli._cmd_alarms", "ALARM_COMMANDS"),
    ),
    **dict.fromkeys(("read", "watch", "set"), ("mxgateway_cli._cmd_tags", "TAG_COMMANDS")),
    **dict.fromkeys(
        ("galaxy-test-connection", "galaxy-last-deploy", "galaxy-discover", "galaxy-watch"),
        ("mxgateway_cli._cmd_galaxy", "GALAXY_COMMANDS"),
    ),
    **dict.fromkeys(
        ("bench-stream-events", "bench-read-bulk"),
        ("mxgateway_cli._cmd_bench", "BENCH_COMMANDS"),
    ),
}
"""Command name -> (module, name of the module's own ``{command: coroutine}`` table)."""


def command(name: str) -> Command:
    """The coroutine of command ``name``, importing its module now."""
    module_name, table = COMMAND_MODULES[name]
    commands: dict[str, Command] = getattr(importlib.import_module(module_name), table)
    return commands[name]
