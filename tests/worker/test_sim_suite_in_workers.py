"""The simulator's command, bulk, event and alarm tests again, with every session's runtime
in its own ``mxgw-worker`` process (``--session-isolation process``).

The test functions are those of ``tests/sim``; only the ``sim`` fixture differs. Left out:
``test_control_commands`` (it expects ShutdownWorker's close to finish within 100 immediate
pings, which a worker's orderly shutdown does not), and the tests that build their own
inline simulator.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from mxgateway_sim import GatewaySimulator, builtin_catalog

# tests/sim is not a package: its modules are found the way pytest finds them there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))
simhelpers = importlib.import_module("simhelpers")
MODULES = [
    importlib.import_module(name)
    for name in ("test_sim_commands", "test_sim_bulk", "test_sim_events", "test_sim_alarms")
]

_INLINE_ONLY = {"test_control_commands"}


def _tests_of(module: object) -> dict[str, object]:
    """The module's test functions that take the ``sim``/``gw`` fixtures."""
    out = {}
    for name, value in vars(module).items():
        if not name.startswith("test_") or name in _INLINE_ONLY or not callable(value):
            continue
        params = getattr(value, "__code__", None)
        names = params.co_varnames[: params.co_argcount] if params is not None else ()
        if {"sim", "gw"} & set(names):
            out[f"{name}_in_workers"] = value
    return out


for _module in MODULES:
    globals().update(_tests_of(_module))


@pytest.fixture
async def sim() -> AsyncIterator[GatewaySimulator]:
    async with GatewaySimulator(
        catalog=builtin_catalog(),
        scan_interval_ms=simhelpers.SCAN_MS,
        flaky_one_in=0,
        session_isolation="process",
    ) as s:
        yield s


@pytest.fixture
async def gw(sim: GatewaySimulator) -> AsyncIterator[object]:
    async with grpc.aio.insecure_channel(sim.endpoint) as channel:
        yield simhelpers.Gw(channel, sim.api_key)
