"""Metrics endpoint and status page of `--metrics-listen`, scraped over HTTP while a real
client (the `mxgateway` library over gRPC) runs a session, events and a failing write."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from ophelpers import Samples, http_get, scrape, value
from simhelpers import SCAN_MS, Gw, serve_process, wait_for

from mxgateway import DataChange, GatewayClient, MxAccessError
from mxgateway._version import __version__
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, builtin_catalog
from mxgateway_sim._auth import new_key
from mxgateway_sim.cli import main
from mxgateway_sim.galaxy import deploy as galaxy_deploy

HOSTILE_NAME = '<script>alert("x")</script>&\u202eevil\nname'


@pytest.fixture
async def msim() -> AsyncIterator[GatewaySimulator]:
    async with GatewaySimulator(
        catalog=builtin_catalog(),
        scan_interval_ms=SCAN_MS,
        flaky_one_in=0,
        metrics_listen=("127.0.0.1", 0),
    ) as s:
        yield s


def _key_id(key: str) -> str:
    return key.split("_")[1].lower()


async def test_counters_move_with_a_real_client_session(msim: GatewaySimulator) -> None:
    endpoint = msim.metrics_endpoint
    assert endpoint is not None and endpoint.startswith("127.0.0.1:")
    key = msim.api_key
    assert key is not None
    key_id = _key_id(key)
    before = await scrape(endpoint)
    assert value(before, "mxgw_up") == 1
    assert value(before, "mxgw_sessions_opened_total") == 0
    assert value(before, "mxgw_sessions_closed_total", reason="closed") == 0  # exported at 0

    async with await GatewayClient.connect(
        endpoint=msim.endpoint, api_key=key, plaintext=True
    ) as c:
        session = await c.open_session(client_session_name="metrics-test")
        sid = session.session_id
        sh = await session.register("ops")
        level = await session.add_item(sh, "Tank01.Level")
        serial = await session.add_item(sh, "Pump01.SerialNumber")  # ViewOnly: writes refused
        unadvised = await session.add_item(sh, "Line01.Recipe")
        await session.advise(sh, level)
        await session.advise(sh, serial)
        changes = 0
        stream = session.events()
        try:
            async for event in stream:
                if isinstance(event, DataChange) and event.item_handle == level:
                    changes += 1
                    if changes >= 3:
                        break
            # A write MXAccess accepts (the call answers OK) and refuses in OnWriteComplete.
            with pytest.raises(MxAccessError) as refused:
                await session.write(sh, serial, "SN-1", wait=True)
            assert refused.value.completion is not None  # the failure came in OnWriteComplete
            assert "OnWriteComplete" in str(refused.value)
            # A write that fails the call itself (the item is not advised).
            with pytest.raises(MxAccessError):
                await session.write(sh, unadvised, "R1")

            during = await scrape(endpoint)
        finally:
            await stream.aclose()
        assert value(during, "mxgw_sessions_open", key_id=key_id) == 1
        assert value(during, "mxgw_sessions_opened_total") == 1
        # The refused write answered OK (its failure is the OnWriteComplete event); the
        # unadvised one failed the call.
        assert value(during, "mxgw_commands_total", kind="write", status="ok") == 1
        assert value(during, "mxgw_commands_total", kind="write", status="mxaccess_failure") == 1
        assert value(during, "mxgw_commands_total", kind="advise", status="ok") == 2
        assert value(during, "mxgw_commands_total", kind="add_item", status="ok") == 3
        assert value(during, "mxgw_command_duration_seconds_count", kind="write") == 2
        assert value(during, "mxgw_command_duration_seconds_bucket", kind="write", le="+Inf") == 2
        assert value(during, "mxgw_command_duration_seconds_sum", kind="write") > 0
        # Three data changes and the write's completion at least were raised and delivered.
        raised = value(during, "mxgw_events_raised_total")
        assert raised >= 5
        assert 4 <= value(during, "mxgw_events_delivered_total") <= raised
        assert value(during, "mxgw_events_dropped_total") == 0
        assert value(during, "mxgw_replay_ring_events") >= 5
        assert value(during, "mxgw_replay_ring_bytes") > 0
        # The process figures come from the library's process collector.
        assert value(during, "process_resident_memory_bytes") > 10_000_000
        assert value(during, "process_cpu_seconds_total") > 0
        await session.close()

    after = await scrape(endpoint)
    assert value(after, "mxgw_sessions_open", key_id=key_id) == 0
    assert value(after, "mxgw_sessions_closed_total", reason="closed") == 1
    # Counters keep what the closed session did; the gauges fall back to zero.
    assert value(after, "mxgw_events_raised_total") >= raised
    assert value(after, "mxgw_replay_ring_bytes") == 0
    # Nothing in the scrape names the session (no session id as a label or anywhere).
    _, _, body = await http_get(endpoint, "/metrics")
    assert sid[len("session-") :][:8].encode() not in body
    secret = key.split("_", 2)[2]  # mxgw_<id>_<secret>; the secret may itself start with "_"
    assert key.encode() not in body and secret.encode() not in body


async def test_auth_failures_and_faults_are_counted(msim: GatewaySimulator) -> None:
    endpoint = msim.metrics_endpoint
    assert endpoint is not None
    async with grpc.aio.insecure_channel(msim.endpoint) as channel:
        nobody = Gw(channel, None)
        wrong = Gw(channel, new_key())
        for gw in (nobody, wrong):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await gw.open()
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        owner = Gw(channel, msim.api_key)
        sid = await owner.open("faulty")
        assert msim.fault_session(sid)
        reply = await owner.invoke(sid, "ping")
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_FAULTED
    samples = await scrape(endpoint)
    assert value(samples, "mxgw_authentication_failures_total", reason="missing_key") == 1
    assert value(samples, "mxgw_authentication_failures_total", reason="invalid_key") == 1
    assert value(samples, "mxgw_sessions_faulted_total", cause="injected") == 1
    assert value(samples, "mxgw_commands_total", kind="ping", status="session_faulted") == 1
    status, _, page = await http_get(endpoint, "/")
    assert status == 200
    assert b"injected" in page and b"faulted" in page


async def test_status_page_lists_the_session_with_its_name_escaped(
    msim: GatewaySimulator,
) -> None:
    endpoint = msim.metrics_endpoint
    assert endpoint is not None
    async with grpc.aio.insecure_channel(msim.endpoint) as channel:
        gw = Gw(channel, msim.api_key)
        sid = await gw.open(HOSTILE_NAME)
        status, headers, body = await http_get(endpoint, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["content-security-policy"]
    page = body.decode()
    assert sid[:16] in page and sid not in page  # the prefix only, never the whole id
    assert _key_id(msim.api_key or "") in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert '<meta http-equiv="refresh"' in page
    assert "--event-queue-bytes" in page and "--max-sessions" in page  # limits in force
    # HEAD, an unknown path, another method, a huge head: answered, never a crash.
    assert (await http_get(endpoint, "/", "HEAD"))[2] == b""
    assert (await http_get(endpoint, "/nope"))[0] == 404
    assert (await http_get(endpoint, "/", "POST"))[0] == 405
    assert (await http_get(endpoint, "/" + "a" * 20_000))[0] == 431
    assert await scrape(endpoint)  # still serving


async def test_metrics_are_off_by_default_and_loopback_only() -> None:
    async with GatewaySimulator(catalog=builtin_catalog()) as sim:
        assert sim.metrics_endpoint is None
    with pytest.raises(ValueError, match="--metrics-allow-remote"):
        GatewaySimulator(metrics_listen=("0.0.0.0", 0))
    # Allowed when asked for (bound on loopback here: the test stays on 127.0.0.1).
    GatewaySimulator(metrics_listen=("10.0.0.1", 0), metrics_allow_remote=True)


def test_serve_refuses_a_remote_metrics_address(capsys: pytest.CaptureFixture[str]) -> None:
    os.environ["OPS_TEST_KEY"] = new_key()
    try:
        code = main(
            [
                "serve",
                "--plaintext",
                "--listen",
                "127.0.0.1:0",
                "--api-key-env",
                "OPS_TEST_KEY",
                "--metrics-listen",
                "0.0.0.0:0",
            ]
        )
    finally:
        del os.environ["OPS_TEST_KEY"]
    assert code == 2
    err = capsys.readouterr().err
    assert "--metrics-allow-remote" in err and "Traceback" not in err


async def test_json_logs_follow_one_client(tmp_path: Path) -> None:
    key = new_key()
    os.environ["OPS_JSON_KEY"] = key
    log = tmp_path / "serve.log"
    try:
        async with serve_process(
            "--api-key-env",
            "OPS_JSON_KEY",
            "--log-format",
            "json",
            "--log-level",
            "info",
            "--metrics-listen",
            "127.0.0.1:0",
            log=log,
        ) as (proc, address):
            async with grpc.aio.insecure_channel(address) as channel:
                gw = Gw(channel, key)
                sid = await gw.open(HOSTILE_NAME)
                await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
                await wait_for(lambda: "closed" in log.read_text(), timeout=60)
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
    finally:
        del os.environ["OPS_JSON_KEY"]
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, text
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= line.keys()
    about = [line for line in lines if line.get("session") == sid[:16]]
    assert len(about) >= 2, lines  # opened and closed
    assert all(line["key"] == _key_id(key) for line in about)
    secret = key.split("_", 2)[2]  # mxgw_<id>_<secret>; the secret may itself contain "_"
    assert sid not in text and key not in text and secret not in text
    # The client's name is escaped: no raw newline or bidi override inside a line.
    assert "\u202e" not in text and all("\n" not in json.dumps(line) for line in lines)


async def test_metrics_cost_nothing_when_a_scrape_is_slow(msim: GatewaySimulator) -> None:
    """A client that opens the metrics port and sends nothing does not block a scrape."""
    endpoint = msim.metrics_endpoint
    assert endpoint is not None
    host, _, port = endpoint.rpartition(":")
    idle = [await asyncio.open_connection(host, int(port)) for _ in range(5)]
    try:
        assert value(await scrape(endpoint), "mxgw_up") == 1
    finally:
        for _, writer in idle:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def test_without_prometheus_client_the_start_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for module in ("prometheus_client", "mxgateway_sim._metrics", "mxgateway_sim._opsserver"):
        monkeypatch.setitem(sys.modules, module, None)
    sim = GatewaySimulator(catalog=builtin_catalog(), metrics_listen=("127.0.0.1", 0))
    with pytest.raises(ValueError, match=r"prometheus-client.*\[sim\]"):
        await sim.start()
    # A plain gateway does not need it.
    async with GatewaySimulator(catalog=builtin_catalog()) as plain:
        assert plain.metrics_endpoint is None


async def test_a_restart_keeps_the_metrics_address_and_counters(msim: GatewaySimulator) -> None:
    endpoint = msim.metrics_endpoint
    assert endpoint is not None
    async with grpc.aio.insecure_channel(msim.endpoint) as channel:
        await Gw(channel, msim.api_key).open("before restart")
    await msim.restart()
    assert msim.metrics_endpoint == endpoint
    samples = await scrape(endpoint)
    assert value(samples, "mxgw_sessions_opened_total") == 1
    assert value(samples, "mxgw_sessions_closed_total", reason="shutdown") == 1
    assert value(samples, "mxgw_up") == 1


async def test_galaxy_latency_and_deploys_are_counted(tmp_path: Path) -> None:
    db = tmp_path / "galaxy.db"
    async with (
        GatewaySimulator(
            galaxy_db=db, galaxy_poll_interval=0.05, metrics_listen=("127.0.0.1", 0)
        ) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        endpoint = sim.metrics_endpoint
        assert endpoint is not None
        stub = gr_grpc.GalaxyRepositoryStub(channel)
        md = (("authorization", f"Bearer {sim.api_key}"),)
        await stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(page_size=10), metadata=md)
        with pytest.raises(grpc.aio.AioRpcError) as err:  # an unknown root: NOT_FOUND
            await stub.BrowseChildren(
                gr.BrowseChildrenRequest(parent_tag_name="NoSuchObject"), metadata=md
            )
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        before = await scrape(endpoint)
        assert value(before, "mxgw_galaxy_deploys_total") == 0
        await asyncio.to_thread(galaxy_deploy, db, add=1)
        samples = await _scrape_until(endpoint, "mxgw_galaxy_deploys_total")
    assert value(samples, "mxgw_galaxy_deploys_total") == 1
    ok = value(samples, "mxgw_galaxy_requests_total", method="DiscoverHierarchy", code="ok")
    assert ok == 1
    missing = ("mxgw_galaxy_requests_total", {"method": "BrowseChildren", "code": "not_found"})
    assert value(samples, missing[0], **missing[1]) == 1
    count = "mxgw_galaxy_request_duration_seconds_count"
    assert value(samples, count, method="DiscoverHierarchy") == 1
    assert (
        value(
            samples,
            "mxgw_build_info",
            version=__version__,
            runtime="simulated",
            isolation="inline",
            galaxy="SQLite",
        )
        == 1
    )


async def _scrape_until(endpoint: str, name: str, deadline_s: float = 60.0) -> Samples:
    """Scrape until ``name`` is at least 1 (a background change: the deploy poller's)."""
    deadline = asyncio.get_running_loop().time() + deadline_s
    while True:
        samples = await scrape(endpoint)
        if value(samples, name) >= 1 or asyncio.get_running_loop().time() > deadline:
            return samples
        await asyncio.sleep(0.05)
