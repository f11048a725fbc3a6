"""TLS with the self-signed CA, the mxgw-sim CLI, the wire encoder and the Galaxy wiring."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from simhelpers import Gw, changes

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, builtin_catalog, new_key
from mxgateway_sim._domain import (
    CAT_SECURITY_ERROR,
    BufferedDataChange,
    DataChange,
    TagSample,
    WriteComplete,
    failure,
)
from mxgateway_sim._wire import EventEncoder, event_to_pb, unframe

CLI = [sys.executable, "-c", "from mxgateway_sim.cli import run; run()"]


async def test_self_signed_tls_needs_the_ca(tmp_path: Path) -> None:
    async with GatewaySimulator(
        tls="self-signed", tls_dir=tmp_path, catalog=builtin_catalog()
    ) as sim:
        assert sim.ca_file is not None and sim.ca_file.exists()
        creds = grpc.ssl_channel_credentials(root_certificates=sim.ca_file.read_bytes())
        async with grpc.aio.secure_channel(sim.endpoint, creds) as channel:
            assert await Gw(channel, sim.api_key).open()
        async with grpc.aio.secure_channel(sim.endpoint, grpc.ssl_channel_credentials()) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await Gw(ch, sim.api_key).stub.OpenSession(
                    pb.OpenSessionRequest(), metadata=Gw(ch, sim.api_key).md, timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(sim.endpoint) as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await Gw(plain, sim.api_key).stub.OpenSession(
                    pb.OpenSessionRequest(), metadata=Gw(plain, sim.api_key).md, timeout=5
                )
    # Certificate files given explicitly (reusing the generated ones).
    async with GatewaySimulator(
        tls=(tmp_path / "server.pem", tmp_path / "server-key.pem"), catalog=builtin_catalog()
    ) as sim2:
        assert sim2.ca_file is None
        creds = grpc.ssl_channel_credentials((tmp_path / "ca.pem").read_bytes())
        async with grpc.aio.secure_channel(sim2.endpoint, creds) as channel:
            assert await Gw(channel, sim2.api_key).open()


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_2() -> None:
    key = new_key()
    cases = [
        ["serve", "--api-key", key],  # no transport chosen
        ["serve", "--plaintext"],  # no key
        ["serve", "--plaintext", "--api-key", "secret-but-malformed"],
        ["serve", "--plaintext", "--api-key", key, "--listen", "nowhere"],
        ["serve", "--plaintext", "--api-key", key, "--scan-interval-ms", "0"],
        [
            "serve",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
            "--api-key",
            key,
        ],
        ["keys", "create", "--scopes", "invoke:read,root"],
        ["frobnicate"],
    ]
    for args in cases:
        result = _run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, args
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "secret-but-malformed" not in result.stderr


def test_serve_defaults_are_the_session_defaults() -> None:
    """``mxgw-sim serve`` and ``SessionOptions`` agree, overflow policy fail-fast included."""
    from mxgateway_sim import OverflowPolicy, SessionOptions
    from mxgateway_sim.cli import build_parser

    args = build_parser().parse_args(["serve", "--plaintext", "--api-key", new_key()])
    defaults = SessionOptions()
    assert OverflowPolicy(args.overflow_policy) is defaults.overflow_policy
    assert defaults.overflow_policy is OverflowPolicy.FAIL_FAST  # upstream's default
    for flag, field in [
        ("max_sessions", "max_sessions"),
        ("lease_seconds", "lease_s"),
        ("max_pending_commands", "max_pending_commands"),
        ("command_timeout_seconds", "command_timeout_s"),
        ("replay_ring_size", "replay_ring_size"),
        ("replay_ring_seconds", "replay_ring_age_s"),
        ("event_queue_size", "event_queue_limit"),
        ("max_subscribers", "max_subscribers"),
        ("closed_session_memory", "closed_memory"),
        ("closed_session_seconds", "closed_memory_s"),
    ]:
        assert getattr(args, flag) == getattr(defaults, field), flag


def test_cli_keys_create() -> None:
    plain = _run_cli("keys", "create", "--scopes", "invoke:read,events:read")
    assert plain.returncode == 0
    key = plain.stdout.strip()
    assert key.startswith("mxgw_") and key.count("_") >= 2
    entry = json.loads(
        _run_cli("keys", "create", "--scopes", "admin", "--name", "ops", "--json").stdout
    )
    assert entry["scopes"] == ["admin"] and entry["name"] == "ops"
    assert entry["key"] != key


async def test_cli_serve_prints_its_line_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    key = new_key()
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{key} session:open,invoke:read reader\n")
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--tls-self-signed",
        str(tmp_path / "tls"),
        "--api-keys-file",
        str(keys_file),
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--scan-interval-ms",
        "50",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        info = json.loads(line)
        assert info["event"] == "listening" and info["tls"] == "self-signed"
        creds = grpc.ssl_channel_credentials(_read(info["caFile"]))
        async with grpc.aio.secure_channel(info["address"], creds) as channel:
            gw = Gw(channel, key)
            sid = await gw.open()
            await gw.ok(sid, "ping")
            with pytest.raises(grpc.aio.AioRpcError) as err:  # the file gave no session:close
                await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert proc.stderr is not None
        assert key not in (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_fast_event_encoding_matches_the_generated_classes() -> None:
    sid = "session-" + "ab" * 16
    encoder = EventEncoder(sid)
    bad = failure(CAT_SECURITY_ERROR, 1012, "denied")
    samples = [
        TagSample(12.5, 4, 192, 1_700_000_000.25),
        TagSample(3.25, 3, 64, 1_700_000_001.0),
        TagSample(-7, 2, 192, 1_700_000_002.5),
        TagSample(True, 1, 24, 1_700_000_003.0, bad),
        TagSample("héllo", 5, 192, 1_700_000_004.0),
        TagSample([1, 2, 3], 2, 192, 1_700_000_005.0),
        TagSample(None, 0, 4, 1_700_000_006.0, bad),
    ]
    events: list[object] = [DataChange(1, i + 1, s) for i, s in enumerate(samples)]
    events += [WriteComplete(1, 2, bad), BufferedDataChange(1, 3, 2, tuple(samples[2:3]))]
    framed = encoder.encode(events, 40_000, 1_700_000_010.5)  # type: ignore[arg-type]
    for i, (event, data) in enumerate(zip(events, framed, strict=True)):
        expected = event_to_pb(event, sid, 40_000 + i, 1_700_000_010.5)  # type: ignore[arg-type]
        assert pb.MxEvent.FromString(unframe(data)) == expected, event
    batch = pb.MxEventBatch.FromString(b"".join(framed))
    assert [e.worker_sequence for e in batch.events] == list(range(40_000, 40_009))


async def test_default_simulator_serves_the_galaxy_namespace(tmp_path: Path) -> None:
    pytest.importorskip("mxgateway_sim.galaxy")
    async with GatewaySimulator(galaxy_db=tmp_path / "galaxy.db") as sim:
        if not sim.galaxy_available:
            pytest.skip("the Galaxy layer is not available in this build")
        assert sim.plant is not None
        tags = [t for t in sim.plant.catalog.all_tags() if not t.is_array][:5]
        assert tags
        async with grpc.aio.insecure_channel(sim.endpoint) as channel:
            gw = Gw(channel, sim.api_key)
            sid = await gw.open()
            sh = await gw.register(sid)
            handles = [await gw.subscribe(sid, sh, t.full_tag_reference) for t in tags]
            events = await gw.drain_until(sid, lambda ev: all(changes(ev, h) for h in handles))
            assert all(changes(events, h)[0].statuses[0].detail not in (11, 12) for h in handles)


def test_cli_deploy_on_a_bad_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    for path in (junk, tmp_path / "missing.db"):
        result = _run_cli("deploy", "--galaxy-db", str(path), "--add", "1")
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
