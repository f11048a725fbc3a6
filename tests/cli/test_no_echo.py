"""A secret given in the wrong place is never printed by ``mxgw-py`` or ``mxgw-sim``.

The attacks: a key passed where a variable name belongs (``--api-key-env "$KEY"``), a
password given to a flag that does not exist (``--password x``, which argparse used to
expand to ``--password-env x`` and echo), and any other abbreviation or stray value.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._parser import build_parser

from .clirunner import run

SECRET = "mxgw_echo_DoNotPrintThisSecret0123456789"
PASSWORD = "hunter2-DoNotPrintThisPassword"
MXGW_PY = [sys.executable, "-m", "mxgateway_cli"]
MXGW_SIM = [sys.executable, "-c", "from mxgateway_sim.cli import run; run()"]
SECRET_FLAGS = ("--api-key", "--api-key-env", "--password-env")
"""Every ``mxgw-py`` flag whose value is a secret or names one."""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands_with(flag: str) -> list[str]:
    return [
        name
        for name, sub in _subcommands(build_parser()).items()
        if flag in sub._option_string_actions
    ]


def test_secret_flags_are_the_ones_the_parser_has() -> None:
    # A new flag ending in -env or naming a key/password must be added to SECRET_FLAGS.
    flags = {
        option
        for sub in _subcommands(build_parser()).values()
        for option in sub._option_string_actions
        if option.endswith("-env") or "key" in option or "password" in option
    }
    assert flags == set(SECRET_FLAGS)


def _assert_not_echoed(result_out: str, result_err: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in result_out and secret not in result_err
        assert secret[5:] not in result_err  # not even without a prefix


@pytest.mark.parametrize("json_mode", [False, True])
def test_key_passed_as_the_variable_name_is_not_printed(json_mode: bool) -> None:
    flags = ["--json"] if json_mode else []
    for command in _commands_with("--api-key-env"):
        argv = [command, "--plaintext", "--api-key-env", SECRET, *flags]
        if command in ("stream-events", "close-session", "register", "get-session-state"):
            argv += ["--session-id", "s"]
        result = run(argv, env={})
        if result.code == ExitCode.USAGE and "required" in result.err:
            continue  # another required flag; the check below ran for the others
        _assert_not_echoed(result.out, result.err, SECRET)
    result = run(["open-session", "--plaintext", "--api-key-env", SECRET, *flags], env={})
    assert result.code == ExitCode.USAGE
    _assert_not_echoed(result.out, result.err, SECRET)
    message = result.error()["message"] if json_mode else result.err
    assert "--api-key-env" in message and "not set" in message


def test_password_passed_as_the_variable_name_is_not_printed() -> None:
    argv = ["authenticate-user", "--session-id", "s", "--server-handle", "1", "--user", "u"]
    result = run([*argv, "--password-env", PASSWORD, "--plaintext", "--json"], env={})
    assert result.code == ExitCode.USAGE
    assert "--password-env" in result.error()["message"]
    _assert_not_echoed(result.out, result.err, PASSWORD)


@pytest.mark.parametrize("flag", SECRET_FLAGS)
def test_no_flag_is_abbreviated(flag: str) -> None:
    command = _commands_with(flag)[0]
    options = set(build_parser()._option_string_actions) | set(
        _subcommands(build_parser())[command]._option_string_actions
    )
    for end in range(3, len(flag)):
        prefix = flag[:end]
        if prefix in options:
            continue
        for argv in ([prefix, PASSWORD], [f"{prefix}={PASSWORD}"]):
            for mode in ([], ["--json"]):
                result = run([command, *argv, *mode], env={})
                assert result.code == ExitCode.USAGE, (prefix, result.err)
                _assert_not_echoed(result.out, result.err, PASSWORD)


def test_stray_values_are_counted_not_printed() -> None:
    result = run(["open-session", "--plaintext", "--password", PASSWORD, "--json"], env={})
    assert result.code == ExitCode.USAGE
    message = result.error()["message"]
    assert "--password" in message and "1 value (not shown)" in message
    _assert_not_echoed(result.out, result.err, PASSWORD)


@pytest.mark.slow
def test_real_processes_never_echo() -> None:
    """The same attacks through the installed entry points, stdout and stderr both."""
    cases = [
        [*MXGW_PY, "open-session", "--plaintext", "--api-key-env", SECRET],
        [*MXGW_PY, "open-session", "--plaintext", "--api-key-env", SECRET, "--json"],
        [*MXGW_PY, "authenticate-user", "--session-id", "s", "--server-handle", "1",
         "--user", "u", "--password", PASSWORD, "--plaintext"],
        [*MXGW_PY, "authenticate-user", "--session-id", "s", "--server-handle", "1",
         "--user", "u", "--password-env", PASSWORD, "--plaintext", "--json"],
        [*MXGW_PY, "open-session", f"--api-k={SECRET}", "--json"],
        [*MXGW_SIM, "serve", "--plaintext", "--api-keys", SECRET],
        [*MXGW_SIM, "serve", "--plaintext", "--api-key-env", SECRET],
        [*MXGW_SIM, "serve", "--plaintext", "--api", SECRET],
        [*MXGW_SIM, "serve", "--plaintext", "--api-key", "mxgw_x_" + PASSWORD[:10]],
        [*MXGW_SIM, "keys", "create", PASSWORD],
    ]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    for argv in cases:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 2, (argv, result.stderr)
        assert "Traceback" not in result.stderr
        _assert_not_echoed(result.stdout, result.stderr, SECRET, PASSWORD, PASSWORD[:10])
        if "--json" in argv:
            assert set(json.loads(result.stderr)) == {"error"}


def test_connection_settings_never_show_the_key() -> None:
    import dataclasses

    from mxgateway_cli._parsing import ConnectionSettings

    settings = ConnectionSettings.from_flags(
        endpoint="gw:1",
        plaintext=True,
        tls=False,
        ca_file=None,
        server_name_override=None,
        api_key=None,
        api_key_env="K",
        timeout=None,
        env={"K": SECRET},
    )
    assert settings.api_key == SECRET and settings.api_key_text == SECRET
    for text in (repr(settings), str(settings), repr(dataclasses.asdict(settings))):
        assert SECRET[5:] not in text
