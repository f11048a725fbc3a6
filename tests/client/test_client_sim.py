"""The client against the real simulator (mxgateway_sim.GatewaySimulator) over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from client_proxy import TcpProxy

from mxgateway import (
    BufferedDataChange,
    DataChange,
    EventGap,
    GatewayClient,
    MxAccessError,
    MxGatewayAuthenticationError,
    MxGatewayOverloadedError,
    MxGatewayPermissionError,
    MxGatewaySessionNotFoundError,
    MxGatewaySessionStateError,
    MxGatewayUnavailableError,
    Session,
    WriteComplete,
    from_mx_value,
)
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import ApiKeyStore, GatewaySimulator, builtin_catalog, new_key
from support import wait_for

OPERATOR = ("operator", "operator", 101, "6f0b3b1e-0000-4000-8000-000000000101")
VERIFIER = ("verifier", "verifier", 102)


@pytest.fixture(params=["inline", "process"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[GatewaySimulator]:
    """The gateway with each session's runtime in the gateway, and in a worker process."""
    async with GatewaySimulator(
        catalog=builtin_catalog(), scan_interval_ms=20, session_isolation=request.param
    ) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: GatewaySimulator) -> AsyncIterator[GatewayClient]:
    async with await GatewayClient.connect(
        endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
    ) as c:
        yield c


@pytest.fixture
async def session(client: GatewayClient) -> AsyncIterator[Session]:
    async with await client.open_session(client_session_name="tests") as s:
        yield s


async def _read_until(
    session: Session, h: int, tags: list[str], expected: list[object]
) -> list[pb.BulkReadResult]:
    """read_bulk until the values are ``expected`` (writes land on the next scan tick)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        rows = await session.read_bulk(h, tags)
        if [from_mx_value(r.value) for r in rows] == expected:
            return rows
        assert loop.time() < deadline, [from_mx_value(r.value) for r in rows]
        await asyncio.sleep(0.02)


async def _subscriber_released(sim: GatewaySimulator, session: Session) -> None:
    """Wait until the gateway has let go of the session's (closed) event stream.

    Closing a stream cancels the call; the gateway detaches its subscriber a moment
    later. The simulator allows one subscriber per session, so a stream opened right
    after closing another can be refused (FAILED_PRECONDITION) until then.
    """
    gateway_session = sim.sessions.get(session.session_id) if sim.sessions else None
    assert gateway_session is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while gateway_session.events.subscribers:
        assert loop.time() < deadline, "the gateway kept the closed stream's subscriber"
        await asyncio.sleep(0.01)


async def test_spec_library_example_verbatim(sim: GatewaySimulator) -> None:
    key = sim.api_key
    endpoint = sim.endpoint
    # --- the spec's "Library Usage" example, with the endpoint and a key filled in ---
    async with await GatewayClient.connect(
        endpoint=endpoint,
        api_key=key,
        plaintext=True,
    ) as client:
        session = await client.open_session(client_session_name="python-client")
        try:
            server_handle = await session.register("python-client")
            item_handle = await session.add_item(server_handle, "Object.Attribute")
            await session.advise(server_handle, item_handle)
        finally:
            await session.close()
    # --- end of the example ---
    assert server_handle > 0 and item_handle > 0
    assert session.closed and client.closed


async def test_every_single_command_helper(session: Session) -> None:
    h = await session.register("helpers")
    assert h > 0
    level = await session.add_item(h, "Tank01.LevelSetpoint")
    rel = await session.add_item2(h, "Me.Description", "Tank01")
    assert len({level, rel}) == 2
    await session.advise(h, level)
    await session.advise_supervisory(h, rel)
    await session.write(h, level, 12.5)
    await session.write2(h, level, 13.5, datetime.now(timezone.utc) - timedelta(seconds=1))
    await _read_until(session, h, ["Tank01.LevelSetpoint"], [13.5])  # applied on a tick
    user = await session.authenticate_user(h, OPERATOR[0], OPERATOR[1])
    assert user == OPERATOR[2]
    assert await session.authenticate_user(h, OPERATOR[0], "wrong password") == 0
    assert await session.archestra_user_to_id(h, OPERATOR[3]) == OPERATOR[2]
    secured = await session.add_item(h, "Pump01.SpeedSetpoint")
    await session.advise(h, secured)
    await session.write_secured(h, secured, 40.0, current_user_id=user)
    await session.write_secured2(h, secured, 41.0, datetime.now(timezone.utc), current_user_id=user)
    await _read_until(session, h, ["Pump01.SpeedSetpoint"], [41.0])
    verifier = await session.authenticate_user(h, VERIFIER[0], VERIFIER[1])
    verified = await session.add_item(h, "Pump01.Interlock")
    await session.advise(h, verified)
    await session.write_secured(h, verified, True, current_user_id=user, verifier_user_id=verifier)
    await session.suspend(h, level)
    await session.activate(h, level)
    await session.set_buffered_update_interval(h, 100)
    buffered = await session.add_buffered_item(h, "Tank01.Level")
    assert buffered > 0
    await session.ping()
    drained = await session.drain_events()
    assert drained and all(isinstance(e, pb.MxEvent) for e in drained)
    seqs = [e.worker_sequence for e in drained]
    assert seqs == sorted(seqs)
    assert await session.get_session_state() == pb.SESSION_STATE_READY
    info = await session.get_worker_info()
    assert info.backend_name
    await session.unadvise(h, level)
    await session.remove_item(h, level)
    await session.unregister(h)
    reader = await session.register("reader")
    reads = await _read_until(
        session, reader, ["Tank01.LevelSetpoint", "Pump01.SpeedSetpoint"], [13.5, 41.0]
    )
    assert [r.was_successful for r in reads] == [True, True]


async def test_bulk_family(session: Session) -> None:
    h = await session.register("bulk")
    tags = ["Tank01.LevelSetpoint", "Line01.BatchCount", "Line01.Recipe"]
    added = await session.add_item_bulk(h, [*tags, "bad reference!"])
    assert [r.tag_address for r in added][:3] == tags
    assert all(isinstance(r, pb.SubscribeResult) for r in added)
    handles = [r.item_handle for r in added[:3]]
    assert all(r.was_successful for r in added[:3])
    advised = await session.advise_item_bulk(h, handles)
    assert [r.was_successful for r in advised] == [True, True, True]
    writes = await session.write_bulk(h, {handles[0]: 7.5, handles[1]: 3, handles[2]: "R-1"})
    assert all(isinstance(r, pb.BulkWriteResult) for r in writes)
    assert [r.was_successful for r in writes] == [True, True, True]
    now = datetime.now(timezone.utc)
    writes2 = await session.write2_bulk(h, [(handles[0], 8.5, now), (handles[1], 4, now)])
    assert [r.was_successful for r in writes2] == [True, True]
    # A per-row failure (an unknown item handle: an argument error) does not raise; a
    # string into a double is accepted, its failure comes in the row's OnWriteComplete.
    mixed = await session.write_bulk(h, [(999, 1), (handles[0], "not a number"), (handles[1], 5)])
    assert [r.was_successful for r in mixed] == [False, True, True]
    assert mixed[0].error_message and mixed[0].hresult < 0
    user = await session.authenticate_user(h, OPERATOR[0], OPERATOR[1])
    sec = await session.write_secured_bulk(h, {handles[0]: 9.5}, current_user_id=user)
    sec2 = await session.write_secured2_bulk(h, [(handles[1], 6, now)], current_user_id=user)
    assert sec[0].was_successful and sec2[0].was_successful
    reads = await session.read_bulk(h, [*tags, "Pump01.Speed"], timeout_ms=1000)
    assert all(isinstance(r, pb.BulkReadResult) for r in reads)
    assert [r.was_cached for r in reads] == [True, True, True, False]
    # Writes land on the next scan tick; the advised items see them as data changes.
    await _read_until(session, h, tags, [9.5, 6, "R-1"])
    unadvised = await session.unadvise_item_bulk(h, handles)
    removed = await session.remove_item_bulk(h, handles)
    assert all(r.was_successful for r in unadvised + removed)
    fresh = await _read_until(session, h, tags, [9.5, 6, "R-1"])
    assert [r.was_cached for r in fresh] == [False, False, False]
    subscribed = await session.subscribe_bulk(h, ["Pump01.Speed", "Tank01.Level"], supervisory=True)
    assert all(r.was_successful and r.item_handle for r in subscribed)
    unsubscribed = await session.unsubscribe_bulk(h, [r.item_handle for r in subscribed])
    assert all(r.was_successful for r in unsubscribed)
    buffered = await session.subscribe_bulk(h, ["Tank01.Level"], buffered_update_interval_ms=50)
    assert buffered[0].was_successful


async def test_raw_and_checked_mxaccess_failures(session: Session) -> None:
    h = await session.register("failures")
    item = await session.add_item(h, "Pump01.Running")  # not advised: an argument error
    with pytest.raises(MxAccessError) as info:
        await session.write(h, item, True)
    err = info.value
    assert err.reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE
    assert err.reply.kind == pb.MX_COMMAND_KIND_WRITE
    assert err.hresult == err.reply.hresult and err.hresult < 0
    assert f"0x{err.hresult & 0xFFFFFFFF:08X}" in str(err)
    assert "Value does not fall within the expected range" in str(err)
    cmd = pb.MxCommand(
        kind=pb.MX_COMMAND_KIND_WRITE,
        write=pb.WriteCommand(server_handle=h, item_handle=item, value=pb.MxValue(bool_value=True)),
    )
    reply = await session.invoke_raw(cmd)
    assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE
    assert reply.hresult == err.hresult
    reply2 = await session.client.invoke_raw(session.session_id, cmd)
    assert (reply2.hresult, reply2.diagnostic_message) == (err.hresult, reply.diagnostic_message)
    with pytest.raises(MxAccessError):
        await session.invoke(cmd)


async def test_closing_twice_is_harmless_in_the_library_and_the_gateway(
    client: GatewayClient,
) -> None:
    session = await client.open_session(client_session_name="twice")
    await session.register("twice")
    first = await session.close()
    assert first is not None and first.released_registration_count == 1
    assert await session.close() is None  # the library remembers it closed the session
    # The gateway answers a repeat close by id with the final state (upstream behaviour).
    again = await client.close_session(session.session_id)
    assert again.final_state == pb.SESSION_STATE_CLOSED
    assert again.released_registration_count == 0
    other = client.attach_session(session.session_id)
    assert await other.close() is not None  # a second handle closes without an error
    with pytest.raises(MxGatewaySessionNotFoundError):
        await client.attach_session(session.session_id).ping()  # gone for commands


async def test_protocol_errors_raise_even_in_raw(client: GatewayClient) -> None:
    ghost = client.attach_session("session-" + "0" * 32)
    with pytest.raises(MxGatewaySessionNotFoundError) as info:
        await ghost.invoke_raw(pb.MxCommand(kind=pb.MX_COMMAND_KIND_PING, ping=pb.PingCommand()))
    assert info.value.reply is not None
    with pytest.raises(MxGatewaySessionNotFoundError):
        await client.close_session("session-" + "0" * 32)
    with pytest.raises(MxGatewaySessionNotFoundError):
        async for _ in ghost.events():
            pass


async def test_authentication_and_scopes() -> None:
    read_only = new_key()
    no_open = new_key()
    store = ApiKeyStore()
    store.add(read_only, ["session:open", "session:close", "invoke:read", "events:read"])
    store.add(no_open, ["invoke:read"])
    async with GatewaySimulator(key_store=store, catalog=builtin_catalog()) as sim:
        async with await GatewayClient.connect(endpoint=sim.endpoint, plaintext=True) as anon:
            with pytest.raises(MxGatewayAuthenticationError):
                await anon.open_session()
        async with await GatewayClient.connect(
            endpoint=sim.endpoint, plaintext=True, api_key="mxgw_nobody_" + "x" * 20
        ) as wrong:
            with pytest.raises(MxGatewayAuthenticationError) as info:
                await wrong.open_session()
            assert "x" * 20 not in str(info.value)
        async with await GatewayClient.connect(
            endpoint=sim.endpoint, plaintext=True, api_key=no_open
        ) as c:
            with pytest.raises(MxGatewayPermissionError) as perm:
                await c.open_session()
            assert no_open not in str(perm.value)
        async with (
            await GatewayClient.connect(
                endpoint=sim.endpoint, plaintext=True, api_key=read_only
            ) as c,
            await c.open_session() as s,
        ):
            h = await s.register("ro")
            item = await s.add_item(h, "Tank01.LevelSetpoint")
            await s.advise(h, item)
            with pytest.raises(MxGatewayPermissionError):
                await s.write(h, item, 1.0)
            with pytest.raises(MxGatewayPermissionError):
                await s.write_bulk(h, {item: 1.0})


async def test_session_limit_is_overloaded() -> None:
    sim = GatewaySimulator(max_sessions=1, catalog=builtin_catalog())
    async with (
        sim,
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as c,
    ):
        first = await c.open_session("one")
        with pytest.raises(MxGatewayOverloadedError):
            await c.open_session("two")
        await first.close()
        async with await c.open_session("three"):
            pass


@pytest.mark.slow
async def test_tls_self_signed(tmp_path: Path) -> None:
    async with GatewaySimulator(
        tls="self-signed", tls_dir=tmp_path, catalog=builtin_catalog()
    ) as sim:
        assert sim.ca_file is not None
        async with (
            await GatewayClient.connect(
                endpoint=sim.endpoint, api_key=sim.api_key, ca_file=sim.ca_file
            ) as c,
            await c.open_session("tls") as s,
        ):
            assert await s.register("tls") > 0
        with pytest.raises(MxGatewayUnavailableError):
            await GatewayClient.connect(endpoint=sim.endpoint, api_key=sim.api_key)
        with pytest.raises(MxGatewayUnavailableError):
            await GatewayClient.connect(endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True)


async def _data_changes(events: object, n: int) -> list[DataChange]:
    out: list[DataChange] = []
    async for ev in events:  # type: ignore[attr-defined]
        if isinstance(ev, DataChange):
            out.append(ev)
            if len(out) >= n:
                break
    return out


async def test_typed_events_and_replay_from_a_sequence(
    sim: GatewaySimulator, session: Session
) -> None:
    h = await session.register("events")
    rows = await session.subscribe_bulk(h, ["Tank01.Level", "Pump01.Speed", "Line01.Counter"])
    handles = {r.item_handle for r in rows}
    async with session.events() as events:
        first = await asyncio.wait_for(_data_changes(events, 10), 30)
        assert events.gap_count == 0
    seqs = [e.worker_sequence for e in first]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e.item_handle in handles and e.server_handle == h for e in first)
    assert all(e.timestamp.tzinfo is not None for e in first)
    # A new subscription from a known point replays without duplicates or holes.
    resume_from = seqs[4]
    await _subscriber_released(sim, session)
    async with session.events(after_worker_sequence=resume_from) as again:
        replayed = await asyncio.wait_for(_data_changes(again, 5), 30)
        assert again.gap_count == 0
    # Non-DataChange events (none expected here) would also be in order; check contiguity
    # across everything the stream delivered by using the raw sequences.
    assert replayed[0].worker_sequence == resume_from + 1
    got = [e.worker_sequence for e in replayed]
    assert got == sorted(got) and len(set(got)) == len(got)
    assert got[: len(seqs) - 5] == seqs[5:][: len(got)]


async def test_write_complete_event_and_second_subscriber(session: Session) -> None:
    h = await session.register("wc")
    item = await session.add_item(h, "Tank01.LevelSetpoint")
    await session.advise(h, item)
    async with session.events(after_worker_sequence=0) as events:
        # The replay delivers the advise's first value: the stream is attached after that.
        await asyncio.wait_for(events.__anext__(), 30)
        with pytest.raises(MxGatewaySessionStateError):
            await session.events().__anext__()
        await session.write(h, item, 55.5)

        async def find() -> WriteComplete:
            async for ev in events:
                if isinstance(ev, WriteComplete):
                    return ev
            raise AssertionError("stream ended")

        wc = await asyncio.wait_for(find(), 30)
        assert wc.item_handle == item and wc.statuses[0].success


async def test_events_raw_parity(sim: GatewaySimulator, session: Session) -> None:
    h = await session.register("raw")
    await session.subscribe_bulk(h, ["Tank01.Level"])
    async with session.events_raw() as raw:
        ev = await asyncio.wait_for(raw.__anext__(), 30)
    assert isinstance(ev, pb.MxEvent)
    await _subscriber_released(sim, session)
    async with session.client.stream_event_batches_raw(session.session_id) as batches:
        batch = await asyncio.wait_for(batches.__anext__(), 30)
    assert isinstance(batch, pb.MxEventBatch) and batch.events


async def test_buffered_data_change_events(session: Session) -> None:
    h = await session.register("buffered")
    await session.set_buffered_update_interval(h, 50)
    item = await session.add_buffered_item(h, "Tank01.Level")
    async with session.events(after_worker_sequence=0) as events:
        await session.advise(h, item)

        async def first_buffered() -> BufferedDataChange:
            async for ev in events:
                if isinstance(ev, BufferedDataChange) and ev.samples:
                    return ev
            raise AssertionError("stream ended")

        ev = await asyncio.wait_for(first_buffered(), 30)
    assert ev.item_handle == item and ev.server_handle == h
    assert all(isinstance(s.value, float) for s in ev.samples)
    assert all(s.timestamp.tzinfo is not None for s in ev.samples)


async def test_events_resume_after_a_real_connection_drop(sim: GatewaySimulator) -> None:
    async with (
        TcpProxy(sim.endpoint) as proxy,
        await GatewayClient.connect(
            endpoint=proxy.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
        await client.open_session("drop") as session,
    ):
        h = await session.register("drop")
        await session.subscribe_bulk(h, ["Tank01.Level", "Pump01.Speed", "Line01.Counter"])
        got: list[int] = []
        async with session.events() as events:

            async def take(n: int) -> None:
                async for ev in events:
                    assert not isinstance(ev, EventGap), ev
                    if isinstance(ev, DataChange):
                        got.append(ev.worker_sequence)
                        if len(got) >= n:
                            return

            await asyncio.wait_for(take(10), 30)
            connections = proxy.connections
            proxy.drop_all()
            await asyncio.wait_for(take(40), 30)
            assert events.resume_count >= 1
            assert events.gap_count == 0
        assert proxy.connections > connections
    # Every event exactly once, in order, across the drop.
    assert got == list(range(got[0], got[0] + len(got)))


async def test_polling_events_with_a_timeout_loses_nothing(session: Session) -> None:
    h = await session.register("poll")
    item = await session.add_item(h, "Tank01.LevelSetpoint")  # changes only when written
    await session.advise(h, item)
    seen: list[int] = []
    async with session.events(after_worker_sequence=0) as events:
        seen.append((await asyncio.wait_for(events.__anext__(), 30)).worker_sequence)  # type: ignore[union-attr]
        for _ in range(3):  # quiet: each poll times out and cancels the read
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(events.__anext__(), 0.1)
        await session.write(h, item, 21.0)
        while len(seen) < 3:  # the write's WriteComplete and DataChange, via a new stream
            ev = await asyncio.wait_for(events.__anext__(), 30)
            seen.append(ev.worker_sequence)  # type: ignore[union-attr]
        assert events.gap_count == 0 and events.duplicates_dropped == 0
    assert seen == [1, 2, 3]


async def test_events_start_with_what_advise_raised(
    sim: GatewaySimulator, session: Session
) -> None:
    # The value Advise raised is in the session's log before anyone iterates; the default
    # events() must hand it out first (a static tag: no later change would stand in).
    h = await session.register("first-value")
    item = await session.add_item(h, "Tank01.Description")
    await session.advise(h, item)
    gateway_session = sim.sessions.get(session.session_id) if sim.sessions else None
    assert gateway_session is not None
    assert gateway_session.events.next_seq > 1  # raised before iterating
    async with session.events() as events:
        first = await asyncio.wait_for(events.__anext__(), 10)
    assert isinstance(first, DataChange)
    assert (first.worker_sequence, first.item_handle) == (1, item)
    await _subscriber_released(sim, session)
    # new_only=True skips it: nothing more comes from a static tag.
    async with session.events(new_only=True) as live:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(live.__anext__(), 0.5)


async def test_last_worker_sequence_is_a_lossless_resume_point(
    sim: GatewaySimulator, session: Session
) -> None:
    h = await session.register("resume")
    await session.subscribe_bulk(h, ["Tank01.Level", "Pump01.Speed", "Line01.Counter"])
    gateway_session = sim.sessions.get(session.session_id) if sim.sessions else None
    assert gateway_session is not None
    await wait_for(lambda: gateway_session.events.next_seq > 12)
    async with session.events() as events:
        handed = [await asyncio.wait_for(events.__anext__(), 10) for _ in range(5)]
        # The first batch held more than five events; the resume point follows the caller.
        resume_from = events.last_worker_sequence
    assert [e.worker_sequence for e in handed] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
    assert resume_from == 5
    await _subscriber_released(sim, session)
    async with session.events(after_worker_sequence=resume_from) as again:
        nxt = await asyncio.wait_for(again.__anext__(), 10)
    assert isinstance(nxt, DataChange) and nxt.worker_sequence == 6
