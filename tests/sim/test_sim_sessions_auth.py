"""Sessions (ids, leases, limits, close) and authentication/authorization over real gRPC."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from simhelpers import SCAN_MS, Gw, command, wait_for

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import (
    ApiKeyStore,
    GatewaySimulator,
    SessionOptions,
    SimulatedRuntime,
    builtin_catalog,
    new_key,
)
from mxgateway_sim._auth import load_keys_file
from mxgateway_sim._plant import Plant


@asynccontextmanager
async def gateway(
    *, key_store: ApiKeyStore | None = None, **kwargs: Any
) -> AsyncIterator[tuple[GatewaySimulator, grpc.aio.Channel]]:
    async with (
        GatewaySimulator(
            catalog=builtin_catalog(),
            scan_interval_ms=SCAN_MS,
            flaky_one_in=0,
            key_store=key_store,
            **kwargs,
        ) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        yield sim, channel


async def test_session_ids_lease_and_second_channel(sim: GatewaySimulator, gw: Gw) -> None:
    reply = await gw.stub.OpenSession(
        pb.OpenSessionRequest(client_session_name="a"), metadata=gw.md
    )
    assert re.fullmatch(r"session-[0-9a-f]{32}", reply.session_id)
    assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK
    assert reply.gateway_protocol_version == 3
    assert reply.worker_protocol_version == 1
    assert reply.lease_duration.seconds == 1800
    sid = reply.session_id
    sh = await gw.register(sid)
    # A second connection (another process, in real life) uses the same session by id.
    async with grpc.aio.insecure_channel(sim.endpoint) as other:
        second = Gw(other, sim.api_key)
        assert await second.add(sid, sh, "Tank01.Level") == 1


async def test_max_sessions_is_resource_exhausted() -> None:
    async with gateway(max_sessions=2) as (sim, channel):
        gw = Gw(channel, sim.api_key)
        await gw.open()
        await gw.open()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gw.open()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_close_releases_everything_and_reports_counts(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    await gw.register(sid)
    await gw.subscribe(sid, sh, "Tank01.Level")
    await gw.subscribe(sid, sh, "Line01.Counter")
    await gw.add(sid, sh, "Pump01.Mode")
    reply = await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
    assert reply.final_state == pb.SESSION_STATE_CLOSED
    assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK
    assert (
        reply.released_advise_count,
        reply.released_item_count,
        reply.released_registration_count,
    ) == (2, 3, 2)
    after = await gw.invoke(sid, "ping")
    assert after.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND


async def _close(gw: Gw, sid: str) -> pb.CloseSessionReply:
    reply: pb.CloseSessionReply = await gw.stub.CloseSession(
        pb.CloseSessionRequest(session_id=sid), metadata=gw.md
    )
    return reply


def _released(reply: pb.CloseSessionReply) -> tuple[int, int, int]:
    return (
        reply.released_advise_count,
        reply.released_item_count,
        reply.released_registration_count,
    )


async def test_a_repeat_close_answers_closed_as_upstream(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    await gw.subscribe(sid, sh, "Tank01.Level")
    first = await _close(gw, sid)
    assert _released(first) == (1, 1, 1)
    for _ in range(2):
        again = await _close(gw, sid)
        assert again.session_id == sid
        assert again.final_state == pb.SESSION_STATE_CLOSED
        assert again.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK
        assert _released(again) == (0, 0, 0)  # nothing is released twice
    after = await gw.invoke(sid, "ping")
    assert after.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _close(gw, "session-" + "0" * 32)  # never opened
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


class _SlowCloseRuntime(SimulatedRuntime):
    """A runtime whose teardown waits for a release (a slow worker shutdown)."""

    release: asyncio.Event | None = None

    async def release_all(self) -> Any:
        assert self.release is not None
        await self.release.wait()
        return await super().release_all()


async def test_a_close_during_a_close_waits_for_it() -> None:
    release = asyncio.Event()
    _SlowCloseRuntime.release = release
    async with gateway(runtime_factory=_SlowCloseRuntime) as (sim, channel):
        gw = Gw(channel, sim.api_key)
        sid = await gw.open()
        await gw.register(sid)
        session = sim.sessions.get(sid) if sim.sessions else None
        assert session is not None
        first = asyncio.ensure_future(_close(gw, sid))
        await wait_for(lambda: session.state.name == "CLOSING")
        second = asyncio.ensure_future(_close(gw, sid))
        await asyncio.sleep(0.1)
        assert not second.done()  # waits for the running close instead of NOT_FOUND
        release.set()
        replies = [await first, await second]
        assert [r.final_state for r in replies] == [pb.SESSION_STATE_CLOSED] * 2
        assert sorted(_released(r) for r in replies) == [(0, 0, 0), (0, 0, 1)]


async def test_the_registry_forgets_closed_sessions_within_its_bounds() -> None:
    options = SessionOptions(closed_memory=2)
    async with gateway(session_options=options) as (sim, channel):
        gw = Gw(channel, sim.api_key)
        sids = [await gw.open() for _ in range(3)]
        for sid in sids:
            await _close(gw, sid)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _close(gw, sids[0])  # the oldest of three, beyond the count bound
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        for sid in sids[1:]:
            assert (await _close(gw, sid)).final_state == pb.SESSION_STATE_CLOSED
    options = SessionOptions(closed_memory_s=0.05)
    async with gateway(session_options=options) as (sim, channel):
        gw = Gw(channel, sim.api_key)
        sid = await gw.open()
        await _close(gw, sid)
        await asyncio.sleep(0.2)  # past the age bound
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _close(gw, sid)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_idle_sessions_expire_but_a_stream_keeps_one_alive() -> None:
    options = SessionOptions(lease_s=0.3, sweep_interval_s=0.05)
    async with gateway(session_options=options) as (sim, channel):
        gw = Gw(channel, sim.api_key)
        idle = await gw.open()
        watched = await gw.open()
        call = gw.stub.StreamEvents(pb.StreamEventsRequest(session_id=watched), metadata=gw.md)
        assert sim.sessions is not None
        sessions = sim.sessions
        await wait_for(
            lambda: bool(sessions.get(watched) and sessions.get(watched).events.subscribers)
        )  # type: ignore[union-attr]
        await wait_for(lambda: sessions.get(idle) is None)
        assert sessions.get(watched) is not None  # same age, but a stream is attached
        reply = await gw.invoke(idle, "ping")
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND
        await gw.ok(watched, "ping")
        call.cancel()


class _BlockingRuntime(SimulatedRuntime):
    """A runtime whose Ping waits for a release (a slow worker, which the plant cannot make)."""

    release: asyncio.Event | None = None

    async def ping(self) -> None:
        assert self.release is not None
        await self.release.wait()


async def test_pending_command_limit_and_command_timeout() -> None:
    release = asyncio.Event()
    _BlockingRuntime.release = release
    options = SessionOptions(max_pending_commands=1, command_timeout_s=0.5)
    async with gateway(session_options=options, runtime_factory=_BlockingRuntime) as (
        sim,
        channel,
    ):
        gw = Gw(channel, sim.api_key)
        sid = await gw.open()
        slow = asyncio.ensure_future(gw.invoke(sid, "ping"))
        session = sim.sessions.get(sid) if sim.sessions else None
        assert session is not None
        await wait_for(lambda: session.pending == 1)
        busy = await gw.invoke(sid, "get_session_state")
        assert busy.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OVERLOADED
        timed_out = await slow
        assert timed_out.protocol_status.code == pb.PROTOCOL_STATUS_CODE_TIMEOUT
        release.set()
        await gw.ok(sid, "ping")  # the slot is free again


def _store(scopes: Sequence[str]) -> tuple[ApiKeyStore, str, str]:
    store = ApiKeyStore()
    key, admin = new_key(), new_key()
    store.add(key, scopes, name="limited")
    store.add(admin, ["admin"])
    return store, key, admin


async def test_missing_or_invalid_keys_are_unauthenticated() -> None:
    store, key, _ = _store(["session:open"])
    async with gateway(key_store=store) as (_, channel):
        stub = Gw(channel, None).stub
        key_id = key.split("_")[1]
        for metadata in (
            (),
            (("authorization", key),),  # no Bearer prefix
            (("authorization", "Bearer not-a-key"),),
            (("authorization", f"Bearer mxgw_{key_id}_wrongsecret"),),
            (("authorization", f"Bearer {new_key()}"),),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.OpenSession(pb.OpenSessionRequest(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert key not in (err.value.details() or "")
        call = stub.StreamEventBatches(pb.StreamEventsRequest(session_id="x"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (
            await stub.OpenSession(
                pb.OpenSessionRequest(), metadata=(("authorization", f"bearer {key}"),)
            )
        ).session_id


async def test_scopes_per_rpc() -> None:
    store, key, admin = _store(["invoke:read"])
    async with gateway(key_store=store) as (_, channel):
        limited, boss = Gw(channel, key), Gw(channel, admin)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await limited.open()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "session:open" in (err.value.details() or "")
        sid = await boss.open()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await limited.stub.CloseSession(
                pb.CloseSessionRequest(session_id=sid), metadata=limited.md
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        call = limited.stub.StreamEvents(
            pb.StreamEventsRequest(session_id=sid), metadata=limited.md
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("scopes", "allowed", "denied"),
    [
        (
            ["invoke:read"],
            ["register", "ping", "read_bulk"],
            ["write", "write_secured", "write_bulk", "drain_events", "shutdown_worker"],
        ),
        (
            ["invoke:write"],
            ["write", "write2", "write_bulk", "write2_bulk"],
            ["register", "write_secured2", "write_secured_bulk"],
        ),
        (["invoke:secure"], ["write_secured", "write_secured2_bulk"], ["write", "ping"]),
        (["events:read"], ["drain_events"], ["ping", "write"]),
        (["admin"], ["shutdown_worker", "write", "ping"], []),
    ],
)
async def test_scopes_per_command_kind(
    scopes: list[str], allowed: list[str], denied: list[str]
) -> None:
    store, key, admin = _store(scopes)
    async with gateway(key_store=store) as (_, channel):
        gw = Gw(channel, key)
        sid = await Gw(channel, admin).open()
        for payload in allowed:
            reply = await gw.stub.Invoke(
                pb.MxCommandRequest(session_id=sid, command=command(payload)), metadata=gw.md
            )
            assert reply.kind == pb.MxCommandKind.Value("MX_COMMAND_KIND_" + payload.upper())
        for payload in denied:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await gw.stub.Invoke(
                    pb.MxCommandRequest(session_id=sid, command=command(payload)), metadata=gw.md
                )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, payload


async def test_unknown_command_kind_needs_admin() -> None:
    store, key, admin = _store(["invoke:read", "invoke:write", "invoke:secure", "events:read"])
    async with gateway(key_store=store) as (_, channel):
        sid = await Gw(channel, admin).open()
        request = pb.MxCommandRequest(session_id=sid, command=pb.MxCommand(kind=999))  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await Gw(channel, key).stub.Invoke(request, metadata=Gw(channel, key).md)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = await Gw(channel, admin).stub.Invoke(request, metadata=Gw(channel, admin).md)
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST


async def test_health_and_reflection_without_a_key(sim: GatewaySimulator, gw: Gw) -> None:
    health = health_pb2_grpc.HealthStub(gw.channel)
    reply = await health.Check(
        health_pb2.HealthCheckRequest(service="mxaccess_gateway.v1.MxAccessGateway")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Watch writes its replies itself (a coroutine, not an async generator).
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert "mxaccess_gateway.v1.MxAccessGateway" in names


async def test_anonymous_mode_accepts_calls_without_a_key() -> None:
    async with gateway(allow_anonymous=True, api_keys=[]) as (sim, channel):
        assert sim.api_key is None
        assert await Gw(channel, None).open()


def test_key_store_keeps_no_secret(tmp_path: Path) -> None:
    key = new_key()
    store = ApiKeyStore()
    store.add(key, ["invoke:read"], name="reader")
    secret = key.split("_", 2)[2]
    dump = repr(store.__dict__) + repr(list(store._keys.values()))
    assert secret not in dump
    principal = store.authenticate(f"Bearer {key}")
    assert principal is not None and principal.scopes == {"invoke:read"}
    assert secret not in repr(principal)
    with pytest.raises(ValueError, match="unknown scope"):
        ApiKeyStore().add(new_key(), ["invoke:everything"])


def test_keys_files_json_and_lines(tmp_path: Path) -> None:
    a, b = new_key(), new_key()
    json_file = tmp_path / "keys.json"
    json_file.write_text(json.dumps({"keys": [{"key": a, "scopes": ["admin"], "name": "ops"}]}))
    lines = tmp_path / "keys.txt"
    lines.write_text(f"# comment\n\n{b} invoke:read,events:read  dashboard\n")
    store = ApiKeyStore()
    assert load_keys_file(json_file, store) == 1
    assert load_keys_file(lines, store) == 1
    principal = store.authenticate(f"Bearer {b}")
    assert principal is not None
    assert principal.name == "dashboard"
    assert principal.scopes == {"invoke:read", "events:read"}
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{new_key()} nonsense\n")
    with pytest.raises(ValueError) as err:
        load_keys_file(bad, ApiKeyStore())
    assert "bad.txt:1" in str(err.value)
    assert "mxgw_" not in str(err.value)


def test_plant_is_deterministic_under_the_seed() -> None:
    def run(seed: int) -> list[object]:
        plant = Plant(builtin_catalog(), seed=seed, scan_interval_ms=100)
        states = [plant.state(t.full_tag_reference) for t in builtin_catalog().all_tags()]
        values: list[object] = []
        for n in range(1, 120):
            for st in states:
                assert st is not None
                sample = st.compute(n, 0.0)
                values.append((sample.value, sample.quality))
        return values

    assert run(7) == run(7)
    assert run(7) != run(8)
