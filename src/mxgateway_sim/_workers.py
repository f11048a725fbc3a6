"""Session isolation: where a session's MXAccess runtime runs.

``inline`` (the default) runs every session's runtime inside the gateway process, on the
shared plant. ``process`` starts one ``mxgw-worker`` per session (as upstream does with its
32-bit MXAccess workers): a worker that crashes or hangs faults only its own session.
:class:`ProcessIsolation` keeps what the workers need (the runtime configuration file, in a
private directory removed when the gateway stops) and makes each session's
:class:`~mxgateway_sim._workerclient.WorkerRuntime`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

from mxgateway_sim._plant import Plant
from mxgateway_sim._simconfig import SimSettings, write_config
from mxgateway_sim._simruntime import SimUser
from mxgateway_sim._workerclient import WorkerRuntime, WorkerSettings

SessionIsolation = Literal["inline", "process"]
ISOLATIONS: Final[tuple[SessionIsolation, ...]] = ("inline", "process")


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
        """A new session's runtime (the process starts in ``WorkerRuntime.start``)."""
        return WorkerRuntime(self.settings, self._config_file())

    def cleanup(self) -> None:
        """Remove the private directory (the gateway stopped; its workers are gone)."""
        directory, self._dir = self._dir, None
        self._config = None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
