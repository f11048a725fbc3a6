"""``mxgw-sim serve``: the key from the environment (not the command line); first-value delay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from simhelpers import Gw

from mxgateway_sim import new_key

CLI = [sys.executable, "-c", "from mxgateway_sim.cli import run; run()"]
SERVE = ("serve", "--plaintext", "--listen", "127.0.0.1:0", "--api-key-env", "FE_TEST_KEY")


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
        # A variable that exists is named; the text given for an unset one is not repeated
        # (it may be a key passed in place of a name).
        assert ("--api-key-env FE_TEST_KEY" in result.stderr) == bool(value), result.stderr
        assert "secret-but-malformed" not in result.stderr


@contextlib.asynccontextmanager
async def _serving(
    key: str, *flags: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, int, dict[str, Any]]]:
    """``mxgw-sim serve --plaintext`` with ``key`` from the environment and ``flags``: its
    address, pid and start line; it must stop cleanly (exit 0) when terminated."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *SERVE,
        "--json",
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**(env or os.environ), "FE_TEST_KEY": key, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        yield info["address"], proc.pid, info
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_api_key_env_serves_with_a_key_that_is_not_in_the_process_list() -> None:
    key = new_key()
    async with _serving(key) as (address, pid, _):
        assert key.encode() not in _cmdline(pid)
        async with grpc.aio.insecure_channel(address) as channel:
            gw = Gw(channel, key)
            sid = await gw.open()
            await gw.ok(sid, "ping")


def test_first_value_delay_flag_default_agrees_with_the_session_options() -> None:
    from mxgateway_sim import SessionOptions
    from mxgateway_sim.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["serve", "--plaintext", "--api-key-env", "K"])
    assert args.first_value_delay_ms / 1000.0 == SessionOptions().first_value_delay_s == 0.0
    args = parser.parse_args(["serve", "--plaintext", "--first-value-delay-ms", "5000"])
    assert args.first_value_delay_ms == 5000


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_first_value_comes_after_the_configured_delay(isolation: str) -> None:
    from mxgateway import DataChange, GatewayClient
    from mxgateway_sim import GatewaySimulator, SessionOptions, builtin_catalog

    delay = 1.5
    async with (
        GatewaySimulator(
            catalog=builtin_catalog(),
            session_options=SessionOptions(first_value_delay_s=delay),
            session_isolation=isolation,  # type: ignore[arg-type]
        ) as sim,
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
        await client.open_session(client_session_name="latency") as session,
    ):
        loop = asyncio.get_running_loop()
        h = await session.register("latency")
        item = await session.add_item(h, "Tank01.Description")
        dropped = await session.add_item(h, "Tank01.Level")
        advised_at = loop.time()
        await session.advise(h, item)
        await session.advise(h, dropped)
        await session.unadvise(h, dropped)  # before its first value: it never gets one
        async with session.events() as events:
            with pytest.raises(asyncio.TimeoutError):  # nothing before the delay
                await asyncio.wait_for(events.__anext__(), delay / 3)
            first = await asyncio.wait_for(events.__anext__(), 30)
            arrived_at = loop.time()
            assert isinstance(first, DataChange) and first.item_handle == item
            assert arrived_at - advised_at >= delay * 0.9  # the option's meaning, not a bound
            with pytest.raises(asyncio.TimeoutError):  # the unadvised item stays silent
                await asyncio.wait_for(events.__anext__(), delay)


async def test_read_bulk_of_an_unadvised_tag_waits_for_the_first_value() -> None:
    # Upstream ReadBulk advises an uncached tag and waits (up to timeout_ms) for its first
    # OnDataChange; with the delay on, a shorter timeout leaves such a row without a value.
    from mxgateway import GatewayClient, from_mx_value
    from mxgateway_sim import GatewaySimulator, SessionOptions, builtin_catalog

    delay = 1.0
    async with (
        GatewaySimulator(
            catalog=builtin_catalog(),
            session_options=SessionOptions(first_value_delay_s=delay),
        ) as sim,
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
        await client.open_session(client_session_name="latency-read") as session,
    ):
        loop = asyncio.get_running_loop()
        h = await session.register("latency-read")
        short = await session.read_bulk(h, ["Tank01.Description"], timeout_ms=100)
        assert not short[0].was_successful and "first value" in short[0].error_message
        started = loop.time()
        waited = await session.read_bulk(h, ["Tank01.Description"])
        assert waited[0].was_successful and not waited[0].was_cached
        assert loop.time() - started >= delay * 0.9  # the option's meaning, not a bound
        assert from_mx_value(waited[0].value) is not None
        # An advised item whose first value has arrived answers from the cache at once.
        item = await session.add_item(h, "Tank01.Description")
        await session.advise(h, item)
        async with session.events() as events:
            await asyncio.wait_for(events.__anext__(), 30)
        cached = await session.read_bulk(h, ["Tank01.Description"], timeout_ms=100)
        assert cached[0].was_successful and cached[0].was_cached


@pytest.mark.parametrize(
    ("flags", "loop"),
    [
        ((), "uvloop"),  # the default (auto) where uvloop is installed
        (("--event-loop", "auto"), "uvloop"),
        (("--event-loop", "uvloop"), "uvloop"),
        (("--event-loop", "asyncio"), "asyncio"),  # the opt-out
        # A gateway that starts worker processes too: it starts them without fork().
        (("--session-isolation", "process"), "uvloop"),
        (("--session-isolation", "process", "--event-loop", "uvloop"), "uvloop"),
        (("--session-isolation", "process", "--event-loop", "asyncio"), "asyncio"),
    ],
)
async def test_event_loop_serves_the_same_commands_and_events(
    flags: tuple[str, ...], loop: str
) -> None:
    pytest.importorskip("uvloop")
    key = new_key()
    async with _serving(key, *flags) as (address, _, info):
        assert info["eventLoop"] == loop
        await _commands_and_events(address, key)


async def test_event_loop_auto_without_uvloop_serves_on_asyncio(tmp_path: Path) -> None:
    # A uvloop that cannot be imported (Windows, or a trimmed install): auto is asyncio.
    (tmp_path / "uvloop.py").write_text("raise ImportError('no uvloop here')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    key = new_key()
    async with _serving(key, env={**os.environ, "PYTHONPATH": path}) as (address, _, info):
        assert info["eventLoop"] == "asyncio"
        await _commands_and_events(address, key)


async def _commands_and_events(address: str, key: str) -> None:
    """A session's commands and its first data change, through the public API."""
    from mxgateway import ClientOptions, DataChange, GatewayClient

    options = ClientOptions(endpoint=address, api_key=key, plaintext=True)
    async with (
        await GatewayClient.connect(options=options) as client,
        await client.open_session() as session,
    ):
        h = await session.register("uvloop")
        rows = await session.subscribe_bulk(h, ["Tank01.Level"])
        assert rows[0].was_successful
        async with session.events() as events:
            event = await asyncio.wait_for(events.__anext__(), 30)
        assert isinstance(event, DataChange) and event.item_handle == rows[0].item_handle
        (row,) = await session.read_bulk(h, ["Tank01.Level"])
        assert row.tag_address == "Tank01.Level"
        await session.ping()


def test_event_loop_uvloop_without_the_package_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # A uvloop that cannot be imported, first on the child's path: a usage error.
    (tmp_path / "uvloop.py").write_text("raise ImportError('no uvloop here')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "FE_TEST_KEY": new_key(), "PYTHONPATH": path}
    result = _run_cli(*SERVE, "--event-loop", "uvloop", env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "uvloop" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--scan-interval-ms", "x"], "argument --scan-interval-ms: 'x' is not an integer"),
        (["--scan-interval-ms", "0"], "argument --scan-interval-ms: 0 must be positive"),
        (["--worker-pool", "-1"], "argument --worker-pool: -1 cannot be negative"),
        (["--worker-pool", "x"], "argument --worker-pool: 'x' is not an integer"),
    ],
)
def test_an_integer_flag_out_of_its_range_is_one_line_and_exit_2(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mxgateway_sim.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--plaintext", *flags])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"mxgw-sim serve: error: {message}\n"


def test_worker_timing_flags_default_to_the_worker_settings_and_set_their_own() -> None:
    # The three --worker-*-seconds flags are declared in one loop: each defaults to its own
    # WorkerSettings field (not a neighbour's) and sets that field alone.
    from mxgateway_sim.cli import _WORKER, build_parser

    parser = build_parser()
    fields = {
        "worker_heartbeat_seconds": _WORKER.heartbeat_s,
        "worker_heartbeat_grace_seconds": _WORKER.heartbeat_grace_s,
        "worker_startup_seconds": _WORKER.startup_timeout_s,
    }
    assert len(set(fields.values())) == 3  # distinct defaults: a swap would show
    args = parser.parse_args(["serve", "--plaintext"])
    assert {name: getattr(args, name) for name in fields} == fields
    for name in fields:
        flag = "--" + name.replace("_", "-")
        args = parser.parse_args(["serve", "--plaintext", flag, "123.5"])
        assert {n: getattr(args, n) for n in fields} == {**fields, name: 123.5}, flag
