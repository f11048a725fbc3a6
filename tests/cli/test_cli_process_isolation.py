"""The CLI against ``mxgw-sim serve --session-isolation process``: the golden scenario gives
byte-identical JSON and the spec's CLI section runs, with every session in its own worker;
``mxgw-gateway`` is the same program, and ``--runtime mxaccess`` fails clearly off Windows."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from .conftest import CLI, KEY, SimServer, cli_sim, stop_sim
from .test_golden import GOLDEN_COMMANDS, check
from .test_golden import scenario as scenario  # re-run here against this module's server
from .test_processes import test_spec_cli_section_in_separate_processes as _spec_section

pytestmark = pytest.mark.slow  # real processes or TLS handshakes: left out of the fast loop

GATEWAY = [sys.executable, "-c", "from mxgateway_sim.cli import run_gateway; run_gateway()"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    """The CLI tests' simulator, with one worker process per session."""
    with cli_sim(
        tmp_path_factory.mktemp("cli-process"), "--session-isolation", "process"
    ) as server:
        yield server


@pytest.mark.parametrize("command", GOLDEN_COMMANDS)
def test_golden_json_is_the_same_in_process_isolation(scenario: object, command: str) -> None:
    check(command, scenario.results[command].out)  # type: ignore[attr-defined]


def test_spec_cli_section_in_process_isolation(sim: SimServer) -> None:
    _spec_section(sim)


def test_mxgw_gateway_serves_the_simulated_runtime() -> None:
    bad = subprocess.run(
        [*GATEWAY, "serve", "--runtime", "nonsense"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("mxgw-gateway serve: error: argument --runtime")
    process = subprocess.Popen(
        [
            *GATEWAY,
            "serve",
            "--runtime",
            "simulated",
            "--session-isolation",
            "process",
            "--listen",
            "127.0.0.1:0",
            "--plaintext",
            "--api-key-env",
            "MXGW_TEST_KEY",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "MXGW_TEST_KEY": KEY},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # bounded by the test timeout
        assert line.startswith("mxgw-gateway listening on 127.0.0.1:")
        endpoint = line.split()[3]
        smoke = subprocess.run(
            [
                *CLI,
                "smoke",
                "--endpoint",
                endpoint,
                "--plaintext",
                "--api-key-env",
                "MXGW_TEST_KEY",
                "--item",
                "L1_Tank01.Level",  # a real tag: smoke fails on an unknown one
                "--max-events",
                "1",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "MXGW_TEST_KEY": KEY},
        )
        assert smoke.returncode == 0, smoke.stderr
    finally:
        stop_sim(process)


@pytest.mark.skipif(sys.platform == "win32", reason="MXAccess may be installed here")
@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_the_mxaccess_runtime_off_windows_is_one_clear_line(isolation: str) -> None:
    out = subprocess.run(
        [
            *GATEWAY,
            "serve",
            "--runtime",
            "mxaccess",
            "--session-isolation",
            isolation,
            "--listen",
            "127.0.0.1:0",
            "--plaintext",
            "--allow-anonymous",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("mxgw-gateway: error: the mxaccess runtime needs Windows")
