"""Errors that say what to do, in a real process (so gRPC core's own log lines, written to
the stderr file descriptor, would show): refused, TLS/plaintext mismatches both ways, an
unknown CA, a missing or unknown key, an unknown tag. Under ``--json`` stderr is exactly
one JSON document; without, an ``error:`` line and a ``hint:`` line."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from mxgateway_cli._exit_codes import ExitCode

from .conftest import CLI, KEY, SimServer, start_sim, stop_sim


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MXGATEWAY_", "GRPC_"))}
    env["COLUMNS"] = "200"
    return env


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *argv, "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or _env(),
        check=False,
    )


def _one_document(stderr: str) -> dict[str, object]:
    document = json.loads(stderr)  # the whole of stderr, nothing before or after
    assert set(document) == {"error"}
    error: dict[str, object] = document["error"]
    return error


@pytest.fixture(scope="module")
def tls_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    root = tmp_path_factory.mktemp("hint-tls")
    server = start_sim(["--tls-self-signed", str(root / "tls"), "--api-key", KEY], root / "sim.log")
    try:
        yield server
    finally:
        stop_sim(server.process)


def test_refused_connection(sim: SimServer) -> None:
    result = _cli("read", "A.B", "--endpoint", "127.0.0.1:1", "--plaintext", "--json")
    assert result.returncode == ExitCode.UNAVAILABLE
    assert result.stdout == ""
    error = _one_document(result.stderr)
    assert "is the gateway running" in str(error["hint"])


def test_tls_to_a_plaintext_gateway(sim: SimServer) -> None:
    result = _cli("read", "A.B", "--endpoint", sim.endpoint, "--api-key", KEY, "--json")
    assert result.returncode == ExitCode.UNAVAILABLE
    error = _one_document(result.stderr)
    assert "add --plaintext" in str(error["hint"])
    human = _cli("read", "A.B", "--endpoint", sim.endpoint, "--api-key", KEY)
    lines = human.stderr.splitlines()
    assert len(lines) == 2, human.stderr  # no gRPC core log line
    assert lines[0].startswith("mxgw-py: error: ")
    assert lines[1].startswith("mxgw-py: hint: the gateway does not speak TLS")


def test_plaintext_to_a_tls_gateway(tls_sim: SimServer) -> None:
    result = _cli("read", "A.B", "--endpoint", tls_sim.endpoint, "--plaintext", "--json")
    assert result.returncode == ExitCode.UNAVAILABLE
    assert "drop --plaintext" in str(_one_document(result.stderr)["hint"])


def test_unknown_ca_then_the_right_one(tls_sim: SimServer) -> None:
    endpoint = tls_sim.endpoint  # 127.0.0.1: on the certificate (localhost may try ::1 first)
    result = _cli("read", "L1_Mixer.Current", "--endpoint", endpoint, "--api-key", KEY, "--json")
    assert result.returncode == ExitCode.UNAVAILABLE
    assert "--ca-file" in str(_one_document(result.stderr)["hint"])
    assert tls_sim.ca_file is not None
    fixed = _cli(
        "read",
        "L1_Mixer.Current",
        "--endpoint",
        endpoint,
        "--ca-file",
        tls_sim.ca_file,
        "--api-key",
        KEY,
        "--json",
    )
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stderr == ""


@pytest.mark.parametrize("key", [None, "mxgw_nobody_ThisKeyIsNotKnownToTheServer00"])
def test_missing_or_unknown_key(sim: SimServer, key: str | None) -> None:
    flags = [] if key is None else ["--api-key", key]
    result = _cli("read", "A.B", "--endpoint", sim.endpoint, "--plaintext", *flags, "--json")
    assert result.returncode == ExitCode.AUTH
    error = _one_document(result.stderr)
    assert "MXGATEWAY_API_KEY" in str(error["hint"])
    if key is not None:
        assert key not in result.stderr


def test_unknown_tag(sim: SimServer) -> None:
    env = {**_env(), **sim.env()}
    result = _cli("set", "L1_Mixer.NoSuchThing", "1", "--json", env=env)
    assert result.returncode == ExitCode.NOT_FOUND
    error = _one_document(result.stderr)
    assert "galaxy-discover --tag-glob 'L1_Mixer*'" in str(error["hint"])
