"""Each FaultPlan knob does what it says, over real gRPC on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
from faulthelpers import DEADLINE, SCAN_MS, Raw, analog_catalog, analog_refs, connect, wait_for

from mxgateway import (
    DataChange,
    EventGap,
    GalaxyRepositoryClient,
    MxGatewaySessionFaultedError,
    MxGatewaySessionNotFoundError,
    MxGatewayTimeoutError,
    MxGatewayUnavailableError,
    RetryPolicy,
    StreamFault,
)
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import (
    FaultPlan,
    FaultPlanError,
    GatewaySimulator,
    RpcFault,
    SessionOptions,
    builtin_catalog,
)
from mxgateway_sim._workers import SessionIsolation


def test_plan_json_round_trip_and_validation(tmp_path: Path) -> None:
    plan = FaultPlan(
        seed=7,
        rpc={"Invoke": RpcFault(delay_s=0.1, unavailable_fraction=0.25), "*": RpcFault(0.01)},
        stream_drop_after_events=10,
        stream_fault_count=2,
        galaxy_delay_s=0.5,
        test_connection_fails=True,
        worker_crash_after_commands=3,
        quality_flaky_one_in=0,
    )
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan.to_dict()))
    assert FaultPlan.load(path) == plan
    assert plan.active and not FaultPlan().active
    with pytest.raises(TypeError):
        plan.rpc["OpenSession"] = RpcFault()  # type: ignore[index]
    bad = [
        {"rpc": {"Invokee": {}}},
        {"rpc": {"Invoke": {"delay_s": -1}}},
        {"rpc": {"Invoke": {"unavailable_fraction": 1.5}}},
        {"rpc": {"Invoke": {"delay": 1}}},
        {"stream_drop_after_events": -1},
        {"stream_drop_after_events": 1, "stream_stall_after_events": 1},
        {"worker_crash_after_commands": 0},
        {"worker_crash_after_commands": True},
        {"stream_stall_after_events": 2.5},
        {"test_connection_fails": "yes"},
        {"no_such_knob": 1},
    ]
    for data in bad:
        with pytest.raises(FaultPlanError):
            FaultPlan.from_dict(data)
    path.write_text("{not json")
    with pytest.raises(FaultPlanError, match="not valid JSON"):
        FaultPlan.load(path)


async def test_flaky_one_in_is_the_plans_quality_knob() -> None:
    catalog = builtin_catalog()
    async with GatewaySimulator(catalog=catalog, faults=FaultPlan(quality_flaky_one_in=0)) as a:
        assert a.plant is not None and a.plant.flaky_one_in == 0
    async with GatewaySimulator(catalog=catalog, flaky_one_in=3) as b:
        assert b.plant is not None and b.plant.flaky_one_in == 3
        assert b.faults.plan.quality_flaky_one_in == 3
    async with GatewaySimulator(catalog=catalog) as c:
        assert c.plant is not None and c.plant.flaky_one_in == 8  # the default plant
        assert not c.faults.active


async def test_delay_per_rpc(sim: GatewaySimulator, raw: Raw) -> None:
    sid = await raw.open()
    sim.faults.replace(FaultPlan(rpc={"Invoke": RpcFault(delay_s=0.3)}))
    started = time.monotonic()
    await raw.ok(sid, "ping")
    assert time.monotonic() - started >= 0.3
    # Only Invoke is delayed: the plan names it alone (no "*").
    assert sim.faults.plan.fault_for("OpenSession") is None
    # Streams are delayed before their first message; "*" covers every other method.
    sim.faults.replace(FaultPlan(rpc={"*": RpcFault(delay_s=0.3)}))
    started = time.monotonic()
    await raw.open()
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    call = raw.stub.StreamEvents(
        pb.StreamEventsRequest(session_id=sid, after_worker_sequence=0), metadata=raw.md
    )
    try:
        h = (await raw.ok(sid, "register", client_name="d")).register.server_handle
        await raw.ok(sid, "subscribe_bulk", server_handle=h, tag_addresses=["Tank01.Level"])
        first = await asyncio.wait_for(call.read(), DEADLINE)
        assert first is not grpc.aio.EOF and first.worker_sequence == 1
        assert time.monotonic() - started >= 0.3
    finally:
        call.cancel()


async def _ping_outcomes(
    plan: FaultPlan, calls: int, isolation: SessionIsolation = "inline"
) -> list[bool]:
    async with (
        GatewaySimulator(
            catalog=builtin_catalog(), flaky_one_in=0, session_isolation=isolation
        ) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        raw = Raw(channel, sim.api_key)
        sid = await raw.open()  # OpenSession has no entry: never fails
        sim.faults.replace(plan)
        failed: list[bool] = []
        for _ in range(calls):
            try:
                await raw.ok(sid, "ping")
                failed.append(False)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
                assert "fault injection" in (exc.details() or "")
                failed.append(True)
        assert sim.faults.failed.get("Invoke", 0) == sum(failed)
        return failed


async def test_unavailable_fraction_is_deterministic_under_the_seed(
    isolation: SessionIsolation,
) -> None:
    plan = FaultPlan(seed=7, rpc={"Invoke": RpcFault(unavailable_fraction=0.3)})
    first = await _ping_outcomes(plan, 60, isolation)
    again = await _ping_outcomes(plan, 60, isolation)
    assert first == again
    assert first == [plan.fails("Invoke", k) for k in range(60)]
    assert 6 <= sum(first) <= 30  # about 30 % of 60
    other = [FaultPlan(seed=8, rpc=plan.rpc).fails("Invoke", k) for k in range(60)]
    assert other != first
    everything = FaultPlan(rpc={"*": RpcFault(unavailable_fraction=1.0)})
    assert all(everything.fails(m, 0) for m in ("Invoke", "OpenSession", "TestConnection"))


async def test_stream_drop_after_n_events_resumes_without_loss(isolation: SessionIsolation) -> None:
    plan = FaultPlan(stream_drop_after_events=25)
    async with (
        GatewaySimulator(
            catalog=analog_catalog(50),
            scan_interval_ms=SCAN_MS,
            flaky_one_in=0,
            faults=plan,
            # Each drop costs the client a backoff; a ring this size holds the whole test,
            # so any loss would be the stream's fault, not the ring's.
            session_options=SessionOptions(replay_ring_size=100_000),
            session_isolation=isolation,
        ) as sim,
        await connect(sim) as client,
        await client.open_session(client_session_name="drop") as session,
    ):
        h = await session.register("drop")
        rows = await session.subscribe_bulk(h, analog_refs(50))
        assert all(r.was_successful for r in rows)
        sequences: list[int] = []
        async with session.events(after_worker_sequence=0) as events:

            async def read() -> None:
                async for event in events:
                    assert not isinstance(event, (EventGap, StreamFault)), event
                    if isinstance(event, DataChange):
                        sequences.append(event.worker_sequence)
                        if len(sequences) >= 400:
                            return

            await asyncio.wait_for(read(), DEADLINE)
            assert events.gap_count == 0 and events.missed_events == 0
            assert events.resume_count >= 400 // 25 - 1
        assert sequences == list(range(1, len(sequences) + 1))  # contiguous: nothing lost
        assert sim.faults.streams_dropped >= 400 // 25


async def test_stalled_stream_is_detected_by_a_client_timeout(isolation: SessionIsolation) -> None:
    plan = FaultPlan(stream_stall_after_events=5, stream_fault_count=1)
    async with (
        GatewaySimulator(
            catalog=analog_catalog(10),
            scan_interval_ms=SCAN_MS,
            flaky_one_in=0,
            faults=plan,
            session_isolation=isolation,
        ) as sim,
        await connect(sim) as client,
        await client.open_session(client_session_name="stall") as session,
    ):
        h = await session.register("stall")
        await session.subscribe_bulk(h, analog_refs(10))
        async with session.events(after_worker_sequence=0) as events:
            got: list[int] = []
            for _ in range(5):
                event = await asyncio.wait_for(events.__anext__(), DEADLINE)
                assert isinstance(event, DataChange)
                got.append(event.worker_sequence)
            assert got == [1, 2, 3, 4, 5]
            # The plant keeps producing (10 items per 20 ms scan) but the stream is silent.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(events.__anext__(), 1.0)
            assert sim.faults.streams_stalled == 1
            # The next read re-subscribes after sequence 5 (only the first stream stalls).
            for expected in range(6, 60):
                event = await asyncio.wait_for(events.__anext__(), DEADLINE)
                assert isinstance(event, DataChange)
                assert event.worker_sequence == expected
            assert events.gap_count == 0


async def test_worker_crash_after_n_commands_faults_the_session(
    isolation: SessionIsolation,
) -> None:
    plan = FaultPlan(worker_crash_after_commands=4)
    async with (
        GatewaySimulator(
            catalog=builtin_catalog(),
            scan_interval_ms=SCAN_MS,
            flaky_one_in=0,
            faults=plan,
            session_isolation=isolation,
        ) as sim,
        await connect(sim) as client,
    ):
        other = await client.open_session(client_session_name="bystander")
        session = await client.open_session(client_session_name="crash")
        h = await session.register("crash")  # command 1
        item = await session.add_item(h, "Tank01.Level")  # 2
        await session.advise(h, item)  # 3
        events = session.events(after_worker_sequence=0)
        first = await asyncio.wait_for(events.__anext__(), DEADLINE)
        assert isinstance(first, DataChange)
        with pytest.raises(MxGatewaySessionFaultedError):
            await session.ping()  # command 4: the worker "crashes"
        seen: list[object] = []
        with pytest.raises(MxGatewaySessionFaultedError):
            async for event in events:
                seen.append(event)
        faults = [e for e in seen if isinstance(e, StreamFault)]
        assert [f.kind for f in faults] == [pb.STREAM_FAULT_KIND_SESSION_FAULTED]
        await events.aclose()
        assert sim.faults.crashed_sessions == [session.session_id]
        # A faulted session only accepts CloseSession.
        with pytest.raises(MxGatewaySessionFaultedError):
            await session.get_session_state()
        closed = await session.close()
        assert closed is not None and closed.final_state == pb.SESSION_STATE_CLOSED
        # The other session counts its own commands and is unaffected.
        await other.ping()
        assert await other.get_session_state() == pb.SESSION_STATE_READY
        await other.close()


async def test_faulted_stream_raises_the_documented_error(sim: GatewaySimulator) -> None:
    async with await connect(sim) as client, await client.open_session() as session:
        h = await session.register("x")
        await session.subscribe_bulk(h, ["Tank01.Level"])
        async with session.events(after_worker_sequence=0) as events:
            await asyncio.wait_for(events.__anext__(), DEADLINE)
            sim.fault_session(session.session_id)
            with pytest.raises(MxGatewaySessionFaultedError):
                async for _ in events:
                    pass


async def test_fault_session_on_demand(sim: GatewaySimulator, raw: Raw) -> None:
    sid = await raw.open()
    keep = await raw.open()
    assert sim.fault_session(sid)
    assert not sim.fault_session("session-" + "0" * 32)
    reply = await raw.invoke(sid, "ping")
    assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_FAULTED
    assert "crash" in reply.protocol_status.message
    await raw.ok(keep, "ping")


async def test_restart_on_the_same_port_loses_sessions(isolation: SessionIsolation) -> None:
    async with (
        GatewaySimulator(
            catalog=builtin_catalog(),
            scan_interval_ms=SCAN_MS,
            flaky_one_in=0,
            session_isolation=isolation,
        ) as sim,
        await connect(sim) as client,
    ):
        endpoint = sim.endpoint
        session = await client.open_session(client_session_name="before")
        h = await session.register("before")
        await session.subscribe_bulk(h, ["Tank01.Level"])
        events = session.events(after_worker_sequence=0, resume=False)
        assert isinstance(await asyncio.wait_for(events.__anext__(), DEADLINE), DataChange)
        await sim.restart()
        assert sim.endpoint == endpoint
        seen: list[object] = []
        with pytest.raises(MxGatewayUnavailableError):
            async for event in events:
                seen.append(event)
        kinds = [e.kind for e in seen if isinstance(e, StreamFault)]
        assert kinds == [pb.STREAM_FAULT_KIND_SERVER_SHUTDOWN]

        # Same client, same endpoint: the old session is gone, a new one works.
        async def old_is_gone() -> bool:
            try:
                await session.ping()
            except MxGatewaySessionNotFoundError:
                return True
            except Exception:  # still reconnecting
                return False
            raise AssertionError("the session survived a restart")

        await wait_for(old_is_gone, what="the old session to be reported gone")
        async with await client.open_session(client_session_name="after") as fresh:
            assert await fresh.register("after") == 1  # handles start again
        await session.close()  # an unknown session counts as closed


@pytest.fixture
def galaxy_db(tmp_path: Path) -> Path:
    return tmp_path / "galaxy.db"


async def test_slow_galaxy_and_failing_test_connection(galaxy_db: Path) -> None:
    async with GatewaySimulator(galaxy_db=galaxy_db, flaky_one_in=0) as sim:
        assert sim.galaxy_available
        async with await GalaxyRepositoryClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as galaxy:
            assert await galaxy.test_connection() is True
            sim.faults.replace(FaultPlan(galaxy_delay_s=0.3))
            started = time.monotonic()
            assert await galaxy.get_last_deploy_time() is not None
            assert time.monotonic() - started >= 0.3
            started = time.monotonic()
            assert await galaxy.test_connection() is True  # slow, but within the probe timeout
            assert time.monotonic() - started >= 0.3
            sim.faults.replace(FaultPlan(galaxy_delay_s=5.0, galaxy_probe_timeout_s=0.2))
            started = time.monotonic()
            assert await galaxy.test_connection() is False  # too slow: ok = false, no error
            assert time.monotonic() - started >= 0.2
            sim.faults.replace(FaultPlan(test_connection_fails=True))
            assert await galaxy.test_connection() is False
            sim.faults.replace(FaultPlan())
            assert await galaxy.test_connection() is True


# -- the public client under injected faults ---------------------------------------------

FAST_RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.02, jitter=0.0)


async def test_client_retries_reads_exactly_as_the_seed_predicts(sim: GatewaySimulator) -> None:
    plan = FaultPlan(seed=11, rpc={"Invoke": RpcFault(unavailable_fraction=0.3)})
    # Predict, from the plan alone, what 80 PINGs with 5 attempts each will see.
    k, expected_failures, expected_errors = 0, 0, 0
    for _ in range(80):
        for attempt in range(1, 6):
            failed = plan.fails("Invoke", k)
            k += 1
            expected_failures += failed
            if not failed:
                break
            if attempt == 5:
                expected_errors += 1
    assert expected_failures > 10  # the plan really injects
    async with await connect(sim, retry=FAST_RETRY) as client:
        session = await client.open_session()
        sim.faults.replace(plan)
        errors = 0
        for _ in range(80):
            try:
                await session.ping()
            except MxGatewayUnavailableError:
                errors += 1
        injected = sim.faults.failed.get("Invoke", 0)
        sim.faults.replace(FaultPlan())
        await session.close()
    assert errors == expected_errors
    assert injected == expected_failures  # every failure was retried, as predicted


async def test_client_never_retries_writes_and_times_out_delays(sim: GatewaySimulator) -> None:
    async with await connect(sim, retry=FAST_RETRY) as client:
        session = await client.open_session()
        h = await session.register("w")
        item = await session.add_item(h, "Tank01.LevelSetpoint")
        await session.advise(h, item)
        sim.faults.replace(FaultPlan(rpc={"Invoke": RpcFault(unavailable_fraction=1.0)}))
        with pytest.raises(MxGatewayUnavailableError):
            await session.write(h, item, 1.0)
        assert sim.faults.failed == {"Invoke": 1}  # sent once: a write is never repeated
        with pytest.raises(MxGatewayUnavailableError):
            await session.ping()
        assert sim.faults.failed == {"Invoke": 1 + FAST_RETRY.max_attempts}  # type: ignore[operator]
        sim.faults.replace(FaultPlan(rpc={"Invoke": RpcFault(delay_s=2.0)}))
        with pytest.raises(MxGatewayTimeoutError):
            await session.invoke_raw(
                pb.MxCommand(kind=pb.MX_COMMAND_KIND_PING, ping=pb.PingCommand()), timeout=0.3
            )
        sim.faults.replace(FaultPlan())
        await session.ping()
        await session.close()


@pytest.mark.parametrize("batched", [False, True])
async def test_stream_drop_is_exact_and_only_hits_the_counted_streams(
    sim: GatewaySimulator, raw: Raw, batched: bool
) -> None:
    sid = await raw.open()
    h = (await raw.ok(sid, "register", client_name="d")).register.server_handle
    tags = ["Tank01.Level", "Pump01.Speed", "Tank01.Temperature", "Line01.Counter"]
    await raw.ok(sid, "subscribe_bulk", server_handle=h, tag_addresses=tags)
    sim.faults.replace(FaultPlan(stream_drop_after_events=7, stream_fault_count=2))
    method = raw.stub.StreamEventBatches if batched else raw.stub.StreamEvents
    last = 0
    for stream_index in range(3):
        request = pb.StreamEventsRequest(session_id=sid, after_worker_sequence=last)
        call = method(request, metadata=raw.md)
        got: list[int] = []
        try:
            while len(got) < 20 and (message := await call.read()) is not grpc.aio.EOF:
                events = message.events if batched else [message]
                got += [e.worker_sequence for e in events]
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        finally:
            call.cancel()
        assert got == list(range(last + 1, last + 1 + len(got)))  # contiguous, resumed
        if stream_index < 2:  # the first two streams: exactly 7 events, then UNAVAILABLE
            assert len(got) == 7 and code is grpc.StatusCode.UNAVAILABLE
        else:  # the third is not counted: it runs on
            assert len(got) >= 20 and code is grpc.StatusCode.OK
        last = got[-1]
    assert sim.faults.streams_dropped == 2 and sim.faults.streams_opened == 3
