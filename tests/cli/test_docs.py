"""docs/cli.md documents every command, every flag and every exit code of the parser."""

from __future__ import annotations

import argparse
import sys
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


@pytest.mark.slow
def test_first_five_minutes_runs_verbatim() -> None:
    """docs/cli.md's "First five minutes" blocks, as written, against the simulator they
    start (the port made free, nothing else changed)."""
    from .test_docs_verbatim import _blocks, _run_blocks

    section = DOC[DOC.index("## First five minutes") : DOC.index("## Quick tour")]
    blocks = _blocks(section)
    assert len(blocks) == 2
    result = _run_blocks(blocks)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("Tag ")) :]
    assert lines[0].split() == ["Tag", "Value", "Type", "Quality", "Time"]
    assert [line.split()[0] for line in lines[1:4]] == [
        "L1_Mixer.RunHours",
        "L1_Mixer.Current",
        "L1_Mixer.Running",
    ]
    assert all(line.split()[3] == "Good" for line in lines[1:4])
    changes = [line for line in lines if " L1_Mixer.Current = " in line]
    assert len(changes) == 5
    assert any(
        line.startswith("L1_Tank01_InletValve.Cmd = 42 (Integer), was ")
        and line.endswith("OnWriteComplete OK")
        for line in lines
    )
    assert any(line.startswith("L1_Mixer.Setpoints[]") and "Integer[]" in line for line in lines)
    assert "L1_Mixer.Setpoints[]  Integer[]" in result.stdout  # galaxy-discover marks arrays
    assert "Traceback" not in result.stderr
    assert "mxgw-py: error" not in result.stderr


def test_docs_command_prints_this_reference() -> None:
    from .clirunner import run

    result = run(["docs"])
    assert result.code == 0
    assert result.out == DOC


def test_the_wheel_ships_the_reference() -> None:
    """``mxgw-py docs`` works from a plain pip install: the wheel force-includes cli.md
    next to the module that reads it (and the sdist carries docs/ to build it from)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # its backport (a dev dependency there)
        import tomli as tomllib
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["force-include"] == {"docs/cli.md": "mxgateway_cli/_docs/cli.md"}
    assert "docs" in project["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
