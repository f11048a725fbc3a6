"""Worker figures of ``--metrics-listen`` in process isolation: workers alive, and a killed
worker counted as lost (its session faulted with cause ``worker_lost``)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest
from ophelpers import scrape, value

from mxgateway import GatewayClient
from mxgateway_sim import GatewaySimulator, builtin_catalog
from mxgateway_sim._workerclient import WorkerSettings

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


async def test_workers_alive_and_lost_are_counted() -> None:
    settings = WorkerSettings(heartbeat_s=0.1, heartbeat_grace_s=1.0, shutdown_timeout_s=5.0)
    async with (
        GatewaySimulator(
            catalog=builtin_catalog(),
            scan_interval_ms=20,
            flaky_one_in=0,
            session_isolation="process",
            worker_settings=settings,
            metrics_listen=("127.0.0.1", 0),
        ) as sim,
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
    ):
        endpoint = sim.metrics_endpoint
        assert endpoint is not None
        first = await client.open_session(client_session_name="worker one")
        second = await client.open_session(client_session_name="worker two")
        samples = await scrape(endpoint)
        assert value(samples, "mxgw_workers_alive") == 2
        info = [dict(labels) for (name, labels) in samples if name == "mxgw_build_info"]
        assert info == [
            {
                "version": info[0]["version"],
                "runtime": "simulated",
                "isolation": "process",
                "galaxy": "none (in-memory tag catalog)",
            }
        ]
        pid = (await first.get_worker_info()).process_id
        os.kill(pid, signal.SIGKILL)
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:  # noticed within moments
            samples = await scrape(endpoint)
            if value(samples, "mxgw_workers_lost_total") >= 1:
                break
            await asyncio.sleep(0.05)
        assert value(samples, "mxgw_workers_lost_total") == 1
        assert value(samples, "mxgw_sessions_faulted_total", cause="worker_lost") == 1
        assert value(samples, "mxgw_workers_alive") == 1
        await second.close()
        await first.close()
