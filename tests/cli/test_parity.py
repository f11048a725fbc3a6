"""Upstream CLI parity: comma-separated bulk flags, the bulk write family, ``batch``,
``bench-read-bulk``, ``stream-alarms`` and ``acknowledge-alarm`` (names and JSON keys as the
other clients of the contract have them), against the shared simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from mxgateway_cli._cmd_parity import BATCH_END_OF_RESULT

from .clirunner import Result, run
from .conftest import SimServer
from .golden import check

WRITABLE = "L1_Tank01_InletValve.Cmd"
LIVE = "L1_Mixer.Current"


class Handles:
    """A session with one registration and the writable item added and advised."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.session = run(["open-session", "--json", *sim.flags]).json()["sessionId"]
        self.base = ["--session-id", self.session, *sim.flags]
        self.hlmx = str(run(["register", "--json", *self.base]).json()["register"]["serverHandle"])
        added = run(
            ["add-item", "--server-handle", self.hlmx, "--item", WRITABLE, "--json", *self.base]
        )
        self.item = str(added.json()["addItem"]["itemHandle"])
        assert (
            run(
                ["advise", "--server-handle", self.hlmx, "--item-handle", self.item, *self.base]
            ).code
            == 0
        )

    def cli(self, command: str, *argv: str, stdin: str = "") -> Result:
        return run(
            [command, "--server-handle", self.hlmx, *argv, "--json", *self.base], stdin=stdin
        )


@pytest.fixture
def handles(sim: SimServer) -> Iterator[Handles]:
    h = Handles(sim)
    try:
        yield h
    finally:
        run(["close-session", *h.base])


def test_read_bulk_items_csv_and_timeout_ms(handles: Handles) -> None:
    csv_form = handles.cli(
        "read-bulk", "--items", f"{LIVE}, {WRITABLE},Nope.Missing", "--timeout-ms", "2000"
    )
    repeated = handles.cli(
        "read-bulk", "--item", LIVE, "--item", WRITABLE, "--item", "Nope.Missing"
    )
    assert csv_form.code == repeated.code == 0, csv_form.err
    rows = csv_form.json()["results"]
    assert [r["tagAddress"] for r in rows] == [LIVE, WRITABLE, "Nope.Missing"]
    assert [r.get("wasSuccessful", False) for r in rows] == [True, True, False]
    assert [r["tagAddress"] for r in repeated.json()["results"]] == [LIVE, WRITABLE, "Nope.Missing"]
    missing = handles.cli("read-bulk")
    assert missing.code == 2
    assert "--items" in missing.error()["message"]


def test_write_bulk_csv_is_the_repeated_form(handles: Handles) -> None:
    csv_form = handles.cli(
        "write-bulk", "--item-handles", f"{handles.item},9999", "--values", "4,5", "--type", "int32"
    )
    repeated = handles.cli(
        "write-bulk",
        "--item-handle",
        handles.item,
        "--value",
        "4",
        "--item-handle",
        "9999",
        "--value",
        "5",
        "--type",
        "int32",
    )
    assert csv_form.code == repeated.code == 0, csv_form.err
    assert csv_form.out == repeated.out
    assert [r.get("wasSuccessful", False) for r in csv_form.json()["results"]] == [True, False]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--item-handles", "1,2", "--values", "4"], "2 handles, 1 values"),
        (["--item-handles", "1,x", "--values", "4,5"], "not an integer"),
        (["--values", "4"], "--item-handles"),
        (["--item-handles", "1", "--values", "nope"], "int32"),
    ],
)
def test_write_bulk_bad_lists_are_usage_errors(
    handles: Handles, argv: list[str], message: str
) -> None:
    result = handles.cli("write-bulk", *argv, "--type", "int32")
    assert result.code == 2
    assert message in result.error()["message"]


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("write2-bulk", ["--timestamp", "2026-01-02T03:04:05Z"]),
        ("write-secured-bulk", ["--current-user-id", "1", "--verifier-user-id", "2"]),
        ("write-secured2-bulk", ["--current-user-id", "1", "--timestamp", "2026-01-02T03:04:05Z"]),
    ],
)
def test_bulk_write_family(handles: Handles, command: str, extra: list[str]) -> None:
    result = handles.cli(
        command,
        "--item-handles",
        f"{handles.item},9999",
        "--values",
        "3,4",
        "--type",
        "int32",
        *extra,
    )
    assert result.code == 0, result.err
    check(command, result.out)


def test_batch_runs_every_line_and_goes_on_after_a_failure(handles: Handles) -> None:
    lines = "\n".join(
        [
            f"read-bulk --session-id {handles.session} --server-handle {handles.hlmx} "
            f"--items {WRITABLE}",
            "",
            "# a comment",
            "no-such-command --x",
            f"mxgw-py write-bulk --session-id {handles.session} --server-handle {handles.hlmx} "
            f"--item-handles {handles.item} --values 2 --type int32",
            "read-bulk --session-id 'unterminated",
        ]
    )
    result = run(["batch", *handles.sim.flags], stdin=lines + "\n")
    assert result.code == 0, result.err
    assert result.err == ""
    chunks = result.out.split(BATCH_END_OF_RESULT + "\n")
    assert chunks[-1] == ""
    documents = [json.loads(chunk) for chunk in chunks[:-1]]
    assert len(documents) == 4
    assert documents[0]["results"][0]["tagAddress"] == WRITABLE
    assert set(documents[1]) == {"error", "type"} and documents[1]["type"] == "error"
    assert "no-such-command" in documents[1]["error"]
    assert documents[2]["results"][0]["wasSuccessful"] is True
    assert documents[3]["type"] == "error"


def test_batch_lines_inherit_the_environment_and_never_echo_the_key(sim: SimServer) -> None:
    result = run(
        ["batch"],
        env=sim.env(),
        stdin="galaxy-test-connection\nread-bulk --session-id nope --server-handle 1 --items A.B\n",
    )
    assert result.code == 0, result.err
    first, second, rest = result.out.split(BATCH_END_OF_RESULT + "\n")
    assert json.loads(first) == {"ok": True}
    assert json.loads(second)["type"] == "error"
    assert rest == ""
    assert sim.env()["MXGATEWAY_API_KEY"] not in result.out


def test_bench_read_bulk_has_upstreams_keys(sim: SimServer) -> None:
    result = run(
        [
            "bench-read-bulk",
            "--items",
            f"{LIVE},{WRITABLE}",
            "--duration-seconds",
            "1",
            "--json",
            *sim.flags,
        ]
    )
    assert result.code == 0, result.err
    document: dict[str, Any] = result.json()
    assert list(document) == [
        "language",
        "durationMs",
        "totalCalls",
        "successfulCalls",
        "failedCalls",
        "totalReadResults",
        "cachedReadResults",
        "callsPerSecond",
        "latencyMs",
    ]
    assert list(document["latencyMs"]) == ["p50", "p95", "p99", "max", "mean"]
    assert document["language"] == "python"
    assert document["totalCalls"] == document["successfulCalls"] > 0
    assert document["totalReadResults"] == 2 * document["totalCalls"]
    assert document["cachedReadResults"] == document["totalReadResults"]  # advised first


def test_stream_alarms_and_acknowledge(sim: SimServer) -> None:
    result = run(["stream-alarms", "--max-messages", "50", "--timeout", "3", "--json", *sim.flags])
    assert result.code == 0, result.err
    messages = result.json()["messages"]
    kinds = [next(iter(m)) for m in messages]
    assert "snapshotComplete" in kinds
    active = [m["activeAlarm"] for m in messages if "activeAlarm" in m]
    filtered = run(
        [
            "stream-alarms",
            "--filter-prefix",
            "ZB!L1_Tank",
            "--max-messages",
            "50",
            "--timeout",
            "2",
            "--json",
            *sim.flags,
        ]
    )
    assert filtered.code == 0, filtered.err
    for message in filtered.json()["messages"]:
        body = message.get("activeAlarm") or message.get("transition")
        if body:
            assert body["alarmFullReference"].startswith("ZB!L1_Tank")
    unacked = [a for a in active if a["state"] == "ALARM_CONDITION_STATE_ACTIVE_UNACKNOWLEDGED"]
    assert unacked, "the simulator raises some alarms at start"
    reference = unacked[0]["alarmFullReference"]
    acked = run(
        [
            "acknowledge-alarm",
            "--reference",
            reference,
            "--comment",
            "seen",
            "--operator",
            "jdoe",
            "--json",
            *sim.flags,
        ]
    )
    assert acked.code == 0, acked.err
    assert acked.json()["protocolStatus"]["code"] == "PROTOCOL_STATUS_CODE_OK"
    unknown = run(["acknowledge-alarm", "--reference", "ZB!No.Such", "--json", *sim.flags])
    assert unknown.code == 8
    assert "no such alarm" in unknown.error()["message"]
    human = run(["stream-alarms", "--max-messages", "1", "--timeout", "3", *sim.flags])
    assert human.code == 0, human.err
    assert human.out.strip()


def test_batch_ctrl_c_ends_at_once_while_waiting_for_a_line(sim: SimServer) -> None:
    import signal
    import subprocess
    import time

    from .conftest import CLI, with_default_sigint

    process = subprocess.Popen(
        with_default_sigint([*CLI, "batch"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=sim.env(),
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("galaxy-test-connection\n")
        process.stdin.flush()
        lines = []
        while BATCH_END_OF_RESULT not in lines:
            lines.append(process.stdout.readline().rstrip("\n"))
        # Now it waits for the next line, which never comes (stdin stays open).
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert json.loads("\n".join(lines[:-1])) == {"ok": True}


def test_galaxy_watch_prints_one_line_per_deploy_event_for_people(sim: SimServer) -> None:
    # The bootstrap event (the Galaxy's current deploy), as a line: sequence, deploy time
    # (protobuf-JSON text) and counts; --json has every field.
    doc = run(["galaxy-watch", "--max-events", "1", "--timeout", "30", "--json", *sim.flags])
    assert doc.code == 0, doc.err
    (event,) = doc.json()["events"]
    human = run(["galaxy-watch", "--max-events", "1", "--timeout", "30", *sim.flags])
    assert human.code == 0, human.err
    assert human.out == (
        f"#1 deploy={event['timeOfLastDeploy']} objects={event['objectCount']} "
        f"attributes={event['attributeCount']}\n"
    )
