"""Awaiting a write's outcome (upstream semantics: OK reply, outcome in OnWriteComplete).

Against the real simulator over gRPC on loopback, plus a fake gateway for what the
simulator never does (a completion that never comes, enum numbers newer than the bindings).
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone

import pytest
from client_fakes import FakeGateway, attached, ok_status

from mxgateway import (
    ClientOptions,
    DataChange,
    GatewayClient,
    MxAccessError,
    MxGatewaySessionStateError,
    MxGatewayTimeoutError,
    MxGatewayWriteTimeoutError,
    Session,
    WriteComplete,
)
from mxgateway._events import DECODE_CHUNK
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, builtin_catalog


@pytest.fixture
async def sim() -> AsyncIterator[GatewaySimulator]:
    async with GatewaySimulator(catalog=builtin_catalog(), scan_interval_ms=20) as simulator:
        yield simulator


@pytest.fixture
async def session(sim: GatewaySimulator) -> AsyncIterator[Session]:
    async with (
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
        await client.open_session(client_session_name="writes") as s,
    ):
        yield s


async def _advised(session: Session, *refs: str) -> tuple[int, list[int]]:
    h = await session.register("writes")
    handles = []
    for ref in refs:
        item = await session.add_item(h, ref)
        await session.advise(h, item)
        handles.append(item)
    return h, handles


async def test_waited_write_returns_its_completion(session: Session) -> None:
    h, (count,) = await _advised(session, "Line01.BatchCount")
    done = await session.write(h, count, 4242, wait=True)
    assert isinstance(done, WriteComplete)
    assert (done.server_handle, done.item_handle, done.succeeded) == (h, count, True)
    assert [s.category for s in done.statuses] == [pb.MX_STATUS_CATEGORY_OK]
    # Without wait the call returns once the write is accepted.
    assert await session.write(h, count, 1) is None


@pytest.mark.parametrize("command_stream", [True, False], ids=["InvokeStream", "Invoke"])
async def test_the_next_command_finds_each_single_writes_completion(
    sim: GatewaySimulator, command_stream: bool
) -> None:
    """The simulator publishes a single write's OnWriteComplete after handing its reply to
    gRPC (not before): a DrainEvents sent right after each reply still finds that write's
    completion, with its outcome, in order and nothing else of it left behind."""
    options = ClientOptions(
        endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True, command_stream=command_stream
    )
    async with (
        await GatewayClient.connect(options=options) as client,
        await client.open_session(client_session_name="deferred") as session,
    ):
        h, (count, setpoint) = await _advised(session, "Line01.BatchCount", "Pump01.SpeedSetpoint")
        await session.drain_events()  # the advises' first values
        when = datetime(2025, 1, 2, tzinfo=timezone.utc)
        # Each write made only when it is sent (none is left unawaited if one fails).
        writes: list[tuple[int, Callable[[], Awaitable[object]], int]] = [
            (count, lambda: session.write(h, count, 7), pb.MX_STATUS_CATEGORY_OK),
            (count, lambda: session.write2(h, count, 8, when), pb.MX_STATUS_CATEGORY_OK),
            (
                setpoint,
                lambda: session.write_secured(h, setpoint, 5.0, current_user_id=0),
                pb.MX_STATUS_CATEGORY_SECURITY_ERROR,
            ),
            (
                setpoint,
                lambda: session.write_secured2(h, setpoint, 5.0, when, current_user_id=0),
                pb.MX_STATUS_CATEGORY_SECURITY_ERROR,
            ),
        ]
        last_seq = 0
        for item, write, category in writes:
            assert await write() is None  # accepted; the outcome is in the event
            done = [
                e
                for e in await session.drain_events()
                if e.family == pb.MX_EVENT_FAMILY_ON_WRITE_COMPLETE
            ]
            assert len(done) == 1
            (event,) = done
            assert (event.on_write_complete.server_handle, event.on_write_complete.item_handle) == (
                h,
                item,
            )
            assert [st.category for st in event.on_write_complete.statuses] == [category]
            assert event.worker_sequence > last_seq
            last_seq = event.worker_sequence


async def test_failed_outcome_raises_mxaccess_error_with_the_completion(session: Session) -> None:
    h, (level, setpoint) = await _advised(session, "Tank01.Level", "Pump01.SpeedSetpoint")
    with pytest.raises(MxAccessError) as info:
        await session.write(h, level, 1.0, wait=True)  # calculated: not writeable
    err = info.value
    assert err.reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK  # accepted...
    assert err.completion is not None  # ...and refused in OnWriteComplete
    assert err.completion.on_write_complete.item_handle == level
    assert [(s.category, s.detail) for s in err.failed_statuses] == [
        (pb.MX_STATUS_CATEGORY_OPERATIONAL_ERROR, 1007)
    ]
    assert "OnWriteComplete" in str(err) and "MX_E_NotWriteable" in str(err)
    copy = pickle.loads(pickle.dumps(err))  # e.g. across a process pool
    assert (copy.completion, copy.failed_statuses, str(copy)) == (
        err.completion,
        err.failed_statuses,
        str(err),
    )
    when = datetime(2025, 1, 2, tzinfo=timezone.utc)
    for call in (
        session.write_secured(h, setpoint, 5.0, current_user_id=0, wait=True),
        session.write_secured2(h, setpoint, 5.0, when, current_user_id=0, wait=True),
    ):
        with pytest.raises(MxAccessError) as secured:
            await call
        (status,) = secured.value.failed_statuses
        assert (status.category, status.detail) == (pb.MX_STATUS_CATEGORY_SECURITY_ERROR, 1016)
    user = await session.authenticate_user(h, "operator", "operator")
    done = await session.write_secured(h, setpoint, 6.0, current_user_id=user, wait=True)
    assert done is not None and done.succeeded
    with pytest.raises(MxAccessError) as plain:  # a plain write to a SecuredWrite attribute
        await session.write2(h, setpoint, 7.0, when, wait=True)
    assert [s.detail for s in plain.value.failed_statuses] == [1012]


async def test_waiting_inside_the_callers_event_loop(session: Session) -> None:
    """The caller iterates session.events() (the session's one subscriber) and awaits a
    write inside its loop body: the waiter reads ahead on the caller's stream, and the
    caller still receives every event, the completion included."""
    h, (count, level) = await _advised(session, "Line01.BatchCount", "Tank01.Level")
    seen: list[object] = []
    outcomes: list[object] = []
    async with session.events(after_worker_sequence=0) as events:
        async for event in events:
            seen.append(event)
            if len(seen) == 1:
                outcomes.append(await session.write(h, count, 777, wait=True))
                with pytest.raises(MxAccessError):
                    await session.write(h, level, 2.0, wait=True)
            completions = [e for e in seen if isinstance(e, WriteComplete)]
            if len(completions) == 2 and any(
                isinstance(e, DataChange) and e.item_handle == count and e.value == 777
                for e in seen
            ):
                break
    (done,) = outcomes
    assert isinstance(done, WriteComplete) and done.succeeded
    assert [c.item_handle for c in seen if isinstance(c, WriteComplete)] == [count, level]
    assert done in seen
    sequences = [e.worker_sequence for e in seen if isinstance(e, (DataChange, WriteComplete))]
    assert sequences == sorted(set(sequences))  # nothing duplicated, in order


async def test_waiting_while_another_task_is_blocked_reading_the_events(
    session: Session,
) -> None:
    """A task blocked in `async for` on a quiet session holds the stream's read; a waited
    write from another task must not queue behind that read."""
    h, (item,) = await _advised(session, "Tank01.Description")  # static: quiet until written
    seen: list[object] = []
    first = asyncio.Event()
    stream = session.events(after_worker_sequence=0)

    async def reader() -> None:
        async for event in stream:
            seen.append(event)
            first.set()

    task = asyncio.ensure_future(reader())
    try:
        await asyncio.wait_for(first.wait(), 10)  # the advise's value; then it is quiet
        while not stream._read_lock.locked():  # noqa: ASYNC110 - until the reader blocks in a read
            await asyncio.sleep(0.01)
        done = await session.write(h, item, "quiet", wait=True, wait_timeout=10)
        assert done is not None and done.succeeded
        assert done in seen  # the reader got the completion too
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await stream.aclose()


async def test_concurrent_waited_writes_share_one_stream_and_release_it(
    session: Session,
) -> None:
    h, handles = await _advised(session, "Line01.BatchCount", "Line01.Recipe", "Tank01.Level")
    results = await asyncio.gather(
        session.write(h, handles[0], 5, wait=True),
        session.write(h, handles[1], "R-9", wait=True),
        session.write(h, handles[2], 1.0, wait=True),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == [
        "WriteComplete",
        "WriteComplete",
        "MxAccessError",
    ]
    # The private correlation stream is closed: the caller can subscribe now.
    async with session.events(after_worker_sequence=0) as events:
        first = await asyncio.wait_for(events.__anext__(), 10)
    assert first.worker_sequence >= 1  # type: ignore[union-attr]


async def test_argument_errors_raise_before_any_wait(session: Session) -> None:
    h = await session.register("writes")
    item = await session.add_item(h, "Line01.BatchCount")  # not advised
    with pytest.raises(MxAccessError) as info:
        await session.write(h, item, 1, wait=True, wait_timeout=5)
    assert info.value.completion is None
    assert "advise the item before writing" in str(info.value)
    with pytest.raises(ValueError):
        await session.write(h, item, 1, wait=True, wait_timeout=0)


def _write_ok(request: pb.MxCommandRequest) -> pb.MxCommandReply:
    return pb.MxCommandReply(
        session_id=request.session_id, kind=request.command.kind, protocol_status=ok_status()
    )


def _gateway_signalling_writes() -> tuple[FakeGateway, asyncio.Event]:
    """A fake gateway that accepts writes and sets the event on each (the completion a
    test streams follows the write)."""
    fake = FakeGateway()
    written = asyncio.Event()

    def on_write(request: pb.MxCommandRequest) -> pb.MxCommandReply:
        written.set()
        return _write_ok(request)

    fake.invoke_handler = on_write
    return fake, written


async def test_missing_completion_is_a_typed_timeout() -> None:
    fake = FakeGateway()
    fake.invoke_handler = _write_ok  # never raises an OnWriteComplete
    async with attached(fake, "session-" + "1" * 32) as session:
        with pytest.raises(MxGatewayWriteTimeoutError) as info:
            await session.write(1, 2, 3, wait=True, wait_timeout=0.3)
        # The waiter closed its stream itself, while the client stays open: the gateway
        # sees the cancel shortly after (it was asserted after the client had closed,
        # which raced the server's stop in one clean CI run).
        await asyncio.wait_for(fake.rec.cancel_event.wait(), 5)
    err = info.value
    assert isinstance(err, MxGatewayTimeoutError)
    assert (err.server_handle, err.item_handle) == (1, 2)
    assert "may still take effect" in str(err)
    assert fake.rec.cancelled.get("StreamEventBatches", 0) >= 1  # its stream was closed


async def test_completion_with_newer_enum_numbers_is_decoded() -> None:
    """A completion whose category and source are newer than the bindings is a failure
    named UNKNOWN(n), never a ValueError."""
    fake, written = _gateway_signalling_writes()
    sid = "session-" + "2" * 32

    async def batches(request: pb.StreamEventsRequest, attempt: int) -> AsyncIterator[object]:
        await written.wait()  # the completion follows the write
        ev = pb.MxEvent(session_id=sid, worker_sequence=1, family=99)  # type: ignore[arg-type]
        ev.on_write_complete.server_handle = 1
        ev.on_write_complete.item_handle = 2
        ev.on_write_complete.statuses.add(success=1, category=42, detected_by=17, detail=9)  # type: ignore[arg-type]
        yield pb.MxEventBatch(events=[ev])
        await asyncio.Event().wait()

    fake.batches_plan = batches
    async with attached(fake, sid) as session:
        with pytest.raises(MxAccessError) as info:
            await session.write(1, 2, 3, wait=True, wait_timeout=10)
    assert info.value.status_descriptions == (
        "UNKNOWN(42) detected by UNKNOWN(17), detail 9 (MX_E_ObjectSignatureMismatch)",
    )


async def test_a_completion_behind_more_than_a_decode_chunk_is_found() -> None:
    """The OnWriteComplete comes after more data changes than one decode chunk, in the same
    batch: the waiter reads on through the chunks, and every event stays for the caller."""
    fake, written = _gateway_signalling_writes()
    sid = "session-" + "3" * 32
    n = 2 * DECODE_CHUNK + 11

    async def batches(request: pb.StreamEventsRequest, attempt: int) -> AsyncIterator[object]:
        await written.wait()
        events = []
        for seq in range(1, n + 1):
            ev = pb.MxEvent(
                session_id=sid, worker_sequence=seq, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE
            )
            ev.on_data_change.item_handle = 5
            ev.on_data_change.value.double_value = seq / 2
            events.append(ev)
        done = pb.MxEvent(
            session_id=sid, worker_sequence=n + 1, family=pb.MX_EVENT_FAMILY_ON_WRITE_COMPLETE
        )
        done.on_write_complete.server_handle = 1
        done.on_write_complete.item_handle = 2
        done.on_write_complete.statuses.add(success=1, category=pb.MX_STATUS_CATEGORY_OK)
        events.append(done)
        yield pb.MxEventBatch(events=events)
        await asyncio.Event().wait()

    fake.batches_plan = batches
    async with attached(fake, sid) as session, session.events() as stream:
        outcome = await session.write(1, 2, 3, wait=True, wait_timeout=10)
        assert isinstance(outcome, WriteComplete) and outcome.worker_sequence == n + 1
        got = [await asyncio.wait_for(stream.__anext__(), 5) for _ in range(n + 1)]
    assert [e.value for e in got[:n] if isinstance(e, DataChange)] == [
        seq / 2 for seq in range(1, n + 1)
    ]
    assert got[n] == outcome


async def test_a_foreign_subscriber_refuses_the_wait_before_anything_is_written(
    session: Session,
) -> None:
    """One event subscriber per session: while a raw stream holds it, a waited write fails
    before the write is sent (nothing changes), and a write without wait still works."""
    h, (count,) = await _advised(session, "Line01.BatchCount")
    await session.write(h, count, 11, wait=True)
    raw = session.events_raw()

    async def until_13() -> list[pb.MxEvent]:
        seen = []
        async for event in raw:
            seen.append(event)
            change = event.on_data_change
            if event.HasField("on_data_change") and change.value.int32_value == 13:
                return seen
        raise AssertionError("the raw stream ended")

    collected = asyncio.ensure_future(until_13())
    try:
        # The gateway sends the stream's headers once the subscriber is attached.
        await asyncio.wait_for(raw.call.initial_metadata(), 10)
        with pytest.raises(MxGatewaySessionStateError):
            await session.write(h, count, 12, wait=True)
        assert await session.write(h, count, 13) is None
        seen = await asyncio.wait_for(collected, 10)
        # One completion (13's): the refused wait sent nothing.
        completions = [e for e in seen if e.HasField("on_write_complete")]
        assert [e.on_write_complete.item_handle for e in completions] == [count]
    finally:
        collected.cancel()
        await raw.aclose()


async def test_waiter_falls_back_to_stream_events_on_an_older_gateway() -> None:
    """A gateway without StreamEventBatches (UNIMPLEMENTED): the waiter attaches with
    StreamEvents instead, before the write is sent, and takes the completion from there."""
    fake = FakeGateway()
    fake.batches_unimplemented = True
    written = asyncio.Event()

    def on_write(request: pb.MxCommandRequest) -> pb.MxCommandReply:
        written.set()
        return _write_ok(request)

    fake.invoke_handler = on_write

    async def events(request: pb.StreamEventsRequest, attempt: int) -> AsyncIterator[object]:
        await written.wait()
        ev = pb.MxEvent(worker_sequence=5, family=pb.MX_EVENT_FAMILY_ON_WRITE_COMPLETE)
        ev.on_write_complete.server_handle = 1
        ev.on_write_complete.item_handle = 2
        ev.on_write_complete.statuses.add(category=pb.MX_STATUS_CATEGORY_PENDING)
        yield ev  # interim: the waiter keeps waiting
        final = pb.MxEvent(worker_sequence=6, family=pb.MX_EVENT_FAMILY_ON_WRITE_COMPLETE)
        final.on_write_complete.CopyFrom(ev.on_write_complete)
        final.on_write_complete.statuses[0].category = pb.MX_STATUS_CATEGORY_OK
        yield final
        await asyncio.Event().wait()

    fake.events_plan = events
    async with attached(fake, "session-" + "3" * 32) as session:
        done = await session.write(1, 2, 3, wait=True, wait_timeout=10)
    assert done is not None and done.worker_sequence == 6 and done.succeeded
    assert [r.HasField("after_worker_sequence") for r in fake.rec.stream_requests] == [False]


async def test_bulk_writes_with_wait_report_each_rows_outcome(session: Session) -> None:
    h, (recipe, level, count, setpoint) = await _advised(
        session, "Line01.Recipe", "Tank01.Level", "Line01.BatchCount", "Pump01.SpeedSetpoint"
    )
    entries = [(recipe, "R-1"), (level, 1.0), (count, "not a number"), (999, 1), (count, 7)]
    accepted = await session.write_bulk(h, entries)  # without wait: acceptance only
    assert [r.was_successful for r in accepted] == [True, True, True, False, True]
    rows = await session.write_bulk(h, entries, wait=True)
    assert [r.was_successful for r in rows] == [True, False, False, False, True]
    assert [[s.detail for s in r.statuses] for r in rows[1:3]] == [[1007], [19]]
    assert all("refused in OnWriteComplete" in r.error_message for r in rows[1:3])
    assert rows[3].hresult < 0 and "refused" not in rows[3].error_message  # argument error
    now = datetime.now(timezone.utc)
    secured = await session.write_secured2_bulk(
        h, [(setpoint, 5.0, now)], current_user_id=0, wait=True
    )
    assert [(r.was_successful, [s.detail for s in r.statuses]) for r in secured] == [
        (False, [1016])
    ]
    two = await session.write2_bulk(h, [(count, 8, now), (count, 9, now)], wait=True)
    assert [r.was_successful for r in two] == [True, True]
