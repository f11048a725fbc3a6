"""Fixtures of the fault tests: a simulator on loopback and raw stubs for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from faulthelpers import SCAN_MS, Raw

from mxgateway_sim import GatewaySimulator, builtin_catalog


@pytest.fixture
async def sim() -> AsyncIterator[GatewaySimulator]:
    async with GatewaySimulator(
        catalog=builtin_catalog(), scan_interval_ms=SCAN_MS, flaky_one_in=0
    ) as s:
        yield s


@pytest.fixture
async def raw(sim: GatewaySimulator) -> AsyncIterator[Raw]:
    async with grpc.aio.insecure_channel(sim.endpoint) as channel:
        yield Raw(channel, sim.api_key)
