"""Hostile callers (issue 12): session ownership, authentication before the body is read,
malformed bodies, per-key session quotas, lease sweeps, connection timeouts and exclusive
ports. Each test replays an attack over real gRPC and shows it refused or bounded while the
server keeps answering health checks."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from simhelpers import SIM_CLI, Gw, gateway, healthy, wait_for

from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_rpc
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import SCOPES, ApiKeyStore, GatewaySimulator, SessionOptions, builtin_catalog
from mxgateway_sim import new_key as _new_key
from mxgateway_sim._auth import COMMAND_SCOPES, load_keys_file, scope_for_command
from mxgateway_sim._faults import FaultPlan
from mxgateway_sim._sessions import sweep_interval
from mxgateway_sim._tls import TlsSetupError
from mxgateway_sim.cli import main as sim_main

GATEWAY = "/mxaccess_gateway.v1.MxAccessGateway/"
NON_ADMIN = [s for s in SCOPES if s != "admin"]
PREFIX = "MX_COMMAND_KIND_"
KINDS = [n[len(PREFIX) :] for n, _ in pb.MxCommandKind.items() if n != PREFIX + "UNSPECIFIED"]
E_INVALIDARG = -2147024809
DOCS = Path(__file__).resolve().parents[2] / "docs"


class Keys:
    """An owner, an intruder with the same (non-admin) scopes, and an admin."""

    def __init__(self) -> None:
        self.store = ApiKeyStore()
        self.owner, self.intruder, self.admin = _new_key(), _new_key(), _new_key()
        self.store.add(self.owner, NON_ADMIN, name="owner")
        self.store.add(self.intruder, NON_ADMIN, name="intruder")
        self.store.add(self.admin, ["admin"], name="admin")


def _payload_command(kind: str) -> pb.MxCommand:
    cmd = pb.MxCommand(kind=pb.MxCommandKind.Value(PREFIX + kind))
    getattr(cmd, kind.lower()).SetInParent()
    return cmd


async def _outcome(call: Any) -> tuple[Any, ...]:
    """What a caller can observe of a call: status code and details, or the reply's status."""
    try:
        result = await call
    except grpc.aio.AioRpcError as exc:
        return ("rpc", exc.code(), exc.details())
    if isinstance(result, pb.MxCommandReply):
        return ("reply", result.protocol_status.code, result.protocol_status.message)
    return ("ok", type(result).__name__)


async def _stream_outcome(call: Any) -> tuple[Any, ...]:
    try:
        first = await asyncio.wait_for(call.read(), 10)
    except grpc.aio.AioRpcError as exc:
        return ("rpc", exc.code(), exc.details())
    finally:
        call.cancel()
    return ("message", type(first).__name__)


# -- ownership ---------------------------------------------------------------------------------


async def test_another_keys_session_looks_exactly_like_an_unknown_one() -> None:
    keys = Keys()
    async with gateway(key_store=keys.store) as (_, channel):
        owner, intruder = Gw(channel, keys.owner), Gw(channel, keys.intruder)
        sid = await owner.open("owned")
        sh = await owner.register(sid)
        item = await owner.subscribe(sid, sh, "Tank01.Level")
        await owner.drain_until(sid, lambda events: len(events) > 0)
        unknown = "session-" + "0" * 32

        for kind in KINDS:  # every command kind through Invoke
            seen = []
            for target in (sid, unknown):
                request = pb.MxCommandRequest(session_id=target, command=_payload_command(kind))
                seen.append(await _outcome(intruder.stub.Invoke(request, metadata=intruder.md)))
            assert seen[0] == seen[1], kind
            if scope_for_command(pb.MxCommandKind.Value(PREFIX + kind)) != "admin":
                assert seen[0][:2] == ("reply", pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND), kind
        assert await healthy(channel)  # mid-attack
        for method in ("StreamEvents", "StreamEventBatches"):
            seen = []
            for target in (sid, unknown):
                stream_request = pb.StreamEventsRequest(session_id=target, after_worker_sequence=0)
                call = getattr(intruder.stub, method)(stream_request, metadata=intruder.md)
                seen.append(await _stream_outcome(call))
            assert seen[0] == seen[1] == ("rpc", grpc.StatusCode.NOT_FOUND, seen[0][2]), method
        closes = [
            await _outcome(
                intruder.stub.CloseSession(
                    pb.CloseSessionRequest(session_id=target), metadata=intruder.md
                )
            )
            for target in (sid, unknown)
        ]
        assert closes[0] == closes[1] and closes[0][1] == grpc.StatusCode.NOT_FOUND

        # Nothing the intruder did touched the session: the owner still has its item and
        # can attach its single event stream (the intruder's attempt locked nobody out).
        stream = owner.stub.StreamEvents(pb.StreamEventsRequest(session_id=sid), metadata=owner.md)
        first = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(first, pb.MxEvent)
        stream.cancel()
        await owner.ok(sid, "un_advise", server_handle=sh, item_handle=item)
        assert await healthy(channel)


async def test_a_closed_session_is_still_not_revealed_to_another_key() -> None:
    """CloseSession is idempotent for the owner (a repeat close answers CLOSED), but another
    key's repeat close is NOT_FOUND, exactly as for an id that never existed."""
    keys = Keys()
    async with gateway(key_store=keys.store) as (_, channel):
        owner, intruder = Gw(channel, keys.owner), Gw(channel, keys.intruder)
        sid = await owner.open()
        close = pb.CloseSessionRequest(session_id=sid)
        await owner.stub.CloseSession(close, metadata=owner.md)
        again = await owner.stub.CloseSession(close, metadata=owner.md)
        assert again.final_state == pb.SESSION_STATE_CLOSED
        unknown = pb.CloseSessionRequest(session_id="session-" + "1" * 32)
        seen = [
            await _outcome(intruder.stub.CloseSession(request, metadata=intruder.md))
            for request in (close, unknown)
        ]
        assert seen[0] == seen[1] and seen[0][1] == grpc.StatusCode.NOT_FOUND


async def test_an_intruders_stream_cannot_lock_the_owner_out() -> None:
    """Single-subscriber mode: the intruder asks first and keeps asking; the owner attaches."""
    keys = Keys()
    async with gateway(key_store=keys.store) as (_, channel):
        owner, intruder = Gw(channel, keys.owner), Gw(channel, keys.intruder)
        sid = await owner.open()
        attempts = [
            intruder.stub.StreamEvents(pb.StreamEventsRequest(session_id=sid), metadata=intruder.md)
            for _ in range(5)
        ]
        for call in attempts:
            assert (await _stream_outcome(call))[1] == grpc.StatusCode.NOT_FOUND
        sh = await owner.register(sid)
        await owner.subscribe(sid, sh, "Tank01.Level")
        stream = owner.stub.StreamEvents(pb.StreamEventsRequest(session_id=sid), metadata=owner.md)
        assert isinstance(await asyncio.wait_for(stream.read(), 10), pb.MxEvent)
        stream.cancel()


async def test_admin_may_act_on_any_session() -> None:
    keys = Keys()
    async with gateway(key_store=keys.store) as (_, channel):
        owner, admin = Gw(channel, keys.owner), Gw(channel, keys.admin)
        sid = await owner.open()
        sh = await owner.register(sid)
        await admin.ok(sid, "add_item", server_handle=sh, item_definition="Tank01.Level")
        stream = admin.stub.StreamEventBatches(
            pb.StreamEventsRequest(session_id=sid), metadata=admin.md
        )
        await owner.ok(sid, "ping")  # the owner is not locked out by the admin either
        stream.cancel()
        closed = await admin.stub.CloseSession(
            pb.CloseSessionRequest(session_id=sid), metadata=admin.md
        )
        assert closed.session_id == sid
        reply = await owner.invoke(sid, "ping")
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND


async def test_admin_is_granted_by_name_only(tmp_path: Path) -> None:
    """docs/security.md: keys given without scopes (keys-file entries, ``--api-key-env``,
    ``keys create``) and anonymous callers act on their own sessions only; a key needs
    ``admin`` by name to close another key's session."""
    owner, unscoped, operator = _new_key(), _new_key(), _new_key()
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps([{"key": owner}, {"key": unscoped}, {"key": operator, "scopes": ["admin"]}])
    )
    store = ApiKeyStore(allow_anonymous=True)
    assert load_keys_file(keys, store) == 3
    async with gateway(key_store=store) as (_, channel):
        first = Gw(channel, owner)
        sid = await first.open()
        close = pb.CloseSessionRequest(session_id=sid)
        other = Gw(channel, unscoped)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await other.stub.CloseSession(close, metadata=other.md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        stub = other.stub
        with pytest.raises(grpc.aio.AioRpcError) as err:  # no key at all: anonymous
            await stub.CloseSession(close)  # no metadata
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        await first.ok(sid, "ping")  # still the owner's
        admin = Gw(channel, operator)
        closed = await admin.stub.CloseSession(close, metadata=admin.md)
        assert closed.final_state == pb.SESSION_STATE_CLOSED


def test_keys_create_leaves_admin_out_unless_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["keys", "create", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scopes"] == [s for s in SCOPES if s != "admin"]
    assert sim_main(["keys", "create", "--json", "--scopes", "admin"]) == 0
    assert json.loads(capsys.readouterr().out)["scopes"] == ["admin"]


async def test_session_ids_are_not_logged_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mxgateway_sim")
    options = SessionOptions(lease_s=0.2)
    async with gateway(session_options=options) as (sim, channel):
        gw = Gw(channel, sim.api_key)
        expired, faulted, closed = await gw.open(), await gw.open(), await gw.open()
        sim.fault_session(faulted)
        await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=closed), metadata=gw.md)
        assert sim.sessions is not None
        sessions = sim.sessions
        await wait_for(lambda: sessions.get(expired) is None)
    ids = (expired, faulted, closed)
    assert any(sid in r.getMessage() for r in caplog.records for sid in ids)  # at DEBUG
    loud = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert loud and not [m for m in loud if any(sid in m for sid in ids)]


# -- authenticate first, then decode -----------------------------------------------------------


def _raw_unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(GATEWAY + method)  # bytes in, bytes out


async def test_keyless_garbage_is_unauthenticated_without_parsing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with gateway() as (_, channel):
        for method in ("OpenSession", "Invoke", "CloseSession"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _raw_unary(channel, method)(b"\xff\xff\xff\xff garbage")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
        stream = channel.unary_stream(GATEWAY + "StreamEvents")(b"\x0a\xff\xff")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The services served without a key answer garbage with INVALID_ARGUMENT too.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/grpc.health.v1.Health/Check")(b"\xff\xff\xff")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reflection = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        )()
        await reflection.write(b"\xff\xff\xff")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reflection.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await healthy(channel)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_malformed_bodies_are_invalid_argument_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with gateway() as (sim, channel):
        md = (("authorization", f"Bearer {sim.api_key}"),)
        for method in ("OpenSession", "Invoke", "CloseSession", "AcknowledgeAlarm"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _raw_unary(channel, method)(b"\xff\xff\xff\xff", metadata=md)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "not a valid" in (err.value.details() or "")
        for method in ("StreamEvents", "StreamEventBatches", "QueryActiveAlarms"):
            call = channel.unary_stream(GATEWAY + method)(b"\x0a\x05ab", metadata=md)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        # The command stream: a command is answered, then a malformed body ends the stream.
        ping = pb.MxCommandRequest(
            session_id="session-" + "0" * 32,
            command=pb.MxCommand(kind=pb.MX_COMMAND_KIND_PING, ping=pb.PingCommand()),
        )
        stream = channel.stream_stream(GATEWAY + "InvokeStream")(metadata=md)
        await stream.write(ping.SerializeToString())
        reply = pb.MxCommandReply.FromString(await stream.read())
        assert reply.kind == pb.MX_COMMAND_KIND_PING
        await stream.write(b"\xff\xff\xff\xff")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid MxCommandRequest" in (err.value.details() or "")
        assert await healthy(channel)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_keyless_calls_whose_body_never_arrives_are_answered_at_once() -> None:
    """6,000 such calls used to stay pending; now each is refused on its headers alone."""
    async with gateway() as (_, channel):
        # The client writes headers and never a message (a request stream left open).
        stalled = [
            channel.stream_unary(GATEWAY + method)()
            for method in ("OpenSession", "Invoke", "StreamEvents") * 100
        ]
        assert await healthy(channel)  # the server answers meanwhile
        done = await asyncio.wait_for(
            asyncio.gather(*(_outcome(call) for call in stalled)), timeout=60
        )
        assert {d[1] for d in done} == {grpc.StatusCode.UNAUTHENTICATED}
        assert await healthy(channel)


# -- one scope table ---------------------------------------------------------------------------


def test_every_command_kind_has_a_scope_and_unknown_kinds_need_admin() -> None:
    assert set(COMMAND_SCOPES) == set(pb.MxCommandKind.values())
    assert set(COMMAND_SCOPES.values()) <= set(SCOPES)
    for kind in (max(pb.MxCommandKind.values()) + 1, 999, -1):
        assert scope_for_command(kind) == "admin"
    query = pb.MX_COMMAND_KIND_QUERY_ACTIVE_ALARMS
    assert scope_for_command(query) == "events:read"  # as the QueryActiveAlarms RPC


def test_docs_scope_table_agrees_with_the_server() -> None:
    """docs/protocol.md lists the kinds of every scope but invoke:read; they must match."""
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    listed: dict[str, set[str]] = {}
    for scope in ("invoke:write", "invoke:secure", "events:read", "admin"):
        row = re.search(rf"^\| `{scope}` \|(.*)$", text, re.MULTILINE)
        assert row is not None, scope
        names = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row.group(1)))
        listed[scope] = {n for n in names if PREFIX + n in pb.MxCommandKind.keys()}  # noqa: SIM118
    for kind, scope in COMMAND_SCOPES.items():
        name = pb.MxCommandKind.Name(kind)[len(PREFIX) :]
        if scope == "invoke:read":
            assert all(name not in kinds for kinds in listed.values()), name
        else:
            assert name in listed[scope], (name, scope)


# -- fairness ----------------------------------------------------------------------------------


async def test_one_key_cannot_take_every_session() -> None:
    keys = Keys()
    options = SessionOptions(max_sessions=5, max_sessions_per_key=2)
    async with gateway(key_store=keys.store, session_options=options) as (_, channel):
        greedy, other = Gw(channel, keys.owner), Gw(channel, keys.intruder)
        first = await greedy.open()
        await greedy.open()
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await greedy.open()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-sessions-per-key" in (err.value.details() or "")
        assert await other.open()  # everyone else still gets sessions
        assert await healthy(channel)
        await greedy.stub.CloseSession(pb.CloseSessionRequest(session_id=first), metadata=greedy.md)
        assert await greedy.open()  # a freed slot is the key's again


def test_the_lease_sweep_runs_in_proportion_to_the_lease() -> None:
    assert sweep_interval(SessionOptions()) == 30.0  # 1800 s lease: the upstream 30 s
    assert sweep_interval(SessionOptions(lease_s=60)) == pytest.approx(3.0)
    assert sweep_interval(SessionOptions(lease_s=0.5)) == pytest.approx(0.025)
    assert sweep_interval(SessionOptions(lease_s=0.5, sweep_interval_s=7)) == 7


async def test_a_short_lease_expires_without_waiting_for_a_30_s_sweep() -> None:
    async with gateway(session_options=SessionOptions(lease_s=0.3)) as (sim, channel):
        gw = Gw(channel, sim.api_key)
        sid = await gw.open()
        assert sim.sessions is not None
        sessions = sim.sessions
        await wait_for(lambda: sessions.get(sid) is None, timeout=15)  # < one 30 s sweep


def _read_until_closed(address: tuple[str, int], send: bytes) -> bytes:
    """Connect, send ``send``, read until the server closes the connection (or 30 s pass)."""
    received = b""
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(send)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pytest.fail("the server kept the connection open")
    return received


def _frame_types(data: bytes) -> list[int]:
    """HTTP/2 frame types in a byte stream from the server."""
    types, at = [], 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at : at + 3], "big")
        types.append(data[at + 3])
        at += 9 + length
    return types


GOAWAY = 0x7
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


async def test_silent_and_idle_connections_are_closed() -> None:
    async with gateway(header_timeout_s=0.5, idle_timeout_s=0.5) as (sim, channel):
        host, _, port = sim.endpoint.rpartition(":")
        address = (host, int(port))
        # A connection that never says anything (not even the HTTP/2 preface).
        silent = asyncio.to_thread(_read_until_closed, address, b"")
        # A connection that finishes its handshake and then never starts a call.
        idle = asyncio.to_thread(_read_until_closed, address, PREFACE)
        assert await healthy(channel)
        await silent  # returns once the server closed it
        assert GOAWAY in _frame_types(await idle)
        assert await healthy(channel)


@pytest.mark.parametrize("tls", [None, "self-signed"])
async def test_a_busy_port_is_a_start_error(tls: Any, tmp_path: Path) -> None:
    async with gateway(tls=tls, tls_dir=tmp_path) as (first, _):
        port = int(first.endpoint.rpartition(":")[2])
        second = GatewaySimulator(port=port, catalog=builtin_catalog(), tls=tls, tls_dir=tmp_path)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await second.start()
        await second.stop()


async def test_a_second_mxgw_sim_on_a_busy_port_is_a_clear_start_error(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key": _new_key()}]))
    async with gateway() as (first, _):
        port = first.endpoint.rpartition(":")[2]
        proc = await asyncio.create_subprocess_exec(
            *SIM_CLI,
            "serve",
            "--plaintext",
            "--listen",
            f"127.0.0.1:{port}",
            "--api-keys-file",
            str(keys),
            "--galaxy-db",
            str(tmp_path / "g.db"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 2, out
    assert out == b""  # never "listening"
    line = err.decode().strip()
    assert line == (
        f"mxgw-sim: error: cannot listen on 127.0.0.1:{port}: the port is in use or the "
        "address is not one of this host's"
    )


# -- smaller items of issue 12 -----------------------------------------------------------------


async def test_watch_deploy_events_with_an_out_of_range_time_is_invalid_argument(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway(catalog=None, galaxy_db=tmp_path / "g.db") as (sim, channel):
        stub = gr_rpc.GalaxyRepositoryStub(channel)
        md = (("authorization", f"Bearer {sim.api_key}"),)
        for seconds in (2**62, -(2**62), 253402300800, -62135596801):
            request = gr.WatchDeployEventsRequest(last_seen_deploy_time=Timestamp(seconds=seconds))
            call = stub.WatchDeployEvents(request, metadata=md)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(call.read(), 10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, seconds
            assert "last_seen_deploy_time" in (err.value.details() or "")
        assert await healthy(channel)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_references_with_control_characters_are_malformed() -> None:
    async with gateway() as (sim, channel):
        gw = Gw(channel, sim.api_key)
        sid = await gw.open()
        sh = await gw.register(sid)
        for ref in ("Tank01.Level\n", "Tank01.Level\r\n", "Tank01\n.Level", "Tank01.Level\x00"):
            reply = await gw.invoke(sid, "add_item", server_handle=sh, item_definition=ref)
            assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE, ref
            assert reply.hresult == E_INVALIDARG, ref
        assert await gw.add(sid, sh, "Tank01.Level") > 0


def _garbage_tls(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    key.write_text("garbage")
    return cert, key


async def test_bad_tls_files_are_reported_as_such(tmp_path: Path) -> None:
    cert, key = _garbage_tls(tmp_path)
    sim = GatewaySimulator(catalog=builtin_catalog(), tls=(cert, key))
    with pytest.raises(TlsSetupError) as err:
        await sim.start()
    assert str(cert) in str(err.value) and "bind" not in str(err.value).lower()
    # A real certificate with another certificate's key is refused the same way.
    good = GatewaySimulator(catalog=builtin_catalog(), tls="self-signed", tls_dir=tmp_path / "a")
    other = GatewaySimulator(catalog=builtin_catalog(), tls="self-signed", tls_dir=tmp_path / "b")
    for s in (good, other):
        await s.start()
        await s.stop()
    mixed = GatewaySimulator(
        catalog=builtin_catalog(),
        tls=(tmp_path / "a" / "server.pem", tmp_path / "b" / "server-key.pem"),
    )
    with pytest.raises(TlsSetupError, match="not a usable certificate chain"):
        await mixed.start()


def test_bad_tls_files_and_galaxy_databases_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = _garbage_tls(tmp_path)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key": _new_key()}]))
    serve = ["serve", "--listen", "127.0.0.1:0", "--api-keys-file", str(keys)]
    assert sim_main([*serve, "--tls-cert", str(cert), "--tls-key", str(key)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(cert) in err and "bind" not in err.lower(), err
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite" * 100)
    assert sim_main(["deploy", "--galaxy-db", str(garbage), "--add", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(garbage) in err, err
    assert sim_main([*serve, "--plaintext", "--galaxy-db", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(garbage) in err, err


async def test_another_keys_commands_do_not_count_toward_an_injected_crash() -> None:
    keys = Keys()
    plan = FaultPlan(worker_crash_after_commands=3)
    async with gateway(key_store=keys.store, faults=plan) as (_, channel):
        owner, intruder = Gw(channel, keys.owner), Gw(channel, keys.intruder)
        sid = await owner.open()
        for _ in range(5):
            reply = await intruder.invoke(sid, "ping")
            assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND
        await owner.ok(sid, "ping")
        await owner.ok(sid, "ping")
        reply = await owner.invoke(sid, "ping")  # the owner's third command
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_FAULTED
