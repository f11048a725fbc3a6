"""Fixtures of the fault tests: a simulator on loopback and raw stubs for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from faulthelpers import SCAN_MS, Raw

from mxgateway_sim import SCOPES, ApiKeyStore, GatewaySimulator, builtin_catalog, new_key
from mxgateway_sim._workers import SessionIsolation
from support.logs import root_logging_kept  # noqa: F401  # autouse: see there


@pytest.fixture
def admin_key() -> str:
    """An ``admin`` key: bad-input tests reach every handler, admin-only kinds included."""
    return new_key()


@pytest.fixture
def isolation() -> SessionIsolation:
    """Where sessions' runtimes run (``test_faults_in_workers.py`` runs the same tests with
    ``process``)."""
    return "inline"


@pytest.fixture
async def sim(admin_key: str, isolation: SessionIsolation) -> AsyncIterator[GatewaySimulator]:
    store = ApiKeyStore()
    store.add(admin_key, SCOPES, name="admin")
    async with GatewaySimulator(
        catalog=builtin_catalog(),
        scan_interval_ms=SCAN_MS,
        flaky_one_in=0,
        key_store=store,
        api_keys=[new_key()],
        session_isolation=isolation,
    ) as s:
        yield s


@pytest.fixture
async def raw(sim: GatewaySimulator, admin_key: str) -> AsyncIterator[Raw]:
    async with grpc.aio.insecure_channel(sim.endpoint) as channel:
        yield Raw(channel, admin_key)
