"""``mxgw-py version``: versions of the package, the contract and the gRPC stack."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest

import mxgateway
from mxgateway_cli.main import main


def test_version_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--json"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out)
    assert info == {
        "package": mxgateway.__version__,
        "gatewayProtocolVersion": 3,
        "workerProtocolVersion": 1,
        "grpcio": metadata.version("grpcio"),
        "protobuf": metadata.version("protobuf"),
    }
    # Deterministic: the same bytes every time.
    assert main(["version", "--json"]) == 0
    assert capsys.readouterr().out == out


def test_version_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from mxgateway_cli.main import run; run()", "version", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["package"] == metadata.version("mxaccess-gateway-client")
