"""``read``, ``watch`` and ``set``: tags by name against the shared simulator, JSON and
human forms pinned by golden files (times and live values normalised here, not in the CLI).
"""

from __future__ import annotations

import json
import os
import re

from .clirunner import Result, run
from .conftest import SimServer
from .golden import GOLDEN, check

STEADY = ["L1_Mixer.Description", "L1_Mixer.LastMaintenance", "L1_Tank02.Level.HiLimit"]
"""Tags whose values never change in the simulator (String, Time, Double)."""
ARRAY = "L1_Tank02.BatchIds[]"
"""A whole String array (steady too)."""
LIVE = "L1_Mixer.Current"
"""A Float that changes on every scan."""
WRITABLE = "L1_Tank01_InletValve.Cmd"
"""An Integer with security classification Operate."""
SECURED = "L1_Pump01.Cmd"
"""An Integer with security classification SecuredWrite: a plain write is refused."""

_LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")


def _human(name: str, result: Result) -> None:
    """Compare human output (local times replaced) with ``golden/<name>.txt``."""
    text = _LOCAL_TIME.sub("<local-time>", result.out)
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("MXGW_UPDATE_GOLDEN") == "1":
        path.write_text(text)
        return
    assert text == path.read_text(), f"{name}: output differs from {path}"


def _cli(sim: SimServer, *argv: str) -> Result:
    return run([*argv, *sim.flags])


def test_read_json_and_human(sim: SimServer) -> None:
    result = _cli(sim, "read", *STEADY, ARRAY, "--json")
    assert result.code == 0, result.err
    assert result.err == ""
    rows = result.json()["values"]
    assert [r["tag"] for r in rows] == [*STEADY, ARRAY]
    assert rows[1]["value"] == "2025-01-13T09:00:00Z"
    assert rows[3]["dataType"] == "String[]"
    for row in rows:
        row["timestamp"] = "<timestamp>"
    check("read", json.dumps(result.json() | {"values": rows}))
    human = _cli(sim, "read", *STEADY, ARRAY)
    assert human.code == 0, human.err
    _human("read", human)


def test_read_float_keeps_its_own_precision(sim: SimServer) -> None:
    row = _cli(sim, "read", LIVE, "--json").json()["values"][0]
    assert row["dataType"] == "Float"
    # The shortest decimal that is the same 32-bit float: at most 9 significant digits.
    assert len(repr(row["value"]).replace(".", "").lstrip("-0")) <= 9


def test_read_unknown_tag_prints_the_rows_then_fails_with_a_hint(sim: SimServer) -> None:
    result = _cli(sim, "read", STEADY[0], "L1_Mixer.NoSuchAttribute", "--json")
    assert result.code == 3
    rows = result.json()["values"]
    assert rows[1]["qualityText"].startswith("Bad")
    assert "CONFIGURATION_ERROR" in rows[1]["error"]
    error = result.error()
    assert error["code"] == "NOT_FOUND"
    assert "L1_Mixer.NoSuchAttribute" in error["message"]
    assert "galaxy-discover --tag-glob 'L1_Mixer*'" in error["hint"]
    human = _cli(sim, "read", "Nope.Missing")
    assert human.code == 3
    assert human.err.splitlines()[1].startswith("mxgw-py: hint: check the name")


def test_read_array_without_brackets_says_to_add_them(sim: SimServer) -> None:
    result = _cli(sim, "read", "L1_Mixer.Setpoints", "--json")
    assert result.code == 8
    assert "L1_Mixer.Setpoints[]" in result.error()["hint"]
    whole = _cli(sim, "read", "L1_Mixer.Setpoints[]", "--json")
    assert whole.code == 0, whole.err
    assert whole.json()["values"][0]["dataType"] == "Integer[]"


def test_watch_json_ndjson_and_human(sim: SimServer) -> None:
    result = _cli(sim, "watch", LIVE, "--max-events", "3", "--json")
    assert result.code == 0, result.err
    events = result.json()["events"]
    assert len(events) == 3
    assert all(e["tag"] == LIVE and e["qualityText"] == "Good" for e in events)
    sequences = [e["workerSequence"] for e in events]
    assert sequences == sorted(sequences)
    for event in events:
        event["value"] = "<value>"
        event["timestamp"] = "<timestamp>"
        event["workerSequence"] = "<sequence>"
    check("watch", json.dumps({"events": events}))
    lines = _cli(sim, "watch", *STEADY, "--max-events", "3", "--ndjson")
    assert [json.loads(line)["tag"] for line in lines.out.splitlines()] == STEADY
    human = _cli(sim, "watch", *STEADY, "--max-events", "3")
    assert human.code == 0, human.err
    _human("watch", human)


def test_watch_duration_ends_with_exit_0(sim: SimServer) -> None:
    result = _cli(sim, "watch", STEADY[0], "--duration", "1", "--json")
    assert result.code == 0, result.err
    # A steady tag: only its current value arrives in the window.
    assert [e["tag"] for e in result.json()["events"]] == [STEADY[0]]


def test_set_writes_with_the_attributes_type_and_reports_the_outcome(sim: SimServer) -> None:
    assert _cli(sim, "set", WRITABLE, "5").code == 0
    result = _cli(sim, "set", WRITABLE, "7", "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["previousValue"] == 5
    assert document["value"] == 7
    assert document["succeeded"] is True
    check("set", result.out)
    assert _cli(sim, "read", WRITABLE, "--json").json()["values"][0]["value"] == 7
    human = _cli(sim, "set", WRITABLE, "8")
    assert human.code == 0, human.err
    _human("set", human)


def test_set_refused_write_and_bad_value(sim: SimServer) -> None:
    refused = _cli(sim, "set", SECURED, "1", "--json")
    assert refused.code == 8
    assert refused.error()["code"] == "SECURITY_ERROR"
    bad = _cli(sim, "set", WRITABLE, "seven", "--json")
    assert bad.code == 2
    assert "int32" in bad.error()["message"]
    # A value MXAccess cannot convert: the type is named, not numbered.
    unconvertible = _cli(sim, "set", WRITABLE, "abc", "--type", "string", "--json")
    assert unconvertible.code == 8
    assert "converted to Integer (MX data type 2)" in unconvertible.error()["message"]
    unknown = _cli(sim, "set", "Nope.Missing", "1", "--json")
    assert unknown.code == 3
    assert "hint" in unknown.error()
    array = _cli(sim, "set", ARRAY, "1", "--json")
    assert array.code == 2
    assert "array" in array.error()["message"]


def test_single_commands_print_one_line_for_people(sim: SimServer) -> None:
    session = _cli(sim, "open-session").out.strip()
    base = ["--session-id", session]
    try:
        assert _cli(sim, "register", *base).out == "REGISTER: server handle 1\n"
        added = _cli(sim, "add-item", *base, "--server-handle", "1", "--item", STEADY[0])
        assert added.out == "ADD_ITEM: item handle 1\n"
        advised = _cli(sim, "advise", *base, "--server-handle", "1", "--item-handle", "1")
        assert advised.out == "ADVISE: OK\n"
    finally:
        closed = _cli(sim, "close-session", *base)
    assert closed.out == (
        f"closed {session} (CLOSED): released 1 advise(s), 1 item(s), 1 registration(s)\n"
    )


def test_smoke_fails_on_a_bad_first_value_naming_the_status(sim: SimServer) -> None:
    result = _cli(sim, "smoke", "--item", "Nope.Missing", "--json")
    assert result.code == 3
    assert result.json()["eventCount"] == 1  # the document is printed first
    error = result.error()
    assert "CONFIGURATION_ERROR" in error["message"] and "Nope.Missing" in error["message"]
    good = _cli(sim, "smoke", "--item", STEADY[0], "--json")
    assert good.code == 0, good.err


def test_watch_ctrl_c_exits_130_with_a_valid_document(sim: SimServer) -> None:
    from .conftest import CLI, ctrl_c_after

    code, out, err = ctrl_c_after([*CLI, "watch", LIVE, "--json"], sim.env(), '"tag"', 60)
    assert code == 130, err
    assert json.loads(err)["error"]["code"] == "INTERRUPTED"
    events = json.loads(out)["events"]
    assert events and all(e["tag"] == LIVE for e in events)
