"""The status page in a real headless Chromium: it loads without console errors, shows a
session this test opened, and fits a phone's width.

CI installs Chromium (``.ci/run``); elsewhere the test is skipped, saying why, when no
browser is found. ``MXGW_STATUS_SCREENSHOT=PATH`` saves the page's screenshot (PNG), as
used in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import grpc
import pytest
from headless import Browser, PageVisit, find_browser
from simhelpers import SCAN_MS, Gw

from mxgateway_sim import GatewaySimulator, builtin_catalog

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _browser() -> str:
    found = find_browser()
    if found is None:
        if os.environ.get("CI", "").lower() == "true" and shutil.which("apt-get"):
            pytest.fail("CI=true but no Chromium: .ci/run installs it (apt-get install chromium)")
        pytest.skip(
            "no Chromium found (apt-get install chromium, or set MXGW_CHROMIUM): "
            "the status page browser test needs a real browser"
        )
    return found


async def test_status_page_in_headless_chromium() -> None:
    executable = _browser()
    async with (
        GatewaySimulator(
            catalog=builtin_catalog(),
            scan_interval_ms=SCAN_MS,
            flaky_one_in=0,
            metrics_listen=("127.0.0.1", 0),
        ) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        gw = Gw(channel, sim.api_key)
        sid = await gw.open("line-3 <historian>")
        sh = await gw.register(sid)
        for ref in ("Tank01.Level", "Tank01.Temperature", "Pump01.Speed"):
            await gw.subscribe(sid, sh, ref)
        other = await gw.open("operator HMI")
        await gw.subscribe(other, await gw.register(other), "Line01.State")
        assert sim.fault_session(await gw.open("crashing client"))
        url = f"http://{sim.metrics_endpoint}/"

        def look() -> PageVisit:
            with Browser(executable) as browser:
                browser.visit(url)  # a first look, so the event rates have a window
                time.sleep(2.2)
                return browser.visit(url)

        visit = await asyncio.to_thread(look)
    assert visit.errors == []
    text = visit.text
    assert "serving" in text
    assert sid[:16] in text and sid not in text
    assert "line-3 <historian>" in text  # escaped in the HTML, shown as written
    assert "operator HMI" in text and "faulted" in text
    assert "--max-sessions" in text
    assert visit.title.startswith("mxgw gateway")
    # Reads on a phone: nothing wider than the 390 px viewport (tables scroll in their card).
    assert visit.scroll_width <= visit.viewport_width
    png = visit.png
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    target = os.environ.get("MXGW_STATUS_SCREENSHOT")
    if target:
        await asyncio.to_thread(Path(target).write_bytes, png)
