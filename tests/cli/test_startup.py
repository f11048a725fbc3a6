"""Fast start: ``--help``, ``version`` and each command import only what they use.

Checked in a fresh interpreter per case (the test process has everything imported already).
The start-up time itself is measured in ``bench/`` (``python -m bench startup``), not here.
"""

from __future__ import annotations

import argparse

import pytest

from mxgateway_cli._commands import COMMAND_MODULES, command
from mxgateway_cli._parser import build_parser
from support.probe import fresh_python

_PROBE = """
import io, json, sys
from mxgateway_cli.main import main
main({argv!r}, stdout=io.StringIO(), stderr=io.StringIO(), env={{}})
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('mxgateway_sim', 'rich'))))
"""


def _loaded(argv: list[str]) -> list[str]:
    return list(fresh_python(_PROBE.format(argv=argv)))


@pytest.mark.parametrize(
    "argv", [["--help"], ["version"], ["--version"], ["read", "--help"], ["version", "--json"]]
)
def test_help_and_version_load_neither_the_simulator_nor_rich(argv: list[str]) -> None:
    loaded = _loaded(argv)
    assert not [m for m in loaded if m.startswith("mxgateway_sim")], loaded
    assert "rich.progress" not in loaded
    assert "rich.console" not in loaded


def test_a_gateway_command_does_not_load_the_simulator() -> None:
    # The connection fails at once (nothing listens on port 1); the imports are what count.
    loaded = _loaded(["read", "X.Y", "--endpoint", "127.0.0.1:1", "--plaintext", "--timeout", "1"])
    assert not [m for m in loaded if m.startswith("mxgateway_sim")], loaded
    assert "rich.progress" not in loaded


def test_the_command_table_matches_the_parser() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMAND_MODULES)
    for name in COMMAND_MODULES:
        assert callable(command(name))


def test_version_info_reports_the_installed_distributions() -> None:
    from importlib import metadata

    import mxgateway

    info = mxgateway.version_info()
    assert info["grpcio"] == metadata.version("grpcio")
    assert info["protobuf"] == metadata.version("protobuf")
