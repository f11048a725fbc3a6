"""The status page in a real headless Chromium: it loads without console errors, shows a
session this test opened, and fits a phone's width.

CI installs Chromium (``.ci/run``); elsewhere the test is skipped, saying why, when no
browser is found. ``MXGW_STATUS_SCREENSHOT=PATH`` saves the page's screenshot (PNG), as
used in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

import grpc
import pytest
from headless import Browser, PageVisit, find_browser
from simhelpers import SCAN_MS, Gw, wait_for

from mxgateway.generated import mxaccess_gateway_pb2 as pb
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
        # An event stream attached to the first session while the page is read.
        stream = gw.stub.StreamEventBatches(pb.StreamEventsRequest(session_id=sid), metadata=gw.md)
        received = 0

        async def read_stream() -> None:
            nonlocal received
            async for batch in stream:
                received += len(batch.events)

        reader = asyncio.get_running_loop().create_task(read_stream())
        await wait_for(lambda: received > 0, timeout=60)

        def look() -> PageVisit:
            with Browser(executable) as browser:
                browser.visit(url)  # a first look, so the event rates have a window
                time.sleep(2.2)
                return browser.visit(url)

        try:
            visit = await asyncio.to_thread(look)
            # The longest name a session may have, without a space, still wraps in its card.
            await gw.open("x" * 256)
            crowded = await asyncio.to_thread(lambda: Browser(executable).visit_once(url))
        finally:
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
    assert visit.errors == []
    text = visit.text
    assert "serving" in text
    assert sid[:16] in text and sid not in text
    assert "line-3 <historian>" in text  # escaped in the HTML, shown as written
    assert "operator HMI" in text and "faulted" in text
    # The streaming session's card: one stream attached, a measured event rate.
    # (A card's cells, in the columns' order: session, key, client, age, items, events,
    # rate, queue, streams, state; the labels are CSS content, not text.)
    cells = text[text.index(sid[:16]) :].split("\n")[:10]
    assert cells[2] == "line-3 <historian>" and cells[4] == "3", cells
    assert cells[6].endswith("/s") and cells[8] == "1" and cells[9] == "ready", cells
    assert "--max-sessions" in text
    assert visit.title.startswith("mxgw gateway")
    # Reads on a phone: nothing wider than the 390 px viewport (tables scroll in their card).
    assert visit.scroll_width <= visit.viewport_width
    assert visit.inner_overflow == 0
    assert crowded.errors == [] and "x" * 40 in crowded.text
    assert crowded.scroll_width <= crowded.viewport_width and crowded.inner_overflow == 0
    png = visit.png
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    target = os.environ.get("MXGW_STATUS_SCREENSHOT")
    if target:
        await asyncio.to_thread(Path(target).write_bytes, png)
