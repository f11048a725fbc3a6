"""docs/cli.md documents every command, every flag and every exit code of the parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._parser import build_parser

DOC = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_command_and_flag_is_documented(command: str) -> None:
    assert f"### {command}" in DOC or f", {command}" in DOC or f"`mxgw-py {command}" in DOC
    parser = _commands()[command]
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}" in DOC or f"{flag} " in DOC, f"{command} {flag}"


def test_every_exit_code_is_documented() -> None:
    for code in ExitCode:
        assert f"| {code.value} | `{code.name}` |" in DOC
