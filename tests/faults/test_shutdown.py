"""Graceful shutdown with open streams: a clean status on every stream, no traceback anywhere."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from faulthelpers import DEADLINE, SCAN_MS, Raw, connect

from mxgateway import DataChange, MxGatewayUnavailableError, StreamFault
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, builtin_catalog, new_key
from support.rawstub import read_to_end

MXGW_SIM = (sys.executable, "-c", "from mxgateway_sim.cli import run; run()")
"""The CLI(s) as this interpreter runs them (no console script needed)."""


async def _open_streams(raw: Raw) -> tuple[str, list[grpc.aio.UnaryStreamCall]]:  # type: ignore[type-arg]
    sid = await raw.open("shutdown")
    h = (await raw.ok(sid, "register", client_name="s")).register.server_handle
    await raw.ok(sid, "subscribe_bulk", server_handle=h, tag_addresses=["Tank01.Level"])
    request = pb.StreamEventsRequest(session_id=sid, after_worker_sequence=0)
    single = raw.stub.StreamEvents(request, metadata=raw.md)
    first = await asyncio.wait_for(single.read(), DEADLINE)
    assert first.worker_sequence == 1
    # A second session for the batch stream (one subscriber per session).
    sid2 = await raw.open("shutdown-2")
    batches = raw.stub.StreamEventBatches(pb.StreamEventsRequest(session_id=sid2), metadata=raw.md)
    alarms = raw.stub.StreamAlarms(pb.StreamAlarmsRequest(), metadata=raw.md)
    first_alarm = await asyncio.wait_for(alarms.read(), DEADLINE)
    assert first_alarm is not grpc.aio.EOF
    return sid, [single, batches, alarms]


async def test_in_process_stop_with_open_streams(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sim = GatewaySimulator(catalog=builtin_catalog(), scan_interval_ms=SCAN_MS, flaky_one_in=0)
    await sim.start()
    try:
        async with (
            grpc.aio.insecure_channel(sim.endpoint) as channel,
            await connect(sim) as client,
        ):
            # Attached, so closing the client does not try to close it on a stopped server.
            opened = await client.open_session_raw(client_session_name="typed")
            session = client.attach_session(opened.session_id)
            raw = Raw(channel, sim.api_key)
            _, (single, batches, alarms) = await _open_streams(raw)
            h = await session.register("typed")
            await session.subscribe_bulk(h, ["Pump01.Speed"])
            events = session.events(after_worker_sequence=0, max_resume_attempts=1)
            assert isinstance(await asyncio.wait_for(events.__anext__(), DEADLINE), DataChange)
            ends = [
                asyncio.ensure_future(read_to_end(single, batched=False)),
                asyncio.ensure_future(read_to_end(batches, batched=True)),
            ]
            await sim.stop()
            for end in ends:
                kinds, code = await asyncio.wait_for(end, DEADLINE)
                assert kinds == [pb.STREAM_FAULT_KIND_SERVER_SHUTDOWN]
                assert code is grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as alarm_end:
                while await asyncio.wait_for(alarms.read(), DEADLINE) is not grpc.aio.EOF:
                    pass
            assert alarm_end.value.code() is grpc.StatusCode.UNAVAILABLE
            # The public client: a typed notice, then a typed error (after its resume try).
            seen: list[object] = []
            with pytest.raises(MxGatewayUnavailableError):
                async for event in events:
                    seen.append(event)
            notices = [e for e in seen if isinstance(e, StreamFault)]
            assert [n.kind_name for n in notices] == ["SERVER_SHUTDOWN"]
            await events.aclose()
    finally:
        await sim.stop()
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert record.levelno < logging.ERROR, record.getMessage()
    assert "Traceback" not in caplog.text


def _serve(args: list[str]) -> tuple[subprocess.Popen[str], dict[str, object]]:
    server = subprocess.Popen(
        [*MXGW_SIM, "serve", "--listen", "127.0.0.1:0", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line:
        server.kill()
        raise AssertionError(f"mxgw-sim did not start: {server.communicate()[1]}")
    return server, json.loads(line)


def _finish(server: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for a server already sent SIGTERM (a second one would force-kill it)."""
    try:
        return server.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.communicate()


async def test_sigterm_with_open_streams_and_a_fault_plan(tmp_path: Path) -> None:
    key = new_key()
    plan = tmp_path / "faults.json"
    plan.write_text(json.dumps({"rpc": {"Invoke": {"delay_s": 0.2}}, "quality_flaky_one_in": 0}))
    server, started = _serve(["--plaintext", "--api-key", key, "--faults", str(plan)])
    try:
        endpoint = str(started["address"])
        async with grpc.aio.insecure_channel(endpoint) as channel:
            raw = Raw(channel, key)
            sid = await raw.open()
            begun = time.monotonic()
            await raw.ok(sid, "ping")
            assert time.monotonic() - begun >= 0.2  # the plan file is in force
            _, (single, batches, alarms) = await _open_streams(raw)
            ends = [
                asyncio.ensure_future(read_to_end(single, batched=False)),
                asyncio.ensure_future(read_to_end(batches, batched=True)),
            ]
            server.send_signal(signal.SIGTERM)
            for end in ends:
                kinds, code = await asyncio.wait_for(end, DEADLINE)
                assert kinds == [pb.STREAM_FAULT_KIND_SERVER_SHUTDOWN]
                assert code is grpc.StatusCode.UNAVAILABLE
            alarms.cancel()
        out, err = await asyncio.to_thread(_finish, server)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err
    assert "Traceback" not in err and "Traceback" not in out
    assert "error" not in err.lower(), err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"rpc": {"Invokee": {}}}', "unknown method"),
        ('{"stream_drop_after_events": -1}', "non-negative"),
    ],
)
def test_bad_fault_plan_is_a_one_line_usage_error(
    tmp_path: Path, content: str, message: str
) -> None:
    plan = tmp_path / "faults.json"
    plan.write_text(content)
    result = subprocess.run(
        [*MXGW_SIM, "serve", "--plaintext", "--allow-anonymous", "--faults", str(plan)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mxgw-sim: error: --faults:"), result.stderr
    assert message in lines[0]
    serve = [*MXGW_SIM, "serve", "--plaintext", "--allow-anonymous"]
    missing = subprocess.run(
        [*serve, "--faults", "/nonexistent/plan.json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2 and "cannot read" in missing.stderr
