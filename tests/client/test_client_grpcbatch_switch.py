"""The operator's off switch for gRPC batches (``MXGATEWAY_GRPC_BATCH=0``, read at import):
with it set, neither the client's command stream nor the simulator's ``InvokeStream``
starts a batch, and every command is answered as with batches. The switch is read once at
import, so each run is its own interpreter; batches are counted where both sides start
them (``mxgateway._grpcbatch._execute_batch``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mxgateway import _grpcbatch

_SCRIPT = r"""
import asyncio, json
from mxgateway import GatewayClient, _grpcbatch, from_mx_value
from mxgateway_sim import GatewaySimulator, builtin_catalog

batches = 0
real = _grpcbatch._execute_batch

def counting(*args, **kwargs):
    global batches
    batches += 1
    return real(*args, **kwargs)

_grpcbatch._execute_batch = counting

async def main():
    async with GatewaySimulator(catalog=builtin_catalog(), scan_interval_ms=20) as sim:
        async with await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client:
            async with await client.open_session(client_session_name="switch") as session:
                h = await session.register("switch")
                item = await session.add_item(h, "Tank01.LevelSetpoint")
                await session.advise(h, item)
                await session.write(h, item, 12.5)
                values = []
                for _ in range(200):
                    await session.ping()
                    rows = await session.read_bulk(h, ["Tank01.LevelSetpoint"])
                    values = [from_mx_value(r.value) for r in rows]
                    if values == [12.5]:
                        break
                    await asyncio.sleep(0.02)
                many = await session.read_bulk(h, ["Tank01.Level"] * 6000)
                stream = client._commands is not None and not client._commands.unsupported
    print(json.dumps({
        "batches": batches, "available": _grpcbatch.AVAILABLE,
        "switched_off": _grpcbatch.SWITCHED_OFF, "values": values,
        "many": len(many), "stream": stream,
    }))

asyncio.run(main())
"""


def _run(value: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != _grpcbatch.ENV}
    if value is not None:
        env[_grpcbatch.ENV] = value
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("value", ["0", "off", "FALSE", " no "])
def test_the_switch_turns_batches_off_on_client_and_gateway_and_commands_are_answered(
    value: str,
) -> None:
    result = _run(value)
    assert result["switched_off"] and not result["available"]
    assert result["batches"] == 0  # neither side started one
    assert result["values"] == [12.5]
    assert result["many"] == 6000  # a pipelined read too
    assert result["stream"]  # on the command stream, not Invoke


@pytest.mark.skipif(not _grpcbatch.AVAILABLE, reason="batches are off in this process")
@pytest.mark.parametrize("value", [None, "1", "on", ""])
def test_without_the_switch_both_sides_batch(value: str | None) -> None:
    # The control: the count above is zero because of the switch, not because nothing
    # would have batched.
    result = _run(value)
    assert not result["switched_off"] and result["available"]
    assert result["batches"] > 0
    assert result["values"] == [12.5]
    assert result["many"] == 6000
    assert result["stream"]


def test_which_values_turn_batches_off() -> None:
    off = ["0", "off", "Off", "false", "NO", " 0 "]
    on = ["", "1", "on", "true", "yes", "disabled?"]
    assert all(_grpcbatch.switched_off({_grpcbatch.ENV: v}) for v in off)
    assert not any(_grpcbatch.switched_off({_grpcbatch.ENV: v}) for v in on)
    assert not _grpcbatch.switched_off({})


_STREAM_TESTS = [
    "tests/client/test_client_command_stream.py",
    "tests/client/test_client_batched_read_ends.py",
    "tests/sim/test_sim_command_stream.py",
]
"""The command stream's tests: with batches off each runs on the write-then-read path and
checks that no batch started where it checks batches."""


def test_the_command_stream_tests_pass_with_the_switch_set() -> None:
    # The whole suite runs with the switch (docs/operations.md); this focused set of it
    # runs so in every run of the suite.
    env = {k: v for k, v in os.environ.items() if k != _grpcbatch.ENV}
    env[_grpcbatch.ENV] = "0"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", *_STREAM_TESTS],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "batches are off in this process" in done.stdout  # the switch took
