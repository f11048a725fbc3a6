"""Worker processes on either event loop: started without fork(), holding only their channel.

A gateway full of gRPC's threads starts its workers itself (``mxgateway_sim._spawn``:
``vfork`` on Linux), not through the loop's ``subprocess_exec``: uvloop's forks, and gRPC's
fork handlers then aborted some workers before they ran. These tests run a gateway with
``--session-isolation process`` on uvloop and on asyncio: sessions, commands, events, a
killed worker, the stop; no fork handler runs; a worker inherits no descriptor of the
gateway but its own channel and stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from workerhelpers import gone, live_workers, process_gateway, worker_pid

from mxgateway import DataChange, MxGatewaySessionFaultedError, Session
from mxgateway_sim._eventloop import is_uvloop
from mxgateway_sim._workerclient import WorkerSettings

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not on Windows")
DEADLINE = 30.0
LOOPS = ("uvloop", "asyncio")


def _run(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on a new loop of that kind, bounded (a broken channel fails, not hangs)."""

    async def bounded() -> None:
        assert is_uvloop(asyncio.get_running_loop()) == (loop == "uvloop")
        await asyncio.wait_for(main(), 4 * DEADLINE)

    if loop == "uvloop":
        pytest.importorskip("uvloop").run(bounded())
    else:
        asyncio.run(bounded())


@pytest.mark.parametrize("loop", LOOPS)
def test_process_isolation_serves_sessions_and_survives_a_killed_worker(loop: str) -> None:
    """Commands, events and a write through a worker; ``sim.fault_session()`` kills one
    worker and faults only its session; new sessions keep opening (from the pool and
    without one); the stop ends every worker."""

    async def scenario() -> None:
        settings = WorkerSettings(pool_size=1, shutdown_timeout_s=5.0)
        async with process_gateway(settings, scan_interval_ms=20, flaky_one_in=0) as (
            sim,
            client,
        ):
            victim = await client.open_session(client_session_name="victim")
            bystander = await client.open_session(client_session_name="bystander")
            pid = await worker_pid(victim)
            for session in (victim, bystander):
                h = await session.register("t")
                (row,) = await session.subscribe_bulk(h, ["Tank01.Level"])
                assert row.was_successful
                async with session.events() as events:
                    event = await asyncio.wait_for(anext(events), DEADLINE)
                assert isinstance(event, DataChange) and event.item_handle == row.item_handle
                (read,) = await session.read_bulk(h, ["Tank01.Level"])
                assert read.was_successful
                await session.write(h, row.item_handle, 42.5)
            assert sim.fault_session(victim.session_id)
            assert await gone(pid)
            with pytest.raises(MxGatewaySessionFaultedError):
                await victim.ping()
            await bystander.ping()
            more = [await client.open_session(client_session_name=f"s{i}") for i in range(3)]
            for session in more:  # the pooled one, then workers started with the session
                await session.ping()
            every = set(live_workers())
            assert len(every) == 5  # bystander, three more, a pooled spare
            await sim.stop()
        for worker in every:
            assert await gone(worker)

    _run(loop, scenario)


async def _until_faulted(session: Session) -> None:
    for _ in range(int(DEADLINE / 0.05)):
        try:
            await session.ping()
        except MxGatewaySessionFaultedError:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the session did not fault")


def test_without_a_pidfd_a_thread_waits_for_each_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there is no pidfd (not Linux 5.3+), a thread waits for each worker instead: a
    killed worker still faults its session and is reaped; the stop ends the others."""
    monkeypatch.delattr(os, "pidfd_open", raising=False)

    async def scenario() -> None:
        settings = WorkerSettings(pool_size=0, shutdown_timeout_s=5.0)
        async with process_gateway(settings) as (sim, client):
            victim = await client.open_session(client_session_name="victim")
            other = await client.open_session(client_session_name="other")
            pid, kept = await worker_pid(victim), await worker_pid(other)
            os.kill(pid, signal.SIGKILL)
            await _until_faulted(victim)
            assert await gone(pid)
            await other.ping()
            await sim.stop()
        assert await gone(kept)

    _run("uvloop", scenario)


_FORK_PROBE = textwrap.dedent(
    """
    import asyncio, ctypes, json, os, sys
    import uvloop
    from mxgateway import GatewayClient
    from mxgateway_sim import GatewaySimulator, builtin_catalog
    from mxgateway_sim._workerclient import WorkerSettings

    calls = {"python": 0, "pthread": 0}
    os.register_at_fork(before=lambda: calls.__setitem__("python", calls["python"] + 1))
    HANDLER = ctypes.CFUNCTYPE(None)
    def _prepare():
        calls["pthread"] += 1
    prepare = HANDLER(_prepare)
    # pthread_atfork(3) is a static wrapper of glibc's exported __register_atfork.
    libc = ctypes.CDLL(None)
    assert libc.__register_atfork(prepare, None, None, None) == 0

    async def main():
        settings = WorkerSettings(pool_size=2)
        async with GatewaySimulator(
            catalog=builtin_catalog(), session_isolation="process", worker_settings=settings
        ) as sim, await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client:
            for i in range(4):
                async with await client.open_session(client_session_name=f"s{i}") as s:
                    await s.ping()
            await sim.stop()

    uvloop.run(main())
    pid = os.fork()  # the probes work: a real fork runs both
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print(json.dumps(calls))
    """
)


@pytest.mark.parametrize("fork_support", ["0", "1"])
def test_starting_workers_runs_no_fork_handler(fork_support: str) -> None:
    """A gateway on uvloop starts workers without fork(): neither a Python
    (``os.register_at_fork``) nor a C (``pthread_atfork``) fork handler runs, whether gRPC's
    fork support is on or off; the probes themselves run on a real ``os.fork()``."""
    pytest.importorskip("uvloop")
    if not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None:
        pytest.skip("workers are started with vfork() on Linux; the C probe needs glibc")
    env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": fork_support}
    result = subprocess.run(
        [sys.executable, "-c", _FORK_PROBE],
        capture_output=True,
        text=True,
        env=env,
        timeout=4 * DEADLINE,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    calls = json.loads(result.stdout.strip().splitlines()[-1])
    assert calls == {"python": 1, "pthread": 1}, result.stdout  # the one os.fork() only


def _held(pid: int | str) -> dict[tuple[int, int], str]:
    """The pipes, sockets and files ``pid`` holds open, by identity (device, inode), with
    what each is (``pipe:[N]``, ``socket:[N]``, a path); devices such as /dev/null and
    anonymous inodes (an event loop's epoll) are left out: every process has its own."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{name}"
        with contextlib.suppress(OSError):  # closed meanwhile
            info = os.stat(path)
            if stat.S_IFMT(info.st_mode) in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG):
                out[(info.st_dev, info.st_ino)] = os.readlink(path)
    return out


@pytest.mark.parametrize("loop", LOOPS)
def test_a_worker_inherits_only_its_own_channel(loop: str) -> None:
    """A worker holds nothing of the gateway but its own stdin/stdout pipes and stderr: not
    the listening socket or a client connection, not another worker's pipes, not a file
    the gateway holds open and inheritable (as if started with one from its parent)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")

    async def scenario() -> None:
        with tempfile.TemporaryFile() as leaky:
            os.set_inheritable(leaky.fileno(), True)
            async with (
                process_gateway(WorkerSettings(pool_size=1)) as (_, client),
                await client.open_session(client_session_name="a") as a,
                await client.open_session(client_session_name="b") as b,
            ):
                gateway = _held("self")
                assert any(t.startswith("socket:") for t in gateway.values())  # listening
                assert os.fstat(leaky.fileno()).st_ino in {ino for _, ino in gateway}
                stderr = os.fstat(2)
                gateway.pop((stderr.st_dev, stderr.st_ino), None)  # the worker's stderr too
                channels = []
                for session in (a, b):
                    worker = _held(await worker_pid(session))
                    shared = {gateway[k] for k in worker.keys() & gateway.keys()}
                    # Its channel: the two pipes the gateway holds the other ends of.
                    assert len(shared) == 2, (worker, shared)
                    assert all(t.startswith("pipe:") for t in shared), shared
                    channels.append(shared)
                assert not channels[0] & channels[1]  # no worker holds another's pipes

    _run(loop, scenario)


def test_the_event_loop_option_agrees_with_the_docs() -> None:
    """``--event-loop`` takes the values the docs list, with either session isolation."""
    from mxgateway_sim._eventloop import EVENT_LOOPS
    from mxgateway_sim.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve"]).event_loop == "auto"
    for value in EVENT_LOOPS:
        for isolation in ("inline", "process"):
            args = ["serve", "--event-loop", value, "--session-isolation", isolation]
            assert parser.parse_args(args).event_loop == value
    docs = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"
    (row,) = [ln for ln in docs.read_text().splitlines() if ln.startswith("| `--event-loop")]
    assert "| `auto` |" in row
    for value in EVENT_LOOPS:
        assert f"`{value}`" in row
