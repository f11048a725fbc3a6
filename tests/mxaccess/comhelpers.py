"""Helpers of the MXAccess COM runtime tests: the target under test and when the real
LMXProxyServer runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import tzinfo

from fake_lmx import FakeLmxProxyServer, FakePlatform

from mxgateway import GatewayClient
from mxgateway_mxaccess import MxAccessComRuntime, mxaccess_runtime_factory
from mxgateway_sim import GatewaySimulator
from mxgateway_sim._domain import DataChange, MxRuntimeEvent, WriteComplete

INTEGRATION = os.environ.get("MXGATEWAY_INTEGRATION") == "1"


def real_skip_reason() -> str | None:
    """Why the real-COM variant does not run here (None: it runs)."""
    if not INTEGRATION:
        return (
            "real LMXProxyServer: set MXGATEWAY_INTEGRATION=1 on a System Platform node "
            "(with MXGATEWAY_TEST_TAG and MXGATEWAY_TEST_WRITE_TAG) to run against it"
        )
    if sys.platform != "win32":
        return "MXGATEWAY_INTEGRATION=1, but this is not Windows: no MXAccess here"
    if not os.environ.get("MXGATEWAY_TEST_TAG") or not os.environ.get("MXGATEWAY_TEST_WRITE_TAG"):
        return "MXGATEWAY_INTEGRATION=1 needs MXGATEWAY_TEST_TAG and MXGATEWAY_TEST_WRITE_TAG"
    return None


@dataclass
class Target:
    """One LMXProxyServer under test and the tags to use on it."""

    kind: str
    runtime: MxAccessComRuntime
    read_tag: str  # any readable attribute
    write_tag: str  # an Integer attribute writable by Operate
    platform: FakePlatform | None
    events: list[MxRuntimeEvent] = field(default_factory=list)
    first_value_s: float = 0.05

    @property
    def fake(self) -> FakeLmxProxyServer:
        assert self.platform is not None and self.platform.server is not None
        return self.platform.server

    async def wait_for(
        self, check: Callable[[list[MxRuntimeEvent]], bool], timeout: float | None = None
    ) -> list[MxRuntimeEvent]:
        """Wait until ``check(events so far)``; fails at the deadline."""
        limit = timeout if timeout is not None else 10.0 + self.first_value_s * 3
        deadline = time.monotonic() + limit
        while not check(self.events):
            assert time.monotonic() < deadline, f"not seen within {limit} s: {self.events}"
            await asyncio.sleep(0.01)
        return self.events


def fake_target_of() -> Target:
    platform = FakePlatform(first_value_delay_s=0.05)
    runtime = MxAccessComRuntime(platform, idle_s=0.02)
    return Target("fake", runtime, "Tank01.Level", "Tank01.Setpoint", platform)


@contextlib.asynccontextmanager
async def running(t: Target) -> AsyncIterator[None]:
    await t.runtime.start(t.events.extend)
    try:
        yield
    finally:
        await t.runtime.close()


def data_changes(events: list[MxRuntimeEvent], item: int) -> list[DataChange]:
    return [e for e in events if isinstance(e, DataChange) and e.item_handle == item]


def write_completes(events: list[MxRuntimeEvent], item: int) -> list[WriteComplete]:
    return [e for e in events if isinstance(e, WriteComplete) and e.item_handle == item]


async def advised(t: Target, ref: str, *, supervisory: bool = False) -> tuple[int, int]:
    """Register, AddItem, Advise, and wait for the first OnDataChange."""
    h = await t.runtime.register("mxgw-test")
    item = await t.runtime.add_item(h, ref)
    await t.runtime.advise(h, item, supervisory=supervisory)
    await t.wait_for(lambda ev: bool(data_changes(ev, item)))
    return h, item


@contextlib.asynccontextmanager
async def com_gateway(
    platforms: list[FakePlatform],
    *,
    node_zone: tzinfo | None = None,
    date_zone: tzinfo | None = None,
) -> AsyncIterator[tuple[GatewaySimulator, GatewayClient]]:
    """A gateway whose sessions run the COM runtime over fake LMXProxyServers (each new
    one appended to ``platforms``; ``node_zone``: the zone of their VT_DATE timestamps),
    and a client of it over real gRPC. ``date_zone``: the runtime's."""

    def platform() -> FakePlatform:
        platforms.append(FakePlatform(first_value_delay_s=0.05, node_zone=node_zone))
        return platforms[-1]

    factory = mxaccess_runtime_factory(platform, date_zone=date_zone)
    async with (
        GatewaySimulator(runtime_factory=factory) as sim,
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
    ):
        yield sim, client
