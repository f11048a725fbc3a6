"""The spec's CLI commands run verbatim, each in its own process, sharing one session.

Connection defaults come from ``MXGATEWAY_ENDPOINT`` / ``MXGATEWAY_PLAINTEXT`` /
``MXGATEWAY_API_KEY`` (the spec's commands after ``open-session`` carry no connection flags),
ids are the real ones the previous process printed. Also: the TLS smoke line of the spec,
Ctrl+C (exit 130) and ``mxgw-py demo`` with no flags.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mxgateway_cli._exit_codes import ExitCode

from .conftest import CLI, KEY, SimServer, ctrl_c_after, start_sim, stop_sim

pytestmark = pytest.mark.slow  # real processes or TLS handshakes: left out of the fast loop

ITEM = "L2_Valve01.Cmd"
"""The spec's ``Object.Attribute``: an Integer that changes on its own and can be written.

A write pins a simulated attribute for every session of the shared simulator, so each test
here uses its own attribute and no other test writes to them."""
SMOKE_ITEM = "L3_Valve01.Cmd"
"""Changes on its own; only advised (never written) by the smoke tests."""
PROCESS_TIMEOUT = 60


def mxgw_py(sim: SimServer, *argv: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``mxgw-py ARGV`` in a new process; it must succeed and print one JSON document."""
    result = subprocess.run(
        [*CLI, *argv],
        capture_output=True,
        text=True,
        env=env or sim.env(),
        timeout=PROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{argv}: {result.returncode}: {result.stderr}"
    assert KEY not in result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def test_spec_cli_section_in_separate_processes(sim: SimServer) -> None:
    assert "package" in mxgw_py(sim, "version", "--json")
    opened = mxgw_py(sim, "open-session", "--endpoint", sim.endpoint, "--plaintext", "--json")
    session_id = str(opened["sessionId"])
    assert session_id.startswith("session-")
    try:
        reg = mxgw_py(
            sim, "register", "--session-id", session_id, "--client-name", "python-client", "--json"
        )
        server_handle = str(reg["register"]["serverHandle"])  # type: ignore[index]
        added = mxgw_py(
            sim,
            "add-item",
            "--session-id",
            session_id,
            "--server-handle",
            server_handle,
            "--item",
            ITEM,
            "--json",
        )
        item_handle = str(added["addItem"]["itemHandle"])  # type: ignore[index]
        mxgw_py(
            sim,
            "advise",
            "--session-id",
            session_id,
            "--server-handle",
            server_handle,
            "--item-handle",
            item_handle,
            "--json",
        )
        events = mxgw_py(
            sim, "stream-events", "--session-id", session_id, "--max-events", "1", "--json"
        )["events"]
        assert isinstance(events, list) and len(events) == 1
        assert events[0]["sessionId"] == session_id
        assert events[0]["onDataChange"]["itemHandle"] == int(item_handle)
        written = mxgw_py(
            sim,
            "write",
            "--session-id",
            session_id,
            "--server-handle",
            server_handle,
            "--item-handle",
            item_handle,
            "--type",
            "int32",
            "--value",
            "123",
            "--json",
        )
        assert written["kind"] == "MX_COMMAND_KIND_WRITE"
        assert written["sessionId"] == session_id
    finally:
        closed = mxgw_py(sim, "close-session", "--session-id", session_id, "--json")
    assert closed["releasedAdviseCount"] == 1
    assert closed["finalState"] == "SESSION_STATE_CLOSED"


def test_integration_check_smoke_line(sim: SimServer) -> None:
    env = sim.env()
    env["MXGATEWAY_TEST_ITEM"] = SMOKE_ITEM
    document = mxgw_py(
        sim,
        "smoke",
        "--endpoint",
        sim.endpoint,
        "--plaintext",
        "--api-key-env",
        "MXGATEWAY_API_KEY",
        "--item",
        env["MXGATEWAY_TEST_ITEM"],
        "--json",
        env=env,
    )
    assert document["eventCount"] == 1
    assert document["closeSession"]["finalState"] == "SESSION_STATE_CLOSED"  # type: ignore[index]


def test_tls_smoke_line(tmp_path: Path, sim: SimServer) -> None:
    tls_sim = start_sim(
        [
            "--tls-self-signed",
            str(tmp_path / "tls"),
            "--api-key",
            KEY,
            "--no-quality-faults",
            "--galaxy-db",
            str(tmp_path / "galaxy.db"),
        ],
        tmp_path / "tls-sim.log",
    )
    try:
        assert tls_sim.ca_file is not None
        port = tls_sim.endpoint.rsplit(":", 1)[1]
        env = sim.env()
        for name in ("MXGATEWAY_ENDPOINT", "MXGATEWAY_PLAINTEXT"):
            env.pop(name)
        document = mxgw_py(
            tls_sim,
            "smoke",
            "--endpoint",
            f"127.0.0.1:{port}",
            "--tls",
            "--ca-file",
            tls_sim.ca_file,
            "--server-name-override",
            "localhost",
            "--api-key-env",
            "MXGATEWAY_API_KEY",
            "--item",
            SMOKE_ITEM,
            "--json",
            env=env,
        )
        assert document["eventCount"] == 1
    finally:
        stop_sim(tls_sim.process)


def test_ctrl_c_exits_130(sim: SimServer) -> None:
    session_id = str(
        mxgw_py(sim, "open-session", "--endpoint", sim.endpoint, "--plaintext", "--json")[
            "sessionId"
        ]
    )
    base = ["--session-id", session_id, "--json"]
    hlmx = str(mxgw_py(sim, "register", *base)["register"]["serverHandle"])  # type: ignore[index]
    added = mxgw_py(sim, "add-item", *base, "--server-handle", hlmx, "--item", "L1_Mixer.Current")
    item = str(added["addItem"]["itemHandle"])  # type: ignore[index]
    mxgw_py(sim, "advise", *base, "--server-handle", hlmx, "--item-handle", item)
    try:
        # It streams once the document has begun on stdout; under --json nothing but the
        # final error document may go to stderr.
        code, out, err = ctrl_c_after(
            [*CLI, "stream-events", "--session-id", session_id, "--after-sequence", "0", "--json"],
            sim.env(),
            '"events"',
            PROCESS_TIMEOUT,
        )
    finally:
        mxgw_py(sim, "close-session", "--session-id", session_id, "--json")
    assert code == ExitCode.INTERRUPTED, err
    assert json.loads(err)["error"]["code"] == "INTERRUPTED"  # stderr: exactly one document
    assert json.loads(out)["events"], out  # stdout: closed, still valid JSON


def _console_script() -> list[str]:
    """The installed ``mxgw-py`` script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("mxgw-py")
    return [str(script)] if script.exists() else CLI


@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_demo_runs_with_no_flags(flags: list[str]) -> None:
    result = subprocess.run(
        [*_console_script(), "demo", *flags],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if flags:
        document = json.loads(result.stdout)
        assert document["dataChanges"] == 6
        assert document["write"]["writeCompleteReceived"] is True
        assert document["write"]["writtenValueArrived"] is True
        assert document["write"]["succeeded"] is True  # the OnWriteComplete said OK
        assert document["closeSession"]["finalState"] == "SESSION_STATE_CLOSED"
    else:
        for step in ("Galaxy Repository", "Live data changes", "Write", "Bulk read", "Close"):
            assert step in result.stdout
        assert "ON_WRITE_COMPLETE" in result.stdout
        # Piped, the section headings stay a terminal's width (not 4,096 columns of rule).
        assert max(len(line) for line in result.stdout.splitlines() if "─" in line) <= 80


def test_closed_stdout_pipe_ends_quietly_with_141(sim: SimServer) -> None:
    # `mxgw-py galaxy-discover --json | head -c 100`: the reader leaves early.
    process = subprocess.Popen(
        [*CLI, "galaxy-discover", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=sim.env(),
    )
    assert process.stdout is not None and process.stderr is not None
    head = process.stdout.read(100)
    process.stdout.close()
    with process.stderr:
        stderr = process.stderr.read().decode()
    assert process.wait(timeout=PROCESS_TIMEOUT) == ExitCode.BROKEN_PIPE
    assert head.startswith(b"{")
    assert stderr == ""
