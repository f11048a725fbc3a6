"""README.md and docs/cli.md's quick tour run as written, against the servers they start.

Every ``bash`` and ``python`` block is run in document order in one ``bash`` process (a
``python`` block through ``python - <<EOF``, as a reader would paste it), with one change:
the documented port 5000 becomes a free port, so the test never collides with anything.
Nothing else is substituted: the key comes from the blocks themselves (``mxgw-sim keys
create`` into ``MXGATEWAY_API_KEY``), the simulator is the one the blocks start in the
background, and the first command after it runs at once (no sleep), as a reader would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mxgateway_cli._exit_codes import ExitCode

from .clirunner import run
from .conftest import SimServer

pytestmark = pytest.mark.slow  # real processes or TLS handshakes: left out of the fast loop

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
_QUICK_START = {
    'python -m pip install -e ".[dev]" && mxgw-py demo\n',
    'python -m pip install -e ".[dev]" && python -m pytest\n',
}
"""The README's install lines: not run here (no installing, no recursive test run)."""


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(lang, code) for lang, code in _BLOCK.findall(text)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _script(blocks: list[tuple[str, str]], port: int) -> str:
    parts = ["set -e"]
    for lang, code in blocks:
        code = code.replace(":5000", f":{port}")
        if lang == "python":
            parts.append(f"python - <<'MXGW_DOC_PYTHON'\n{code}MXGW_DOC_PYTHON")
        else:
            parts.append(code)
    return "\n".join(parts) + "\n"


def _run_blocks(blocks: list[tuple[str, str]]) -> subprocess.CompletedProcess[str]:
    """Run the blocks in one new process group; whatever they leave running is ended."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXGATEWAY_")}
    # `python`, `mxgw-py` and `mxgw-sim` of this environment, as after the README's install.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    script = _script(blocks, _free_port())
    proc = subprocess.Popen(
        ["bash", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        # The group this test created: a simulator the blocks failed to stop.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _json_documents(text: str) -> list[object]:
    """The JSON documents printed one after another (pretty-printed or not)."""
    decoder = json.JSONDecoder()
    docs: list[object] = []
    i = 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return docs
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)


def test_readme_runs_verbatim() -> None:
    blocks = _blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert {code for _, code in blocks[:2]} == _QUICK_START
    runnable = blocks[2:]
    assert [lang for lang, _ in runnable].count("python") == 1
    result = _run_blocks(runnable)
    assert result.returncode == 0, result.stderr
    # The library example printed the first value of its tag: the one Advise raised.
    assert re.search(r"^DataChange\(worker_sequence=1, .*item_handle=1, ", result.stdout, re.M)
    documents = [d for d in _json_documents(result.stdout) if isinstance(d, dict)]
    assert str(documents[0].get("sessionId", "")).startswith("session-")  # open-session
    # The tag the README relies on is part of the simulator's default Galaxy.
    assert "L1_Tank01" in result.stdout and '"tagName"' in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_quick_tour_runs_verbatim() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    tour = doc[doc.index("## Quick tour") : doc.index("## Connection flags")]
    blocks = _blocks(tour)
    assert len(blocks) >= 2
    result = _run_blocks(blocks)
    assert result.returncode == 0, result.stderr
    documents = [d for d in _json_documents(result.stdout) if isinstance(d, dict)]
    events = next(d["events"] for d in documents if "events" in d)
    assert [e["workerSequence"] for e in events] == ["1"]  # the value advise raised
    assert "onDataChange" in events[0]
    write = next(d for d in documents if d.get("kind") == "MX_COMMAND_KIND_WRITE")
    assert write["succeeded"] is True and "writeComplete" in write
    assert any(d.get("finalState") == "SESSION_STATE_CLOSED" for d in documents)
    assert "Traceback" not in result.stderr


def test_stream_events_starts_with_what_advise_raised(sim: SimServer) -> None:
    session = run(["open-session", *sim.flags]).out.strip()
    base = ["--session-id", session, *sim.flags]
    try:
        hlmx = str(run(["register", "--json", *base]).json()["register"]["serverHandle"])
        static = "L1_Tank01.Level.HiLimit"  # a limit: its value never changes by itself
        added = run(["add-item", "--server-handle", hlmx, "--item", static, "--json", *base])
        item = str(added.json()["addItem"]["itemHandle"])
        assert run(["advise", "--server-handle", hlmx, "--item-handle", item, *base]).code == 0
        first = run(["stream-events", "--max-events", "1", "--timeout", "30", "--json", *base])
        assert first.code == 0, first.err
        events = first.json()["events"]
        assert [e["workerSequence"] for e in events] == ["1"]
        assert events[0]["onDataChange"]["itemHandle"] == int(item)
        live = run(["stream-events", "--new-only", "--timeout", "0.5", "--json", *base])
        assert live.code == 0, live.err
        assert live.json() == {"events": []}
        both = run(["stream-events", "--new-only", "--after-sequence", "0", "--json", *base])
        assert both.code == ExitCode.USAGE
    finally:
        run(["close-session", *base])
