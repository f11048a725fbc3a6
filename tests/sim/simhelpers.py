"""Helpers for the simulator tests: a thin client over the raw generated stubs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, builtin_catalog
from support import wait_for as wait_for
from support.rawstub import RawStub
from support.rawstub import command as command

SCAN_MS = 40


@contextlib.asynccontextmanager
async def gateway(**kwargs: Any) -> AsyncIterator[tuple[GatewaySimulator, grpc.aio.Channel]]:
    """An in-process gateway over the built-in catalog and a raw channel to it."""
    kwargs.setdefault("catalog", builtin_catalog())
    async with (
        GatewaySimulator(scan_interval_ms=SCAN_MS, flaky_one_in=0, **kwargs) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        yield sim, channel


async def healthy(channel: grpc.aio.Channel) -> bool:
    """The standard health check answers SERVING (keyless, as an orchestrator calls it)."""
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10
    )
    return reply.status == health_pb2.HealthCheckResponse.SERVING


class Gw(RawStub):
    """Raw generated stubs plus the key, for one channel, with the simulator tests' steps."""

    async def register(self, sid: str) -> int:
        return (await self.ok(sid, "register", client_name="t")).register.server_handle

    async def add(self, sid: str, sh: int, ref: str) -> int:
        reply = await self.ok(sid, "add_item", server_handle=sh, item_definition=ref)
        return reply.add_item.item_handle

    async def subscribe(self, sid: str, sh: int, ref: str, *, supervisory: bool = False) -> int:
        ih = await self.add(sid, sh, ref)
        kind = "advise_supervisory" if supervisory else "advise"
        await self.ok(sid, kind, server_handle=sh, item_handle=ih)
        return ih

    async def drain(self, sid: str) -> list[pb.MxEvent]:
        return list((await self.ok(sid, "drain_events")).drain_events.events)

    async def drain_until(
        self, sid: str, done: Callable[[list[pb.MxEvent]], bool], timeout: float = 10.0
    ) -> list[pb.MxEvent]:
        """DrainEvents repeatedly until ``done(all events so far)``; fails at the deadline."""
        events: list[pb.MxEvent] = []
        deadline = time.monotonic() + timeout
        while True:
            events.extend(await self.drain(sid))
            if done(events):
                return events
            assert time.monotonic() < deadline, f"condition not met; got {len(events)} events"
            await asyncio.sleep(0.02)


def changes(events: list[pb.MxEvent], item_handle: int) -> list[pb.OnDataChangeEvent]:
    """The OnDataChange bodies of one item."""
    return [
        e.on_data_change
        for e in events
        if e.HasField("on_data_change") and e.on_data_change.item_handle == item_handle
    ]


SIM_CLI = [sys.executable, "-c", "from mxgateway_sim.cli import run; run()"]
"""``mxgw-sim`` without relying on the console script being installed."""


@contextlib.asynccontextmanager
async def serve_process(
    *args: str, log: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A real ``mxgw-sim serve --plaintext --json ARGS`` on a free port, stderr to ``log``.

    Yields the process and its address; killed on exit if it is still running.
    """
    with log.open("w") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *SIM_CLI,
            "serve",
            "--plaintext",
            "--listen",
            "127.0.0.1:0",
            "--json",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        yield proc, info["address"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
