"""The CLI framework without a gateway: parsing, exit codes, error documents, redaction."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue

import mxgateway
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_cli._errors import EXIT_CODES, CliUsageError, CommandFailed, classify, redact
from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._parser import build_parser
from mxgateway_cli._parsing import ConnectionSettings, parse_endpoint, parse_value

from .clirunner import run

KEY = "mxgw_clitest_SECRETsecret0123456789"


# --- exit codes and the error table ---------------------------------------------------


def test_exit_codes_are_stable() -> None:
    assert {c.name: c.value for c in ExitCode} == {
        "OK": 0,
        "ERROR": 1,
        "USAGE": 2,
        "NOT_FOUND": 3,
        "AUTH": 4,
        "PERMISSION": 5,
        "UNAVAILABLE": 6,
        "TIMEOUT": 7,
        "MXACCESS": 8,
        "PROTOCOL": 9,
        "INTERRUPTED": 130,
        "BROKEN_PIPE": 141,
    }


def test_every_exit_code_is_reachable_from_the_table() -> None:
    # OK and BROKEN_PIPE come from main() itself, not from an exception class.
    reachable = set(EXIT_CODES.values()) | {ExitCode.OK, ExitCode.BROKEN_PIPE}
    assert reachable == set(ExitCode)


def test_every_library_error_class_is_mapped_deliberately() -> None:
    # A new class in the library's tree must get a conscious entry (not just inherit ERROR).
    exported = {
        getattr(mxgateway, name)
        for name in mxgateway.__all__
        if isinstance(getattr(mxgateway, name), type)
        and issubclass(getattr(mxgateway, name), mxgateway.MxGatewayError)
    }
    unmapped = {
        cls
        for cls in exported
        if cls not in EXIT_CODES and cls.__mro__[1] in (mxgateway.MxGatewayError, Exception)
    }
    assert not unmapped


@pytest.mark.parametrize(
    ("status", "exit_code"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, ExitCode.AUTH),
        (grpc.StatusCode.PERMISSION_DENIED, ExitCode.PERMISSION),
        (grpc.StatusCode.NOT_FOUND, ExitCode.NOT_FOUND),
        (grpc.StatusCode.UNAVAILABLE, ExitCode.UNAVAILABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ExitCode.TIMEOUT),
        (grpc.StatusCode.INVALID_ARGUMENT, ExitCode.PROTOCOL),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ExitCode.UNAVAILABLE),
        (grpc.StatusCode.INTERNAL, ExitCode.ERROR),  # the gateway failed: not a refusal
    ],
)
def test_library_grpc_errors_map_to_exit_codes(
    status: grpc.StatusCode, exit_code: ExitCode
) -> None:
    from mxgateway._errors import GRPC_STATUS_ERRORS

    cls = GRPC_STATUS_ERRORS[status]
    assert cls is not None
    report = classify(cls("failed", grpc_code=status))
    assert report.exit_code is exit_code
    assert report.code == status.name


def test_every_protocol_status_maps_to_a_specific_exit_code() -> None:
    from mxgateway._errors import PROTOCOL_STATUS_ERRORS

    for code, cls in PROTOCOL_STATUS_ERRORS.items():
        if cls is None or cls is mxgateway.MxAccessError:
            continue
        report = classify(cls("failed", protocol_code=code))
        assert report.exit_code is not ExitCode.ERROR or cls is mxgateway.MxGatewayCancelledError
        assert report.code == pb.ProtocolStatusCode.Name(code).removeprefix("PROTOCOL_STATUS_CODE_")


def test_mxaccess_failure_maps_to_mxaccess() -> None:
    reply = pb.MxCommandReply(
        kind=pb.MX_COMMAND_KIND_WRITE,
        hresult=-2147467259,
        protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE),
    )
    report = classify(mxgateway.MxAccessError(reply))
    assert report.exit_code is ExitCode.MXACCESS
    assert report.code == "MXACCESS_FAILURE"


def test_classify_fallbacks() -> None:
    assert classify(RuntimeError("boom")).exit_code is ExitCode.ERROR
    assert classify(RuntimeError("boom")).code == "ERROR"
    assert classify(KeyboardInterrupt()).exit_code is ExitCode.INTERRUPTED
    assert classify(TimeoutError()).exit_code is ExitCode.TIMEOUT
    assert classify(CliUsageError("bad")).exit_code is ExitCode.USAGE
    assert classify(ValueError("Value out of range: 99999999999")).exit_code is ExitCode.USAGE
    assert classify(CommandFailed("no events", ExitCode.TIMEOUT)).exit_code is ExitCode.TIMEOUT


def test_classify_redacts_and_keeps_one_line() -> None:
    report = classify(RuntimeError(f"key {KEY} rejected\nsecond line"), [KEY])
    assert report.message == "key *** rejected"
    assert KEY not in str(report.to_json())


def test_redact_longest_secret_first() -> None:
    assert redact("abcdef abc", ["abc", "abcdef"]) == "*** ***"


# --- usage errors ---------------------------------------------------------------------


def test_missing_required_flag_is_usage_error_json() -> None:
    result = run(["register", "--json"])
    assert result.code == ExitCode.USAGE
    assert result.out == ""
    error = result.error()
    assert list(error) == ["type", "message", "code", "exitCode"]
    assert error["code"] == "USAGE"
    assert error["exitCode"] == 2
    assert "--session-id" in error["message"]


def test_usage_error_without_json_is_one_line() -> None:
    result = run(["register"])
    assert result.code == ExitCode.USAGE
    assert result.err.count("\n") == 1
    assert result.err.startswith("mxgw-py: error: register:")
    assert "Traceback" not in result.err


def test_unknown_command_is_usage_error() -> None:
    assert run(["frobnicate"]).code == ExitCode.USAGE


def test_help_exits_zero() -> None:
    result = run(["--help"])
    assert result.code == 0
    assert "exit codes:" in result.out
    for command in ("galaxy-discover", "bench-stream-events", "demo", "smoke"):
        assert command in result.out


_OFFLINE = ["--endpoint", "127.0.0.1:1", "--plaintext", "--timeout", "2", "--json"]
"""Flags of a run that fails before it connects (nothing listens on port 1)."""


def _write_argv(type_name: str, value: str, *more: str) -> list[str]:
    """``write`` of ``value`` as ``type_name`` to item 2 of server handle 1 in session s."""
    return [
        "write",
        "--session-id",
        "s",
        "--server-handle",
        "1",
        "--item-handle",
        "2",
        "--type",
        type_name,
        "--value",
        value,
        *more,
    ]


def test_unknown_type_is_usage_error() -> None:
    result = run(_write_argv("quaternion", "1", "--json"))
    assert result.code == ExitCode.USAGE
    assert "quaternion" in result.error()["message"]


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--tls", "--plaintext"], "cannot be combined"),
        (["--endpoint", "no-port"], "malformed --endpoint"),
        (["--endpoint", "host:99999"], "port"),
        (["--endpoint", "http://host:5000"], "malformed --endpoint"),
        (["--ca-file", "/nonexistent/ca.pem"], "cannot read --ca-file"),
        (["--api-key-env", "MXGW_TEST_UNSET_VAR"], "--api-key-env: the environment variable"),
        (["--timeout", "0"], "positive"),
        (["--timeout", "nan"], "positive"),
    ],
)
def test_bad_connection_flags_are_usage_errors(flags: list[str], fragment: str) -> None:
    result = run(["galaxy-test-connection", *flags, "--json"])
    assert result.code == ExitCode.USAGE, result.err
    assert fragment in result.error()["message"]
    assert "Traceback" not in result.err


# --- value parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "text", "expected"),
    [
        ("bool", "true", True),
        ("bool", "0", False),
        ("int32", "123", 123),
        ("int32", "-2147483648", -(2**31)),
        ("int64", "9007199254740993", 9007199254740993),
        ("double", "1.5", 1.5),
        ("float", "0.25", 0.25),
        ("string", " padded ", " padded "),
        ("datetime", "2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("elapsed", "1.5", timedelta(seconds=1.5)),
        ("bytes", "AAEC", b"\x00\x01\x02"),
    ],
)
def test_parse_value_delegates_to_the_library(type_name: str, text: str, expected: object) -> None:
    assert parse_value(type_name, text) == mxgateway.to_mx_value(expected, type_name)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("type_name", "text"),
    [
        ("int32", "2147483648"),
        ("int32", "12.5"),
        ("int64", "abc"),
        ("double", "nan"),
        ("double", "inf"),
        ("float", "1e39"),
        ("bool", "maybe"),
        ("datetime", "2026-01-02T03:04:05"),
        ("datetime", "yesterday"),
        ("bytes", "not base64!"),
        ("elapsed", "soon"),
    ],
)
def test_bad_values_are_usage_errors(type_name: str, text: str) -> None:
    with pytest.raises(CliUsageError) as info:
        parse_value(type_name, text)
    assert repr(text) in str(info.value)


def test_non_finite_write_via_cli_is_usage_error() -> None:
    result = run([*_write_argv("double", "nan"), *_OFFLINE])
    assert result.code == ExitCode.USAGE
    assert "not finite" in result.error()["message"]


def test_every_library_value_type_is_a_type_choice() -> None:
    parser = build_parser()
    args = parser.parse_args(_write_argv("elapsed", "1"))
    assert args.type == "elapsed"
    for type_name in mxgateway.VALUE_TYPES:
        parser.parse_args(_write_argv(type_name, "1"))


# --- endpoints and connection settings ----------------------------------------------------


@pytest.mark.parametrize("endpoint", ["localhost:5000", "127.0.0.1:1", "[::1]:5001", "gw-1.x:443"])
def test_good_endpoints(endpoint: str) -> None:
    assert parse_endpoint(endpoint) == endpoint


def _settings(**overrides: object) -> ConnectionSettings:
    flags: dict[str, object] = {
        "endpoint": None,
        "plaintext": False,
        "tls": False,
        "ca_file": None,
        "server_name_override": None,
        "api_key": None,
        "api_key_env": None,
        "timeout": None,
        "env": {},
    }
    flags.update(overrides)
    return ConnectionSettings.from_flags(**flags)  # type: ignore[arg-type]


def test_defaults_are_tls_to_localhost_5000() -> None:
    settings = _settings()
    assert settings.endpoint == "localhost:5000"
    assert settings.plaintext is False
    assert settings.api_key is None


def test_no_implicit_plaintext_for_localhost() -> None:
    assert _settings(endpoint="127.0.0.1:5000").plaintext is False


def test_environment_defaults() -> None:
    settings = _settings(
        env={
            "MXGATEWAY_ENDPOINT": "gw:7000",
            "MXGATEWAY_PLAINTEXT": "1",
            "MXGATEWAY_API_KEY": KEY,
        }
    )
    assert (settings.endpoint, settings.plaintext, settings.api_key) == ("gw:7000", True, KEY)
    # Flags win over the environment; --tls overrides MXGATEWAY_PLAINTEXT.
    assert _settings(tls=True, env={"MXGATEWAY_PLAINTEXT": "1"}).plaintext is False


def test_api_key_env_and_repr_redaction() -> None:
    settings = _settings(api_key_env="MY_KEY", env={"MY_KEY": KEY})
    assert settings.api_key == KEY
    assert KEY not in repr(settings)


def test_ca_file_readable(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert _settings(ca_file=str(ca)).ca_file == str(ca)
    with pytest.raises(CliUsageError):
        _settings(ca_file=str(tmp_path))


def test_api_key_never_printed_on_errors() -> None:
    # Unreachable endpoint (port 1) so the command fails after the key was parsed.
    for argv in (
        ["galaxy-test-connection", "--api-key", KEY, "--endpoint", "bad endpoint", "--json"],
        ["galaxy-test-connection", f"--api-key={KEY}", "--tls", "--plaintext"],
        ["register", "--api-key", KEY, "--json"],
    ):
        result = run(argv)
        assert result.code != 0
        assert KEY not in result.out + result.err
        assert "SECRET" not in result.out + result.err


def test_float_help_text_lists_types() -> None:
    assert not math.isnan(0.0)
    help_text = run(["write", "--help"]).out
    assert "|".join(mxgateway.VALUE_TYPES) in help_text.replace("\n", "").replace(" ", "")


# --- streaming writer and benchmark statistics --------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 3])
def test_json_stream_writes_exactly_what_json_dumps_would(count: int) -> None:
    import io
    import json

    from mxgateway_cli._output import Output
    from mxgateway_cli._streaming import JsonStream

    items = [{"n": i, "nested": {"list": [i, "x"], "empty": []}} for i in range(count)]
    extra = {"objectCount": count, "meta": {"a": [1, 2]}}
    buffer = io.StringIO()
    writer = JsonStream(Output(buffer, io.StringIO(), json_mode=True), "objects")
    for item in items:
        writer.add(item)
    writer.close(extra)
    writer.close(extra)  # idempotent
    assert buffer.getvalue() == json.dumps({"objects": items, **extra}, indent=2) + "\n"


def test_json_stream_ndjson_lines() -> None:
    import io
    import json

    from mxgateway_cli._output import Output
    from mxgateway_cli._streaming import JsonStream

    buffer = io.StringIO()
    writer = JsonStream(Output(buffer, io.StringIO(), json_mode=True, ndjson=True), "events")
    writer.add({"a": 1})
    writer.add({"b": [2]})
    writer.close({"ignored": True})
    assert [json.loads(line) for line in buffer.getvalue().splitlines()] == [
        {"a": 1},
        {"b": [2]},
    ]


def test_latency_summary_nearest_rank() -> None:
    from mxgateway_cli._cmd_bench import latency_summary

    samples = [float(x) for x in range(1, 101)]  # 1..100 ms
    assert latency_summary(samples) == {
        "p50": 50.0,
        "p95": 95.0,
        "p99": 99.0,
        "max": 100.0,
        "mean": 50.5,
    }
    assert latency_summary([]) == dict.fromkeys(("p50", "p95", "p99", "max", "mean"))
    assert latency_summary([3.0])["p99"] == 3.0


def test_output_redacts_every_path() -> None:
    import io

    from mxgateway_cli._output import Output

    out, err = io.StringIO(), io.StringIO()
    output = Output(out, err)
    output.add_secret(KEY)
    output.write(f"stdout {KEY}\n")
    output.info(f"stderr {KEY}")
    output.console.print(f"rich {KEY}")
    assert KEY not in out.getvalue() + err.getvalue()
    assert out.getvalue().count("***") == 2


def test_plaintext_ignores_tls_environment_defaults() -> None:
    settings = _settings(
        plaintext=True,
        env={"MXGATEWAY_CA_FILE": "/nonexistent", "MXGATEWAY_SERVER_NAME_OVERRIDE": "gw"},
    )
    assert (settings.ca_file, settings.server_name_override) == (None, None)


def test_out_of_range_user_id_is_usage_error() -> None:
    result = run([*_write_argv("int32", "1", "--user-id", "99999999999"), *_OFFLINE])
    assert result.code == ExitCode.USAGE, result.err


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (
            "write2 --session-id s --server-handle 1 --item-handle 2 --type int32 --value 1",
            "--timestamp",
        ),
        (
            "write2-bulk --session-id s --server-handle 1 --item-handles 2 --values 1 --type int32",
            "--timestamp",
        ),
        ("galaxy-watch", "--last-seen"),
    ],
)
def test_a_time_without_a_zone_is_a_usage_error_naming_its_flag(command: str, flag: str) -> None:
    # One rule (mxgateway_cli._parsing.parse_aware_datetime) for every time flag, checked
    # before anything is sent (the endpoint is never reached).
    result = run([*command.split(), flag, "2026-01-02T03:04:05", *_OFFLINE])
    assert result.code == ExitCode.USAGE, result.err
    assert result.error()["message"] == (
        f"{flag} '2026-01-02T03:04:05' has no time zone; add Z or +HH:MM"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["galaxy-discover", "--max-depth", "x"], "argument --max-depth: 'x' is not an integer"),
        (
            ["galaxy-discover", "--max-depth", "-1"],
            "argument --max-depth: '-1' must not be negative",
        ),
        (["watch", "--max-events", "0"], "argument --max-events: '0' must be a positive integer"),
        (
            ["unregister", "--session-id", "s", "--server-handle", "99999999999"],
            "argument --server-handle: '99999999999' is out of range for a 32-bit integer",
        ),
    ],
)
def test_an_integer_flag_out_of_its_range_is_a_usage_error_with_its_words(
    argv: list[str], message: str
) -> None:
    result = run([*argv, "--json"])
    assert result.code == ExitCode.USAGE, result.err
    assert result.error()["message"] == f"{argv[0]}: {message}"


class _Stream:
    """An endless stream of lines that records its ``aclose`` (and can fail on an item)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent = 0
        self.closed = False
        self.fail_at = fail_at

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> StringValue:
        self.sent += 1
        if self.sent == self.fail_at:
            raise RuntimeError("the stream broke")
        return StringValue(value=f"line {self.sent}")

    async def aclose(self) -> None:
        self.closed = True


def _value(message: StringValue) -> str:
    return message.value


async def test_print_stream_closes_its_stream_whatever_ends_it() -> None:
    # stream-events, stream-alarms and galaxy-watch print through print_stream: it closes
    # the stream (the server's call) when the count is reached and when the stream fails.
    import io

    from mxgateway_cli._output import Output
    from mxgateway_cli._streaming import print_stream

    out = Output(io.StringIO(), io.StringIO())
    done = _Stream()
    await print_stream(out, None, done, _value, max_items=2, timeout=None)
    assert done.closed and done.sent == 2
    broken = _Stream(fail_at=2)
    with pytest.raises(RuntimeError, match="the stream broke"):
        await print_stream(out, None, broken, _value, max_items=5, timeout=None)
    assert broken.closed
    assert out.stdout.getvalue() == "line 1\nline 2\nline 1\n"  # type: ignore[attr-defined]
