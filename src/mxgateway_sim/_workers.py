"""Session isolation: where a session's MXAccess runtime runs.

``inline`` (the default) runs every session's runtime inside the gateway process, on the
shared plant. ``process`` starts one ``mxgw-worker`` per session (as upstream does with its
32-bit MXAccess workers): a worker that crashes or hangs faults only its own session.
:class:`ProcessIsolation` keeps what the workers need (the runtime configuration file, in a
private directory removed when the gateway stops), a small pool of workers started ahead
(knowing no session until one is handed out) and makes each session's
:class:`~mxgateway_sim._workerclient.WorkerRuntime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

from mxgateway._logsafe import get_logger
from mxgateway_sim._plant import Plant
from mxgateway_sim._simconfig import SimSettings, write_config
from mxgateway_sim._simruntime import SimUser
from mxgateway_sim._workerclient import WorkerRuntime, WorkerSettings, WorkerStartError

SessionIsolation = Literal["inline", "process"]
ISOLATIONS: Final[tuple[SessionIsolation, ...]] = ("inline", "process")

log = get_logger("mxgateway_sim.workers")


class ProcessIsolation:
    """Makes worker runtimes for one gateway; writes the simulated runtime's configuration."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._dir: Path | None = None
        self._plant: Plant | None = None
        self._users: tuple[SimUser, ...] = ()
        self._sim = SimSettings()
        self._config: Path | None = None
        self._version: int | None = None
        self._pool: list[WorkerRuntime] = []
        self._filling: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._pooling = False

    def prepare(self, plant: Plant, users: Sequence[SimUser], sim: SimSettings) -> None:
        """Remember what a simulated worker is built from (written on the first session)."""
        self._plant = plant
        self._users = tuple(users)
        self._sim = sim
        self._config = None
        self._version = None

    def _config_file(self) -> Path | None:
        """The configuration for the catalog version in force (rewritten after a redeploy)."""
        plant = self._plant
        if plant is None or self.settings.runtime != "simulated":
            return None
        version = plant.catalog.version
        if self._config is None or self._version != version:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="mxgw-workers-"))  # mode 0700
            path = self._dir / f"runtime-{version}.json"
            write_config(path, plant.catalog, self._users, self._sim)
            self._config, self._version = path, version
        return self._config

    def runtime(self) -> WorkerRuntime:
        """A new session's runtime: a pooled worker when one is waiting (started with the
        configuration in force), else one to start; the pool is topped up behind it."""
        config = self._config_file()
        try:
            while self._pool:
                pooled = self._pool.pop(0)
                if pooled.idle() and pooled.config == config:
                    return pooled
                self._retire(pooled)  # exited, or started before a redeploy
            return WorkerRuntime(self.settings, config)
        finally:
            self._refill()

    @property
    def pooled(self) -> int:
        """Workers waiting in the pool."""
        return len(self._pool)

    def start_pool(self) -> None:
        """Start filling the pool (the gateway started; call from its event loop)."""
        self._pooling = self.settings.pool_size > 0
        self._refill()

    def _refill(self) -> None:
        if not self._pooling or (self._filling is not None and not self._filling.done()):
            return
        if len(self._pool) >= self.settings.pool_size:
            return
        self._filling = asyncio.get_running_loop().create_task(
            self._fill(), name="mxgw-worker-pool"
        )

    async def _fill(self) -> None:
        """Launch workers until the pool is full; one that cannot start ends the round (the
        next session open tries again) rather than retrying in a loop."""
        while self._pooling and len(self._pool) < self.settings.pool_size:
            worker = WorkerRuntime(self.settings, self._config_file())
            try:
                await worker.launch()
            except WorkerStartError as exc:
                log.warning("a worker for the pool did not start: %s", exc)
                return
            except Exception:  # never an unretrieved task error: sessions start their own
                log.exception("a worker for the pool did not start")
                await worker.close()
                return
            self._pool.append(worker)

    def _retire(self, worker: WorkerRuntime) -> None:
        task = asyncio.get_running_loop().create_task(worker.close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def stop_pool(self) -> None:
        """Stop the pooled workers (in parallel; each is killed after the shutdown timeout)."""
        self._pooling = False
        filling, self._filling = self._filling, None
        if filling is not None:
            filling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # _fill logged it
                await filling
        pool, self._pool = self._pool, []
        for worker in pool:
            self._retire(worker)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def cleanup(self) -> None:
        """Remove the private directory (the gateway stopped; its workers are gone)."""
        directory, self._dir = self._dir, None
        self._config = None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
