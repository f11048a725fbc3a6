"""A gateway that fails unexpectedly: the CLI says so plainly, with the incident id to look
up in the gateway log, and nothing of the failure's own text."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from mxgateway_cli._exit_codes import ExitCode
from mxgateway_sim import GatewaySimulator
from mxgateway_sim.galaxy._service import GalaxyService

from .clirunner import run

SECRET = "cannot open /srv/plant/secret.mdf as sa@db-host-7"


def _fail(*args: Any) -> bool:
    raise RuntimeError(SECRET)


async def test_an_unexpected_gateway_failure_is_reported_with_its_incident(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GalaxyService, "test_connection", _fail)
    async with GatewaySimulator(galaxy_db=tmp_path / "g.db") as sim:
        argv = ["galaxy-test-connection", "--endpoint", sim.endpoint, "--plaintext"]
        env = {"MXGATEWAY_API_KEY": sim.api_key}
        as_json = await asyncio.to_thread(run, [*argv, "--json"], env)
        plain = await asyncio.to_thread(run, argv, env)
    for result in (as_json, plain):
        assert result.code == ExitCode.ERROR, result.err
        assert result.out == ""
        assert SECRET not in result.err and "Traceback" not in result.err
        assert sim.api_key and sim.api_key not in result.err
    error = as_json.error()
    assert (error["type"], error["code"]) == ("MxGatewayInternalError", "INTERNAL")
    match = re.search(r"look in its log for incident ([0-9a-f]{16})", str(error["message"]))
    assert match is not None, error
    assert "incident id" in str(error["hint"])
    assert re.search(r"look in its log for incident [0-9a-f]{16}", plain.err), plain.err
