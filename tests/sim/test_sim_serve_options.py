"""``mxgw-sim serve``: the key from the environment (never on the command line)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
from simhelpers import Gw

from mxgateway_sim import new_key

CLI = [sys.executable, "-c", "from mxgateway_sim.cli import run; run()"]


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def _cmdline(pid: int) -> bytes:
    """The process's command line as the process list shows it (empty off Linux)."""
    path = Path(f"/proc/{pid}/cmdline")
    return path.read_bytes() if path.exists() else b""


def test_api_key_env_unset_or_malformed_is_one_line_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FE_TEST_KEY"}
    for value in (None, "", "secret-but-malformed"):
        if value is not None:
            env["FE_TEST_KEY"] = value
        result = _run_cli("serve", "--plaintext", "--api-key-env", "FE_TEST_KEY", env=env)
        assert result.returncode == 2, (value, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "--api-key-env FE_TEST_KEY" in result.stderr
        assert "secret-but-malformed" not in result.stderr


async def test_api_key_env_serves_with_a_key_that_is_not_in_the_process_list() -> None:
    key = new_key()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--plaintext",
        "--listen",
        "127.0.0.1:0",
        "--api-key-env",
        "FE_TEST_KEY",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "FE_TEST_KEY": key, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        assert key.encode() not in _cmdline(proc.pid)
        async with grpc.aio.insecure_channel(info["address"]) as channel:
            gw = Gw(channel, key)
            sid = await gw.open()
            await gw.ok(sid, "ping")
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
