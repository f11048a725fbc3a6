"""Enum numbers newer than the bindings, from a fake gateway, through the CLI: named
``UNKNOWN(n)``, never a crash or a usage error (exit 2)."""

from __future__ import annotations

from mxgateway_cli._exit_codes import ExitCode

from .clirunner import run
from .fake_gateway import NEW_CATEGORY, NEW_FAMILY, NEW_FAULT_KIND, SESSION, FakeGatewayServer


def _flags(endpoint: str) -> list[str]:
    return ["--endpoint", endpoint, "--plaintext", "--session-id", SESSION]


def test_event_lines_name_unknown_numbers() -> None:
    with FakeGatewayServer() as endpoint:
        text = run(["stream-events", "--max-events", "3", "--timeout", "20", *_flags(endpoint)])
        data = run(
            ["stream-events", "--max-events", "3", "--timeout", "20", "--json", *_flags(endpoint)]
        )
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert len(lines) == 3
    assert all(f"UNKNOWN({NEW_FAMILY})" in line for line in lines)
    assert "value=5" in lines[0]
    assert f"ok=False [UNKNOWN({NEW_CATEGORY}) detected by UNKNOWN(17)" in lines[1]
    assert f"UNKNOWN({NEW_FAULT_KIND}) something newer" in lines[2]
    assert data.code == 0, data.err
    events = data.json()["events"]
    # protobuf-JSON keeps an unknown enum number as the number.
    assert [e["family"] for e in events] == [NEW_FAMILY] * 3
    assert events[1]["onWriteComplete"]["statuses"][0]["category"] == NEW_CATEGORY


def test_failure_with_a_newer_category_is_an_mxaccess_error() -> None:
    with FakeGatewayServer() as endpoint:
        result = run(["register", "--client-name", "x", "--json", *_flags(endpoint)])
        text = run(["register", "--client-name", "x", *_flags(endpoint)])
    assert result.code == ExitCode.MXACCESS, result.err
    error = result.error()
    assert error["type"] == "MxAccessError"
    assert error["code"] == "MXACCESS_FAILURE"
    assert f"UNKNOWN({NEW_CATEGORY}) detected by UNKNOWN(17), detail 1007" in error["message"]
    assert text.code == ExitCode.MXACCESS and "Traceback" not in text.err


def test_write_refused_with_a_newer_category() -> None:
    with FakeGatewayServer() as endpoint:
        result = run(
            [
                "write",
                "--server-handle",
                "1",
                "--item-handle",
                "2",
                "--type",
                "int32",
                "--value",
                "3",
                "--wait-timeout",
                "20",
                "--json",
                *_flags(endpoint),
            ]
        )
    assert result.code == ExitCode.MXACCESS, result.err
    error = result.error()
    assert error["code"] == f"UNKNOWN({NEW_CATEGORY})"
    assert "OnWriteComplete #2" in error["message"]
