"""``version`` and ``docs``: what this installation is and where its documentation is."""

from __future__ import annotations

from pathlib import Path

import mxgateway
from mxgateway_cli._context import Context
from mxgateway_cli._errors import CommandFailed
from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._output import Output, dumps

__all__ = ["VERSION_COMMANDS", "print_version"]


def print_version(out: Output, *, json: bool) -> ExitCode:
    """Print package, contract and gRPC stack versions (no event loop needed)."""
    info = mxgateway.version_info()
    if json:
        out.write(dumps(info))
    else:
        for key, value in info.items():
            out.write(f"{key}: {value}\n")
    return ExitCode.OK


async def cmd_version(ctx: Context) -> ExitCode:
    """``version``."""
    return print_version(ctx.out, json=ctx.json)


def reference_text() -> str | None:
    """docs/cli.md: shipped in the wheel as ``mxgateway_cli/_docs/cli.md``; in a source
    checkout (editable install) read from ``docs/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_docs" / "cli.md", here.parents[1] / "docs" / "cli.md"):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    return None


async def cmd_docs(ctx: Context) -> ExitCode:
    """Print the command reference (docs/cli.md), which a pip install carries too."""
    text = reference_text()
    if text is None:
        raise CommandFailed(
            "the command reference is not installed; `mxgw-py COMMAND --help` shows each "
            "command's flags",
            ExitCode.ERROR,
        )
    if ctx.json:
        ctx.out.emit({"reference": text})
    else:
        ctx.out.write(text)
    return ExitCode.OK


VERSION_COMMANDS = {"version": cmd_version, "docs": cmd_docs}
