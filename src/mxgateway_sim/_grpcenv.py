"""gRPC core settings of the simulator's server processes, set before gRPC loads.

gRPC core (grpcio 1.85) serves accepted connections on its EventEngine by default: a
readable socket wakes an EventEngine poller thread, which hands the read to a second
EventEngine thread, which completes the operation and wakes grpc.aio's poller thread,
which wakes the event loop. With the ``event_engine_listener`` experiment off, grpc.aio's
poller thread polls the sockets itself. Measured on one command of the persistent stream
(``docs/benchmarks.md``, "Thread wake-ups per command"): the server's threads go to sleep
7.1-7.5 times a command with the default, 4.0-4.2 times without, and each such sleep is a
wake-up the scheduler may delay when the machine is busy (the tail of single calls).

gRPC reads ``GRPC_EXPERIMENTS`` once, when it loads (``import grpc``), and the setting is
process-wide, so only the simulator's own programs apply it (``mxgw-sim``,
``mxgw-gateway``: :mod:`mxgateway_sim._launch`), never an embedded
:class:`~mxgateway_sim.GatewaySimulator` (its host's gRPC is the host's) nor the client
library. An operator's own ``GRPC_EXPERIMENTS`` (even empty) wins. Linux only: that is
where it was measured (elsewhere gRPC's defaults stay).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__all__ = ["GRPC_EXPERIMENTS", "SERVER_EXPERIMENTS", "apply_server_experiments"]

GRPC_EXPERIMENTS = "GRPC_EXPERIMENTS"
"""The environment variable gRPC core reads its experiments from (comma-separated, ``-``
turns one off)."""

SERVER_EXPERIMENTS = "-event_engine_listener"
"""The experiments a simulator server process runs with (see the module docstring)."""


def apply_server_experiments(
    environ: MutableMapping[str, str] | None = None, platform: str = sys.platform
) -> bool:
    """Set :data:`SERVER_EXPERIMENTS` in ``environ`` (the process's by default) on Linux,
    unless the variable is set already or gRPC is loaded (too late to matter). True when
    set; child processes (workers) inherit it."""
    env = os.environ if environ is None else environ
    if platform != "linux" or GRPC_EXPERIMENTS in env or "grpc" in sys.modules:
        return False
    env[GRPC_EXPERIMENTS] = SERVER_EXPERIMENTS
    return True
