"""A real ``mxgw-sim serve`` process shared by the CLI tests (plaintext, loopback, port 0).

Two API keys with recognisable secrets: an all-scopes key and a read-only key (no
``invoke:write``), so tests can check both authorization and that keys never leak.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

KEY = "mxgw_clitest_RecognisableSecretValue0123456789"
"""All-scopes key of the shared simulator."""
READ_ONLY_KEY = "mxgw_clireader_AnotherRecognisableSecret987"
"""Key with every scope except ``invoke:write``, ``invoke:secure`` and ``admin``."""

SIM = [sys.executable, "-c", "from mxgateway_sim.cli import run; run()"]
"""``mxgw-sim`` without relying on the console script being installed."""
CLI = [sys.executable, "-m", "mxgateway_cli"]
"""``mxgw-py`` without relying on the console script being installed."""

START_TIMEOUT = 60.0


@dataclass
class SimServer:
    """A running simulator: where it is and how to reach it."""

    endpoint: str
    process: subprocess.Popen[str]
    ca_file: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def flags(self) -> list[str]:
        """Connection flags for the CLI (plaintext, all-scopes key)."""
        return ["--endpoint", self.endpoint, "--plaintext", "--api-key", KEY]

    def env(self) -> dict[str, str]:
        """Environment for ``mxgw-py`` subprocesses: connection defaults via MXGATEWAY_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MXGATEWAY_")}
        env.update(
            {
                "MXGATEWAY_ENDPOINT": self.endpoint,
                "MXGATEWAY_PLAINTEXT": "1",
                "MXGATEWAY_API_KEY": KEY,
                "COLUMNS": "200",
            }
        )
        return env


def start_sim(args: list[str], log: Path) -> SimServer:
    """Start ``mxgw-sim serve ... --json`` and wait (with a deadline) for its listening line."""
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [*SIM, "serve", "--listen", "127.0.0.1:0", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT
    line = ""
    try:
        while not line:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                stop_sim(process)
                raise RuntimeError(f"mxgw-sim did not start: {log.read_text()[-2000:]}")
            if selector.select(remaining):
                line = process.stdout.readline()
    finally:
        selector.close()
    info = json.loads(line)
    return SimServer(
        endpoint=info["address"],
        process=process,
        ca_file=info.get("caFile"),
        extra={k: str(v) for k, v in info.items() if v is not None},
    )


def stop_sim(process: subprocess.Popen[str]) -> None:
    """Graceful stop (SIGTERM), then kill after a deadline; pipes closed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
    if process.stdout is not None:
        process.stdout.close()


def with_default_sigint(argv: list[str]) -> list[str]:
    """``argv`` run with SIGINT at its default action, as a shell runs a foreground job.

    A suite started in the background by a non-interactive shell (``pytest &`` in a script)
    inherits SIGINT as ignored, and an ignored signal stays ignored across exec: Ctrl+C
    would never reach the CLI. Reset it, then exec the command.
    """
    reset = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", reset, *argv]


def ctrl_c_after(
    argv: list[str], env: dict[str, str], marker: str, timeout: float
) -> tuple[int, str, str]:
    """Run ``argv`` (SIGINT at its default action), wait until its stdout shows ``marker``,
    press Ctrl+C (SIGINT) and return its exit code, its whole stdout and its stderr."""
    process = subprocess.Popen(
        with_default_sigint(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out = ""
    try:
        assert process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while marker not in out and time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                out += process.stdout.readline()
        selector.close()
        assert marker in out, out
        process.send_signal(signal.SIGINT)
        # Read on through the same buffered reader (communicate() would skip what it holds).
        out += process.stdout.read()
        _, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


@contextlib.contextmanager
def cli_sim(root: Path, *args: str) -> Iterator[SimServer]:
    """A plaintext simulator for the CLI tests in ``root`` (its key file, private Galaxy
    DB and log; Good quality only) with ``args`` added, stopped after. Keys: :data:`KEY`
    (every scope) and :data:`READ_ONLY_KEY` (reads only)."""
    keys = root / "keys.json"
    reader_scopes = ["session:open", "session:close", "invoke:read", "events:read", "metadata:read"]
    keys.write_text(
        json.dumps(
            {
                "keys": [
                    {"key": KEY, "name": "cli-tests"},
                    {"key": READ_ONLY_KEY, "name": "cli-reader", "scopes": reader_scopes},
                ]
            }
        )
    )
    server = start_sim(
        [
            "--plaintext",
            "--api-keys-file",
            str(keys),
            "--galaxy-db",
            str(root / "galaxy.db"),
            "--no-quality-faults",
            *args,
        ],
        root / "sim.log",
    )
    try:
        yield server
    finally:
        stop_sim(server.process)


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    """The shared plaintext simulator (private Galaxy DB, Good quality only)."""
    with cli_sim(tmp_path_factory.mktemp("cli-sim")) as server:
        yield server
