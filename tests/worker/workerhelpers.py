"""Helpers of the worker tests: a raw gateway end of an ``mxgw-worker`` channel, and a
process-isolation gateway with a client, its workers and their end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

from mxgateway import GatewayClient, Session
from mxgateway._version import WORKER_PROTOCOL_VERSION
from mxgateway.generated import mxaccess_worker_pb2 as wpb
from mxgateway_sim import GatewaySimulator, builtin_catalog
from mxgateway_sim._framing import FrameDecoder, frame
from mxgateway_sim._simconfig import SimSettings, write_config
from mxgateway_sim._simruntime import DEFAULT_USERS
from mxgateway_sim._workerclient import WorkerSettings
from mxgateway_sim._workerwire import NONCE_ENV, EnvelopeHead

SESSION = "session-" + "ab" * 16
TIMEOUT = 30.0


def runtime_config(directory: Path, scan_interval_ms: int = 20) -> Path:
    """A simulated-runtime configuration over the built-in catalog."""
    path = directory / "runtime.json"
    settings = SimSettings(scan_interval_ms=scan_interval_ms, flaky_one_in=0)
    write_config(path, builtin_catalog(), DEFAULT_USERS, settings)
    return path


class RawWorker:
    """An ``mxgw-worker`` process and the gateway's end of its channel, frame by frame."""

    def __init__(
        self, proc: asyncio.subprocess.Process, nonce: str, session: str = SESSION
    ) -> None:
        self.proc = proc
        self.nonce = nonce
        self.head = EnvelopeHead(session)
        self._decoder = FrameDecoder()
        self._queue: list[bytes] = []

    @classmethod
    async def start(
        cls,
        config: Path | None,
        *,
        nonce: str = "n0nce-for-tests",
        extra: tuple[str, ...] = (),
        session: str | None = SESSION,
    ) -> RawWorker:
        """A worker for ``session`` (None: started without one, as the gateway's pool does;
        its hello then names :data:`SESSION`)."""
        env = dict(os.environ)
        env[NONCE_ENV] = nonce
        args = [
            sys.executable,
            "-m",
            "mxgateway_sim.worker",
            *(["--session-id", session] if session is not None else []),
            "--protocol-version",
            str(WORKER_PROTOCOL_VERSION),
            *(["--runtime-config", str(config)] if config is not None else []),
            *extra,
        ]
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(proc, nonce, SESSION if session is None else session)

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def send(self, correlation_id: str = "", **body: Any) -> None:
        self.send_raw(self.head.frame(correlation_id, **body))

    async def receive(self) -> wpb.WorkerEnvelope | None:
        """The next envelope from the worker (None at the end of its output)."""
        assert self.proc.stdout is not None
        while not self._queue:
            data = await asyncio.wait_for(self.proc.stdout.read(1 << 16), TIMEOUT)
            if not data:
                return None
            self._queue.extend(self._decoder.feed(data))
        return wpb.WorkerEnvelope.FromString(self._queue.pop(0))

    async def receive_body(self, body: str) -> wpb.WorkerEnvelope:
        """The next envelope with this body (heartbeats and events before it are skipped
        unless asked for)."""
        while True:
            env = await self.receive()
            assert env is not None, f"the worker ended before sending {body}"
            if env.WhichOneof("body") == body:
                return env

    async def handshake(self) -> wpb.WorkerEnvelope:
        self.send(gateway_hello=wpb.GatewayHello(nonce=self.nonce))
        hello = await self.receive_body("worker_hello")
        await self.receive_body("worker_ready")
        return hello

    async def finish(self) -> tuple[int, str]:
        """Exit code and standard error once the worker ends (killed after the timeout)."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        if not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            err = await asyncio.wait_for(self.proc.stderr.read(), TIMEOUT)
            code = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        return code, err.decode(errors="replace")


def frame_of(envelope: wpb.WorkerEnvelope) -> bytes:
    return frame(envelope.SerializeToString())


@contextlib.asynccontextmanager
async def process_gateway(
    settings: WorkerSettings | None = None, **options: Any
) -> AsyncIterator[tuple[GatewaySimulator, GatewayClient]]:
    """A process-isolation gateway with these worker settings (None: the defaults) and
    ``GatewaySimulator`` options (the catalog: the built-in one unless given), and a
    client of it."""
    options.setdefault("catalog", builtin_catalog())
    async with (
        GatewaySimulator(session_isolation="process", worker_settings=settings, **options) as sim,
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
    ):
        yield sim, client


async def worker_pid(session: Session) -> int:
    """The process id of the session's worker (not this process)."""
    pid = (await session.get_worker_info()).process_id
    assert pid not in (0, os.getpid())
    return pid


async def gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (reaped, not a zombie), within :data:`TIMEOUT`."""
    for _ in range(int(TIMEOUT / 0.05)):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                await asyncio.sleep(0.05)
                continue
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.05)
    return False


def live_workers() -> dict[int, psutil.Process]:
    """This process's live ``mxgw-worker`` children (the in-process gateway's workers)."""
    out = {}
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if "mxgateway_sim.worker" in child.cmdline() and child.status() != "zombie":
                out[child.pid] = child
    return out
