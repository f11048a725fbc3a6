"""Exit codes and error documents from a real gateway, and that keys never leak."""

from __future__ import annotations

import json
import subprocess

import pytest

from mxgateway_cli._exit_codes import ExitCode

from .clirunner import Result, run
from .conftest import CLI, KEY, READ_ONLY_KEY, SimServer

UNKNOWN_SESSION = "session-00000000000000000000000000000000"


def _no_secrets(result: Result) -> None:
    text = result.out + result.err
    for secret in (KEY, READ_ONLY_KEY, "RecognisableSecret", "AnotherRecognisable"):
        assert secret not in text


def _unknown_session(sim: SimServer, command: str, *flags: str) -> Result:
    """Run ``command`` with ``flags`` under ``--json`` on a session the gateway does not
    know."""
    return run([command, "--session-id", UNKNOWN_SESSION, *flags, "--json", *sim.flags])


def _error(result: Result, exit_code: ExitCode, code: str) -> dict[str, object]:
    assert result.code == exit_code, result.err
    assert result.out == ""
    error = result.error()
    assert error["exitCode"] == int(exit_code)
    assert error["code"] == code
    assert "Traceback" not in result.err
    _no_secrets(result)
    return error


def test_unknown_session_on_invoke_is_not_found(sim: SimServer) -> None:
    result = _unknown_session(sim, "register", "--client-name", "x")
    error = _error(result, ExitCode.NOT_FOUND, "SESSION_NOT_FOUND")
    assert error["type"] == "MxGatewaySessionNotFoundError"


def test_unknown_session_on_close_is_not_found(sim: SimServer) -> None:
    result = _unknown_session(sim, "close-session")
    _error(result, ExitCode.NOT_FOUND, "NOT_FOUND")


def test_unknown_session_on_stream_is_not_found(sim: SimServer) -> None:
    result = _unknown_session(sim, "stream-events", "--timeout", "30")
    _error(result, ExitCode.NOT_FOUND, "NOT_FOUND")


def test_unknown_key_is_auth_error_and_never_printed(sim: SimServer) -> None:
    bad = "mxgw_clitest_WrongSecretThatMustNotAppear42"
    result = run(
        [
            "galaxy-test-connection",
            "--endpoint",
            sim.endpoint,
            "--plaintext",
            "--api-key",
            bad,
            "--json",
        ]
    )
    _error(result, ExitCode.AUTH, "UNAUTHENTICATED")
    assert "WrongSecretThatMustNotAppear42" not in result.out + result.err


def test_missing_key_is_auth_error(sim: SimServer) -> None:
    result = run(["galaxy-last-deploy", "--endpoint", sim.endpoint, "--plaintext", "--json"])
    _error(result, ExitCode.AUTH, "UNAUTHENTICATED")


def test_key_from_environment_variable(sim: SimServer) -> None:
    result = run(
        [
            "galaxy-test-connection",
            "--endpoint",
            sim.endpoint,
            "--plaintext",
            "--api-key-env",
            "MY_GATEWAY_KEY",
            "--json",
        ],
        env={"MY_GATEWAY_KEY": KEY},
    )
    assert result.code == 0, result.err
    assert result.json() == {"ok": True}
    _no_secrets(result)


def test_missing_scope_is_permission_error(sim: SimServer) -> None:
    reader = ["--endpoint", sim.endpoint, "--plaintext", "--api-key", READ_ONLY_KEY]
    opened = run(["open-session", "--json", *reader]).json()
    session = opened["sessionId"]
    try:
        handle = run(
            ["register", "--session-id", session, "--client-name", "r", "--json", *reader]
        ).json()["register"]["serverHandle"]
        result = run(
            [
                "write",
                "--session-id",
                session,
                "--server-handle",
                str(handle),
                "--item-handle",
                "1",
                "--type",
                "int32",
                "--value",
                "1",
                "--json",
                *reader,
            ]
        )
        _error(result, ExitCode.PERMISSION, "PERMISSION_DENIED")
    finally:
        assert run(["close-session", "--session-id", session, *reader]).code == 0


def test_mxaccess_failure_exit_code(sim: SimServer) -> None:
    session = run(["open-session", "--json", *sim.flags]).json()["sessionId"]
    try:
        base = ["--session-id", session, "--json", *sim.flags]
        hlmx = run(["register", "--client-name", "m", *base]).json()["register"]["serverHandle"]
        item = run(
            ["add-item", "--server-handle", str(hlmx), "--item", "L1_Mixer.RunHours", *base]
        ).json()["addItem"]["itemHandle"]
        write = ["write", "--server-handle", str(hlmx), "--item-handle", str(item)]
        value = ["--type", "double", "--value", "1.5"]
        # Not advised: MXAccess throws at once (an argument error, E_INVALIDARG).
        error = _error(run([*write, *value, *base]), ExitCode.MXACCESS, "MXACCESS_FAILURE")
        assert error["type"] == "MxAccessError"
        assert "advise the item before writing" in str(error["message"])
        run(["advise", "--server-handle", str(hlmx), "--item-handle", str(item), *base])
        # RunHours is calculated: the write is accepted, and refused in its OnWriteComplete.
        refused = _error(run([*write, *value, *base]), ExitCode.MXACCESS, "OPERATIONAL_ERROR")
        assert "OnWriteComplete" in str(refused["message"])
        assert "MX_E_NotWriteable" in str(refused["message"])
        # Without waiting, the accepted write is all there is to report.
        accepted = run([*write, *value, "--no-wait", *base])
        assert accepted.code == 0, accepted.err
        assert "writeComplete" not in accepted.json()
        text = run([*write, *value, *sim.flags, "--session-id", session])
        assert text.code == ExitCode.MXACCESS
        assert "OnWriteComplete" in text.err and "Traceback" not in text.err
    finally:
        run(["close-session", "--session-id", session, *sim.flags])


def test_unreachable_gateway_is_unavailable() -> None:
    result = run(
        [
            "galaxy-test-connection",
            "--endpoint",
            "127.0.0.1:1",
            "--plaintext",
            "--timeout",
            "2",
            "--api-key",
            KEY,
            "--json",
        ]
    )
    _error(result, ExitCode.UNAVAILABLE, "UNAVAILABLE")


def test_tls_to_a_plaintext_gateway_is_unavailable(sim: SimServer) -> None:
    result = run(
        [
            "galaxy-test-connection",
            "--endpoint",
            sim.endpoint,
            "--tls",
            "--timeout",
            "2",
            "--api-key",
            KEY,
            "--json",
        ]
    )
    _error(result, ExitCode.UNAVAILABLE, "UNAVAILABLE")


def test_human_error_is_one_line_without_key(sim: SimServer) -> None:
    result = run(["close-session", "--session-id", UNKNOWN_SESSION, *sim.flags])
    assert result.code == ExitCode.NOT_FOUND
    assert result.out == ""
    assert result.err.startswith("mxgw-py: error: ")
    assert result.err.count("\n") == 1
    _no_secrets(result)


@pytest.mark.parametrize(
    "argv",
    [
        ["write", "--type", "int32", "--value", "99999999999"],
        ["write", "--type", "double", "--value", "inf"],
        ["write", "--type", "bool", "--value", "perhaps"],
        ["write2", "--type", "int32", "--value", "1", "--timestamp", "2026-01-01T00:00:00"],
    ],
)
def test_bad_values_never_reach_the_gateway(sim: SimServer, argv: list[str]) -> None:
    command, *flags = argv
    result = _unknown_session(sim, command, "--server-handle", "1", "--item-handle", "1", *flags)
    # A usage error, not SESSION_NOT_FOUND: nothing was sent.
    _error(result, ExitCode.USAGE, "USAGE")


def test_write_bulk_needs_pairs(sim: SimServer) -> None:
    handles = ["--server-handle", "1", "--item-handle", "1", "--item-handle", "2"]
    result = _unknown_session(sim, "write-bulk", *handles, "--value", "1", "--type", "int32")
    _error(result, ExitCode.USAGE, "USAGE")


def test_password_env_missing_is_usage_error(sim: SimServer) -> None:
    result = _unknown_session(
        sim,
        "authenticate-user",
        *("--server-handle", "1", "--user", "operator", "--password-env", "MXGW_NO_SUCH_VAR"),
    )
    _error(result, ExitCode.USAGE, "USAGE")


def test_stream_events_timeout_ends_with_exit_zero(sim: SimServer) -> None:
    session = run(["open-session", "--json", *sim.flags]).json()["sessionId"]
    try:
        # Nothing is advised: no event arrives, the window ends, exit 0 with an empty list.
        result = run(
            ["stream-events", "--session-id", session, "--timeout", "0.5", "--json", *sim.flags]
        )
        assert result.code == 0, result.err
        assert result.json() == {"events": []}
    finally:
        run(["close-session", "--session-id", session, *sim.flags])


def test_write_wait_refused_while_another_process_streams_the_session(sim: SimServer) -> None:
    """One event subscriber per session: a waiting write cannot attach while a
    `stream-events` in another process holds it; it fails before writing (exit 9),
    and `--no-wait` still writes."""
    session = run(["open-session", "--json", *sim.flags]).json()["sessionId"]
    base = ["--session-id", session, "--json", *sim.flags]
    hlmx = run(["register", "--client-name", "m", *base]).json()["register"]["serverHandle"]
    item = run(
        ["add-item", "--server-handle", str(hlmx), "--item", "L1_Tank01_InletValve.Cmd", *base]
    ).json()["addItem"]["itemHandle"]
    run(["advise", "--server-handle", str(hlmx), "--item-handle", str(item), *base])
    streamer = subprocess.Popen(
        [*CLI, "stream-events", "--session-id", session, "--after-sequence", "0", "--ndjson"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=sim.env(),
    )
    try:
        assert streamer.stdout is not None
        assert streamer.stdout.readline()  # the advise's value: the stream is attached
        write = ["write", "--server-handle", str(hlmx), "--item-handle", str(item)]
        attempt = run([*write, "--type", "int32", "--value", "66066", *base])
        refused = _error(attempt, ExitCode.PROTOCOL, "FAILED_PRECONDITION")
        assert refused["type"] == "MxGatewaySessionStateError"
        accepted = run([*write, "--type", "int32", "--value", "55055", "--no-wait", *base])
        assert accepted.code == 0, accepted.err
        # Until the value 55055 arrives (no generator makes it), the streaming process sees
        # one completion: the refused wait wrote nothing (its write would complete first).
        completions = 0
        while True:
            line = streamer.stdout.readline()
            assert line, "the stream ended"
            event = json.loads(line)
            completions += "onWriteComplete" in event
            change = event.get("onDataChange", {})
            if change.get("itemHandle") == item and change["value"].get("int32Value") == 55055:
                break
        assert completions == 1
    finally:
        streamer.terminate()
        streamer.wait(timeout=30)
        if streamer.stdout is not None:
            streamer.stdout.close()
        run(["close-session", "--session-id", session, *sim.flags])
