"""Fixtures for the simulator tests: a running GatewaySimulator and a raw-stub client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from simhelpers import SCAN_MS, Gw

from mxgateway_sim import GatewaySimulator, builtin_catalog
from support.logs import root_logging_kept  # noqa: F401  # autouse: see there


@pytest.fixture
async def sim() -> AsyncIterator[GatewaySimulator]:
    async with GatewaySimulator(
        catalog=builtin_catalog(), scan_interval_ms=SCAN_MS, flaky_one_in=0
    ) as s:
        yield s


@pytest.fixture
async def gw(sim: GatewaySimulator) -> AsyncIterator[Gw]:
    async with grpc.aio.insecure_channel(sim.endpoint) as channel:
        yield Gw(channel, sim.api_key)


@pytest.fixture(params=[True, False], ids=["numpy", "python"])
def numpy_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Read plans take the numpy path (``mxgateway_sim._readvec``; skipped where numpy is
    not installed), or the pure-Python path it stands in for: a test of plans runs on
    both, each compared with the row-by-row path."""
    from mxgateway_sim import _readvec

    on: bool = request.param
    if on and _readvec.np is None:
        pytest.skip("numpy is not installed")
    monkeypatch.setattr(_readvec, "ENABLED", on)
    return on
