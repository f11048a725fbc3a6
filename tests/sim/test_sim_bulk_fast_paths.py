"""The simulator's bulk fast paths give what the slow, generic paths gave.

WRITE_BULK publishes its OnWriteComplete events as one list with hand-encoded completions;
READ_BULK encodes its reply from cached pieces and parses each reference string once, and
computes the values of the attributes nobody advises many at a time, splicing each row
from its reference's constant part, its value's bytes and a tail the read's rows share.
"""

from __future__ import annotations

import contextlib
import random
import struct
import sys
import time
import types
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from mxgateway import GatewayClient, MxGatewayInvalidRequestError, Session
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import (
    GatewaySimulator,
    InMemoryCatalog,
    SessionOptions,
    TagInfo,
    builtin_catalog,
)
from mxgateway_sim import _simruntime as simruntime
from mxgateway_sim._commands import BulkRow, write_items
from mxgateway_sim._domain import (
    CAT_SECURITY_ERROR,
    MX_BOOLEAN,
    MX_DOUBLE,
    MX_ELAPSED_TIME,
    MX_FLOAT,
    MX_INTEGER,
    MX_REFERENCE,
    MX_STRING,
    MX_TIME,
    STATUS_OK,
    DataChange,
    MxAccessError,
    MxRuntimeEvent,
    OperationComplete,
    ReadResult,
    TagSample,
    WriteComplete,
    WriteRequest,
    failure,
)
from mxgateway_sim._events import EventLog, OverflowPolicy
from mxgateway_sim._plant import (
    BATCHED,
    TICK_SLICE_DELIVERIES,
    Plant,
    TagState,
    _constant,
    _cycle,
    _float_walk,
    _int_counter,
    _int_ramp,
    _int_walk,
    _ramp,
    _sine,
    _toggle,
    _unit,
    _units,
    round3,
)
from mxgateway_sim._readplan import _COMPUTE, _ENCODE, _KEEP, _Group
from mxgateway_sim._readrows import (
    ENTRY_OVERHEAD_BYTES,
    MEMO_CHUNK_ROWS,
    ReadRow,
    ReadRowCache,
    fresh_rows,
)
from mxgateway_sim._readvec import SharedValues
from mxgateway_sim._references import (
    ParsedReference,
    ReferenceCache,
    ReferenceSyntaxError,
    parse_reference,
)
from mxgateway_sim._simruntime import SimulatedRuntime
from mxgateway_sim._slicing import chunks
from mxgateway_sim._svc_common import READ_CHUNK_ROWS
from mxgateway_sim._wire import (
    FIXED_BOOL,
    FIXED_DOUBLE,
    EventEncoder,
    _encode_varint,
    event_to_pb,
    good_read_row,
    read_reply_bytes,
    reference_field,
    status_to_pb,
    to_timestamp,
    unframe,
    value_to_pb,
    varint,
    write_reply_bytes,
)

BAD = failure(CAT_SECURITY_ERROR, 1012, "denied")


def _reference_read_reply(rows: Sequence[ReadResult]) -> pb.BulkReadReply:
    """The reply as the servicer built it with the generated classes (the old code)."""
    reply = pb.BulkReadReply()
    for row in rows:
        r = reply.results.add(
            tag_address=row.reference,
            was_successful=row.ok,
            was_cached=row.was_cached,
            error_message=row.error,
        )
        if row.sample is not None:
            r.value.CopyFrom(value_to_pb(row.sample.value, row.sample.data_type))
            r.quality = row.sample.quality
            r.timestamp.CopyFrom(to_timestamp(row.sample.timestamp))
        r.statuses.extend(status_to_pb(s) for s in row.statuses)
    return reply


def test_completion_events_encode_like_the_generated_classes() -> None:
    sid = "session-" + "cd" * 16
    encoder = EventEncoder(sid)
    sample = TagSample(1.5, 5, 192, 1_700_000_000.5)
    events: list[MxRuntimeEvent] = [
        WriteComplete(1, 2, STATUS_OK),
        WriteComplete(1, 2, BAD),
        OperationComplete(1, 2, STATUS_OK),  # same handles and status: must not share a cache
        DataChange(1, 2, sample),
        WriteComplete(0, 0, STATUS_OK),
        WriteComplete(3, 300_000, BAD),
        WriteComplete(1, 2, STATUS_OK),  # from the cache
        OperationComplete(-1, 7, BAD),
    ]
    for first, now in ((1, 1_700_000_010.25), (20_000, 0.0), (2**35, 1_700_000_011.0)):
        framed = encoder.encode(events, first, now)
        for i, (event, data) in enumerate(zip(events, framed, strict=True)):
            expected = event_to_pb(event, sid, first + i, now)
            assert pb.MxEvent.FromString(unframe(data)) == expected, (event, first)
        batch = pb.MxEventBatch.FromString(b"".join(framed))
        assert [e.worker_sequence for e in batch.events] == list(range(first, first + len(events)))


def test_read_reply_encodes_like_the_generated_classes() -> None:
    good = TagSample(12.5, 5, 192, 1_700_000_000.25)
    rows = [
        ReadResult("Tank01.Level", good, True, "", (STATUS_OK,)),
        ReadResult("Tank01.Level", good, True, "", (STATUS_OK,)),  # the sample's cached form
        ReadResult("Pump01.Mode", TagSample("héllo", 5, 0, 0.0), False, "", (STATUS_OK,)),
        ReadResult("Line01.Counter", TagSample(-7, 2, 192, 1_700_000_001.0), False),
        ReadResult("Line01.Setpoints", TagSample([1, 2, 3], 2, 192, 1_700_000_002.0), False),
        ReadResult("Pump01.Running", TagSample(True, 1, 24, 1_700_000_003.0, BAD), True, "x"),
        ReadResult("Nope.Level", None, False, "unknown object", (BAD,)),
        ReadResult("bad..ref", None, False, "'bad..ref' is not valid"),
        ReadResult("", None, False, "", (BAD, STATUS_OK)),
        ReadResult("Tank01.Temperature", TagSample(None, 0, 4, 1_700_000_004.0, BAD), False),
    ]
    for _ in range(2):
        data = read_reply_bytes(rows)
        assert pb.BulkReadReply.FromString(data) == _reference_read_reply(rows)
    assert read_reply_bytes([]) == b""
    reply = pb.MxCommandReply()
    reply.bulk_read.MergeFromString(read_reply_bytes([]))
    assert reply.HasField("bulk_read")


def test_write_reply_encodes_like_the_generated_classes() -> None:
    ok, failed, unknown = BulkRow(1, 5), BulkRow(1, 6), BulkRow(1, 0)
    failed.fail(MxAccessError(-2147467259, "write failed: denied", (BAD,)))
    unknown.fail(MxAccessError(-2147024809, "unknown item handle 0"))
    rows = [ok, failed, unknown, BulkRow(1, 70_000), BulkRow(1, -3, ok=False, statuses=(BAD,))]
    expected = pb.BulkWriteReply()
    for row in rows:
        r = expected.results.add(
            item_handle=row.item_handle,
            was_successful=row.ok,
            error_message=row.error,
            hresult=row.hresult,
        )
        r.statuses.extend(status_to_pb(s) for s in row.statuses)
    assert pb.BulkWriteReply.FromString(write_reply_bytes(rows)) == expected
    assert write_reply_bytes([]) == b""


def test_varint_fast_paths_match_the_generic_encoder() -> None:
    edges = [0, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 999_999_000]
    edges += [2**35 - 1, 2**35, 2**63, -1, -(2**31)]
    for n in edges:
        assert varint(n) == _encode_varint(n), n


def test_parse_reference_is_cached_by_text_and_context() -> None:
    cache = ReferenceCache(1 << 20)
    first = cache.parse("Tank01.Level[3]")
    assert cache.parse("Tank01.Level[3]") is first
    assert first == ParsedReference("Tank01.Level[3]", "Tank01.Level", False, 3, 1)
    assert first == parse_reference("Tank01.Level[3]")
    assert first.key == "tank01.level[3]"
    assert cache.parse("Me.Level", "Tank01").path == "Tank01.Level"
    assert cache.parse("Me.Level", "Pump01").path == "Pump01.Level"
    assert cache.parse("Tank01").key == "tank01.pv"
    assert cache.parse("Tank01.Arr[]").key == "tank01.arr[]"
    for _ in range(2):  # a malformed reference raises every time, never served from a cache
        try:
            cache.parse("Tank01..Level")
        except ReferenceSyntaxError:
            pass
        else:  # pragma: no cover
            raise AssertionError("a malformed reference was accepted")


def test_the_reference_cache_is_bounded_in_bytes() -> None:
    cache = ReferenceCache(64 * 1024)
    for i in range(5000):
        cache.parse("Me.Level", f"Tank{i:05d}" + "x" * 300)
        assert cache.bytes <= 64 * 1024
    assert 0 < len(cache) < 5000
    newest = cache.parse("Me.Level", "Tank04999" + "x" * 300)
    assert cache.parse("Me.Level", "Tank04999" + "x" * 300) is newest  # still cached
    with pytest.raises(ReferenceSyntaxError, match="item context is 2097152 characters"):
        cache.parse("Me.Level", "T" * (2 * 1024 * 1024))
    assert cache.bytes <= 64 * 1024


class _Redeployable(InMemoryCatalog):
    def redeploy(self, tags: list[TagInfo]) -> None:
        self.__init__(tags, self.version + 1)  # type: ignore[misc]


async def test_read_after_a_redeploy_is_not_served_from_a_stale_cache() -> None:
    base = builtin_catalog().all_tags()
    catalog = _Redeployable(base)
    plant = Plant(catalog, scan_interval_ms=1000, flaky_one_in=0)
    rt = SimulatedRuntime(plant)
    published: list[list[MxRuntimeEvent]] = []
    await rt.start(lambda events: published.append(list(events)))
    sh = await rt.register("test")
    advised = await rt.add_item(sh, "Tank01.Level")
    await rt.advise(sh, advised, supervisory=False)
    refs = ["Tank01.Level", "Tank01.Temperature", "Pump01.Speed"]
    for _ in range(2):
        rows = await rt.read(sh, refs, 1.0)
        assert [(r.ok, r.was_cached) for r in rows] == [(True, True), (True, False), (True, False)]
        assert pb.BulkReadReply.FromString(read_reply_bytes(rows)) == _reference_read_reply(rows)
    catalog.redeploy([t for t in base if t.tag_name != "Tank01"])
    plant.step()
    rows = await rt.read(sh, refs, 1.0)
    assert [r.ok for r in rows] == [False, False, True]
    assert rows[0].was_cached and rows[0].sample is not None and rows[0].sample.quality == 4
    assert rows[1].sample is None and rows[1].statuses[0].detail == 12  # unknown object
    assert pb.BulkReadReply.FromString(read_reply_bytes(rows)) == _reference_read_reply(rows)
    await rt.close()


def _recorder(
    published: list[list[MxRuntimeEvent]], log: EventLog
) -> Callable[[Sequence[MxRuntimeEvent]], None]:
    def sink(events: Sequence[MxRuntimeEvent]) -> None:
        published.append(list(events))
        log.publish(events)

    return sink


async def _run_writes(*, bulk: bool) -> tuple[list[list[MxRuntimeEvent]], EventLog, int]:
    """The same writes in one bulk call or one by one: (sink calls, event log, first seq)."""
    plant = Plant(builtin_catalog(), scan_interval_ms=1000, flaky_one_in=0)
    rt = SimulatedRuntime(plant)
    published: list[list[MxRuntimeEvent]] = []
    log = EventLog(
        "s",
        ring_size=1000,
        ring_age_s=60,
        queue_limit=1000,
        policy=OverflowPolicy.DISCONNECT_SUBSCRIBER,
        multiple_subscribers=False,
        max_subscribers=1,
        on_fail_fast=lambda _: None,
    )
    await rt.start(_recorder(published, log))
    sh = await rt.register("test")
    handles = []
    for ref in ("Tank01.LevelSetpoint", "Pump01.SerialNumber", "Line01.BatchCount"):
        handles.append(await rt.add_item(sh, ref))
        await rt.advise(sh, handles[-1], supervisory=False)
    buffered = await rt.add_item(sh, "Tank01.Level", buffered=True)
    await rt.advise(sh, buffered, supervisory=False)
    plant.step()
    before = len(published)
    first_seq = log.next_seq
    item = next(iter(rt._buffered))
    item.buffer.append(TagSample(1.0, 5, 192, 1_700_000_000.0))
    real_emit = rt._emit
    emitted = 0

    def emit(event: MxRuntimeEvent) -> None:
        # The buffered batch falls due with the first write: one flush per event puts it
        # right after the first completion, and so must the held bulk flush.
        nonlocal emitted
        emitted += 1
        if emitted == 1:
            item.next_flush = 0.0
            rt.next_due = 0.0  # what Item.deliver does when a batch falls due
        real_emit(event)

    rt._emit = emit  # type: ignore[method-assign]
    requests = [
        (handles[0], WriteRequest(value=10.5)),
        (handles[1], WriteRequest(value="x")),  # SerialNumber: not writeable
        (999, WriteRequest(value=1)),  # unknown handle: E_INVALIDARG, no event
        (handles[2], WriteRequest(value=7)),
        (handles[0], WriteRequest(value="not a number")),  # conversion failure
    ]
    if bulk:
        rows: list[BulkRow] = []
        await write_items(rt, sh, requests, rows.extend)
        # Upstream: accepted rows are OK; only the bad handle fails now (E_INVALIDARG).
        assert [r.ok for r in rows] == [True, True, False, True, True]
    else:
        for ih, request in requests:
            with contextlib.suppress(MxAccessError):
                await rt.write(sh, ih, request)
    await rt.close()
    return published[before:], log, first_seq


async def test_bulk_write_publishes_one_list_in_the_order_of_single_writes() -> None:
    flats = []
    for bulk in (False, True):
        calls, log, first_seq = await _run_writes(bulk=bulk)
        assert len(calls) == (1 if bulk else 4)  # the unknown handle raises no event
        flat = [e for call in calls for e in call]
        assert log.next_seq == first_seq + len(flat)
        frames = [pb.MxEvent.FromString(b) for b in log.drain(0)][-len(flat) :]
        assert [f.worker_sequence for f in frames] == list(range(first_seq, log.next_seq))
        assert [f.family for f in frames] == [2, 4, 2, 2, 2]
        flats.append(flat)
    singles, bulk_events = flats
    assert [type(e).__name__ for e in bulk_events] == [
        "WriteComplete",
        "BufferedDataChange",
        "WriteComplete",
        "WriteComplete",
        "WriteComplete",
    ]
    assert [_shape(e) for e in bulk_events] == [_shape(e) for e in singles]


def _shape(event: MxRuntimeEvent) -> tuple[object, ...]:
    """What an event says, without the times (the two runs differ in those only)."""
    samples = getattr(event, "samples", ())
    return (
        type(event),
        getattr(event, "server_handle", None),
        getattr(event, "item_handle", None),
        getattr(event, "status", None),
        tuple((s.value, s.quality, s.status) for s in samples),
    )


# -- rows a read computes (attributes only their model drives) ---------------------------

_MODEL_ATTRIBUTES = (
    # (attribute, COM data type, array): every generator of the plant shows up among 60
    # objects (the hash of the reference picks each attribute's).
    ("Flag", MX_BOOLEAN, False),
    ("Count", MX_INTEGER, False),
    ("Gauge", MX_FLOAT, False),
    ("Level", MX_DOUBLE, False),
    ("State", MX_STRING, False),
    ("Stamp", MX_TIME, False),
    ("Runtime", MX_ELAPSED_TIME, False),
    ("Target", MX_REFERENCE, False),
    ("Setpoint", MX_DOUBLE, False),
    ("Mode", MX_INTEGER, False),
    ("Bits", MX_BOOLEAN, True),
    ("Values", MX_DOUBLE, True),
    ("Names", MX_STRING, True),
)


def _model_catalog(objects: int = 60) -> InMemoryCatalog:
    tags = []
    for i in range(objects):
        obj = f"Obj{i:03d}"
        for name, data_type, array in _MODEL_ATTRIBUTES:
            tags.append(
                TagInfo(
                    obj,
                    name,
                    f"{obj}.{name}",
                    data_type,
                    array,
                    4 if array else 0,
                    0,
                    4,
                    False,
                    False,
                )
            )
    return InMemoryCatalog(tags)


@contextlib.asynccontextmanager
async def _library_sessions(sim: GatewaySimulator, *names: str) -> AsyncIterator[list[Session]]:
    """A client of the library on ``sim`` with a session for each of ``names`` (its client
    session name), all closed at the end."""
    async with (
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
        contextlib.AsyncExitStack() as sessions,
    ):
        yield [
            await sessions.enter_async_context(await client.open_session(client_session_name=n))
            for n in names
        ]


def _runtime_of(sim: GatewaySimulator, session: Session) -> SimulatedRuntime:
    """The simulated runtime that serves ``session`` (its read cache is what tests switch)."""
    found = sim.sessions.get(session.session_id)
    assert found is not None and isinstance(found.runtime, SimulatedRuntime)
    return found.runtime


def _references(objects: int = 60) -> list[str]:
    """Every scalar of the model catalog, array elements, unknown objects and attributes,
    malformed references, in a mixed order over more than two ReadBulk chunks."""
    refs = []
    for i in range(objects):
        obj = f"Obj{i:03d}"
        refs += [f"{obj}.{name}" for name, _, array in _MODEL_ATTRIBUTES if not array]
        refs += [f"{obj}.Values[2]", f"{obj}.Bits[1]", f"{obj}.Names[]"]
        if i % 7 == 0:
            refs += [f"Nope{i}.Level", f"{obj}.Nope", f"{obj}..Level", f"{obj}.Level[2]"]
    refs = refs[::2] + refs[1::2] + refs[: READ_CHUNK_ROWS // 3]  # mixed, some twice
    assert len(refs) > 2 * READ_CHUNK_ROWS
    return refs


def _same_float(a: object, b: object) -> bool:
    """Equal, and for floats bit for bit (``0.0 == -0.0``, ``nan != nan``)."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


async def _fast_and_plain(
    session: Session,
    runtime: SimulatedRuntime,
    hlmx: int,
    refs: list[str],
    states: dict[str, TagState | None],
) -> list[pb.BulkReadResult]:
    """Read ``refs`` (the fast paths), then again through the generic path at the same tick
    (the same samples): the rows must be byte for byte the same, and every sample of an
    attribute only its model drives its model's value at the tick it was computed, with the
    quality and status of that tick. The fast path's rows."""
    cache = runtime._read_rows
    fast = await session.read_bulk(hlmx, refs)
    runtime._read_rows = None
    try:
        plain = await session.read_bulk(hlmx, refs)
    finally:
        runtime._read_rows = cache
    assert [r.tag_address for r in fast] == refs
    for a, b in zip(fast, plain, strict=True):
        assert a.SerializeToString() == b.SerializeToString(), (a, b)
    for ref, st in states.items():
        if st is None or st.subs or st.override_ts is not None:
            continue
        sample = st.sample
        assert _same_float(sample.value, st.gen(st.computed_at)), ref
        assert (sample.quality, sample.status) == st.quality_at(st.computed_at)
    return fast


@pytest.mark.parametrize("flaky_one_in", [0, 3])
async def test_rows_a_read_computes_are_the_plain_paths_rows(
    flaky_one_in: int, numpy_path: bool
) -> None:
    """Attributes nobody advises, read after ticks changed them: the read computes their
    values (the generators of ``BATCHED`` many at a time) and encodes each row by splicing
    (``fresh_wire``). Its reply, through the public client, is byte for byte what the
    generic path (``SimulatedRuntime.read`` and ``read_reply_bytes``) answers for the same
    samples, and every sample is its model's value at the tick it was computed for, with
    the quality and status of that tick. Mixed in: attributes advised by another session
    (their item's value), one pinned by a write, flaky ones, array elements, unknown and
    malformed references."""
    async with GatewaySimulator(
        catalog=_model_catalog(), scan_interval_ms=3_600_000, flaky_one_in=flaky_one_in
    ) as sim:
        plant = sim.plant
        assert plant is not None
        refs = _references()
        states = {r: plant.state(r) for r in refs}
        kinds = {st.gen_function for st in states.values() if st is not None}
        assert set(BATCHED) <= kinds
        assert {_sine, _ramp, _toggle, _cycle, _int_counter, _int_ramp, _constant} <= kinds
        async with _library_sessions(sim, "reader", "other") as (session, other):
            other_h = await other.register("other")
            advised = await other.subscribe_bulk(other_h, ["Obj001.Level", "Obj002.Count"])
            pinned = advised[1].item_handle
            await other.write(other_h, pinned, 42, wait=True)  # pinned to 42 from now on
            await other.unsubscribe_bulk(other_h, [pinned])
            hlmx = await session.register("reader")
            runtime = _runtime_of(sim, session)
            cache = runtime._read_rows
            assert cache is not None
            statuses = set()
            for ticks in (1, 1, 0, 3, 7, 50, 1, 200):
                for _ in range(ticks):
                    plant.step()
                fast = await _fast_and_plain(session, runtime, hlmx, refs, states)
                statuses.update(r.was_successful for r in fast)
                for st in states.values():
                    if st is not None and not st.subs and st.override_ts is None:
                        assert st.computed_at == plant.tick or st.period != 1
            assert statuses == {True, False}
            # A reference named again and again in one chunk (and spelled otherwise): one
            # sample for all its rows, every row the same bytes as the generic path's.
            again = ["Obj003.Level", "obj003.level", "Obj004.Flag"] * 90 + refs[:40]
            plant.step()
            fast = await session.read_bulk(hlmx, again)
            runtime._read_rows = None
            try:
                plain = await session.read_bulk(hlmx, again)
            finally:
                runtime._read_rows = cache
            assert [r.SerializeToString() for r in fast] == [r.SerializeToString() for r in plain]
            for first in range(3):
                same = fast[first:270:3]
                assert len({(r.timestamp.SerializeToString(), str(r.value)) for r in same}) == 1
            assert fast[0].value == fast[1].value and fast[0].timestamp == fast[1].timestamp
            (count,) = await session.read_bulk(hlmx, ["Obj002.Count"])
            assert count.value.int32_value == 42


async def test_a_read_between_a_ticks_slices_answers_advised_attributes_as_before() -> None:
    """A scan tick over many advised attributes pauses between its slices, and reads run
    in the pauses. An attribute another session advises is the scan's to compute: a read
    that comes before the tick reaches it answers the value its subscribers last got (the
    generic path), not one it computed itself ahead of them."""
    async with GatewaySimulator(
        catalog=_model_catalog(300), scan_interval_ms=3_600_000, flaky_one_in=0
    ) as sim:
        plant = sim.plant
        assert plant is not None
        refs = [f"Obj{i:03d}.{a}" for i in range(300) for a, _, array in _MODEL_ATTRIBUTES]
        moving = [r for r in refs if (st := plant.state(r)) and st.period == 1]
        assert len(moving) > 2 * TICK_SLICE_DELIVERIES
        async with _library_sessions(sim, "reader", "other") as (session, other):
            await other.subscribe_bulk(await other.register("other"), moving)
            hlmx = await session.register("reader")
            runtime = _runtime_of(sim, session)
            cache = runtime._read_rows
            await session.read_bulk(hlmx, moving)  # the rows known to the fast path
            tick = plant._tick(time.time())
            next(tick)  # the first slice is delivered; the rest of the tick waits
            try:
                runtime._read_rows = None
                try:
                    plain = await session.read_bulk(hlmx, moving)
                finally:
                    runtime._read_rows = cache
                fast = await session.read_bulk(hlmx, moving)
            finally:
                for _ in tick:
                    pass
            assert [r.SerializeToString() for r in fast] == [r.SerializeToString() for r in plain]


async def test_rows_a_read_computes_are_refused_alike_over_the_message_limit() -> None:
    """Computed rows that do not fit one reply: refused with the generic path's message
    (nothing was read)."""
    options = SessionOptions(max_message_bytes=64 * 1024, max_value_bytes=32 * 1024)
    async with GatewaySimulator(
        catalog=_model_catalog(),
        scan_interval_ms=3_600_000,
        flaky_one_in=0,
        session_options=options,
    ) as sim:
        plant = sim.plant
        assert plant is not None
        refs = [r for r in _references() if "Nope" not in r and ".." not in r] * 2
        async with _library_sessions(sim, "reader") as (session,):
            hlmx = await session.register("reader")
            runtime = _runtime_of(sim, session)
            cache = runtime._read_rows
            messages = []
            plant.step()  # the first read computes every row (the others read its samples)
            for on in (True, False, True):
                runtime._read_rows = cache if on else None
                try:
                    with pytest.raises(MxGatewayInvalidRequestError) as caught:
                        await session.read_bulk(hlmx, refs)
                finally:
                    runtime._read_rows = cache
                messages.append(str(caught.value))
            assert "nothing was read" in messages[0]
            assert messages[0] == messages[1] == messages[2]


def test_batched_generators_give_each_values() -> None:
    """``BATCHED[f](params, n)`` is ``[f(p, n) for p in params]`` bit for bit, for the
    parameters of every attribute of the model catalog (and random walks of many hashes),
    at ticks far apart and next to each other, for one attribute and for many (the lanes
    of one big integer never leak into each other)."""
    rng = random.Random(7)
    hashes = [0, 1, (1 << 64) - 1, 1 << 63] + [rng.getrandbits(64) for _ in range(300)]
    assert _units(hashes, 5) == [_unit(h, 5) for h in hashes]
    assert _units([], 5) == []
    for i in (0, 1, 2**40, 2**64 - 1, 2**64 + 3):
        assert _units(hashes, i) == [_unit(h, i) for h in hashes]
    params: dict[object, list[object]] = {
        _float_walk: [(h, 10.0 + h % 90) for h in hashes],
        _int_walk: [(h,) for h in hashes],
        # The model's ramps step by halves (their rounding never shows): steps and
        # amplitudes of any fraction too, and sines of any phase.
        _ramp: [(rng.uniform(0.001, 7.0), rng.uniform(1.0, 100.0)) for _ in range(300)],
        _sine: [
            (rng.uniform(1.0, 100.0), rng.randint(20, 200), rng.uniform(0.0, 6.28))
            for _ in range(300)
        ],
    }
    plant = Plant(_model_catalog(200), scan_interval_ms=1, flaky_one_in=0)
    for info in plant.catalog.all_tags():
        state = plant.state(info.full_tag_reference)
        assert state is not None
        params.setdefault(state.gen_function, []).append(state.gen_args)
    assert set(BATCHED) <= set(params)
    for function, batch in BATCHED.items():
        for count in (1, 2, 37, len(params[function])):
            some = params[function][:count]
            for n in (0, 1, 7, 8, 9, 10, 11, 12_345, 10**9 + 7):
                got, want = batch(some, n), [function(p, n) for p in some]
                assert all(type(g) is type(w) for g, w in zip(got, want, strict=True))
                assert all(_same_float(g, w) for g, w in zip(got, want, strict=True)), (
                    function,
                    n,
                )


def test_round3_is_round_to_three_places() -> None:
    """``round3(x)`` gives ``round(x, 3)``'s bits: random values of every magnitude, values
    at and next to halves of a thousandth (where the shortcut must give way), zeros of
    both signs, huge values and NaN."""
    rng = random.Random(11)
    values = [rng.uniform(-200.0, 200.0) for _ in range(5_000)]
    values += [rng.uniform(-1.0, 1.0) * 10.0 ** rng.randint(-9, 14) for _ in range(5_000)]
    for k in range(-1500, 1500):
        for d in (0.0, 0.0005, -0.0005, 0.00049999999, 0.0005000001, 5e-13, -5e-13):
            values.append(k / 1000 + d)
    values += [0.0, -0.0, 0.0625, -0.0625, 2.675, 1e-300, -1e-300, 1e300, float("inf")]
    values += [-float("inf"), 99_999_999.9995, -99_999_999.9995, 1e8 + 0.0005]
    for x in values:
        assert struct.pack("<d", round3(x)) == struct.pack("<d", round(x, 3)), x
    nan = round3(float("nan"))
    assert nan != nan


def test_a_kept_rows_cost_covers_the_bytes_it_holds() -> None:
    """The read-row cache is bounded in bytes by each row's cost, counted when it is kept:
    it must cover what the row holds once reads built its heads for both sizes of tail
    (the reference, its key, the field, the constant part, two heads repeating the part,
    the encoded row), for short references and for long ones."""
    for reference in ("Obj001.Level", "Obj001." + ".".join(["L" * 32] * 9)):
        ref = parse_reference(reference)
        field = reference_field(reference)
        state = types.SimpleNamespace(
            info=types.SimpleNamespace(mx_data_type=MX_DOUBLE),
            gen_function=_constant,
            flaky=False,
            computed_at=-1,
        )
        row = ReadRow(reference, ref, field, state, b"")  # type: ignore[arg-type]
        cache = ReadRowCache(10**7)
        for tick, stamp in enumerate((1_700_000_000.25, 1_700_000_000.001), start=1):
            row.wire = good_read_row(field, TagSample(12.5, MX_DOUBLE, 192, stamp), False)
            out = [b""]
            fresh_rows([row], [12.5], [0], out, tick, stamp)
            assert out == [row.wire]
        assert row.head and row.other_head and row.head != row.other_head
        cache.add(reference, row, ref)
        assert cache.rows[reference] is row
        chars = [reference, ref.key] + ([] if ref.path is reference else [ref.path])
        held = sum(map(len, chars))  # ASCII: a byte a character
        held += sum(map(len, (row.field, row.part, row.head, row.other_head, row.wire)))
        assert row.cost - ENTRY_OVERHEAD_BYTES >= held, (reference[:20], row.cost, held)


def test_spliced_rows_encode_like_the_generated_classes() -> None:
    """``fresh_wire`` (a value's piece spliced between its reference's constant part and
    the read's tail) gives ``good_read_row``'s bytes for every kind of value, at both
    sizes of the tail (nanoseconds of 4 and 5 bytes) and for values a splice does not fit."""
    cases: list[tuple[int, object]] = [
        (MX_DOUBLE, 12.5),
        (MX_DOUBLE, -0.0),
        (MX_DOUBLE, 3),  # an int where a double is declared
        (MX_FLOAT, 1.25),
        (MX_FLOAT, 1e39),  # beyond float32
        (MX_BOOLEAN, True),
        (MX_BOOLEAN, False),
        (MX_BOOLEAN, 1),
        (MX_INTEGER, 0),
        (MX_INTEGER, 99),
        (MX_INTEGER, 2**31 - 1),
        (MX_INTEGER, -5),
        (MX_INTEGER, True),
        (MX_STRING, "Running"),
        (MX_STRING, "héllo"),
        (MX_STRING, "x" * 300),
        (MX_REFERENCE, "Obj001.Level"),
        (MX_TIME, datetime(2025, 1, 1, 0, 0, 1, tzinfo=timezone.utc)),
        (MX_ELAPSED_TIME, timedelta(seconds=1.5)),
        (MX_DOUBLE, None),
    ]
    # Tails of three sizes, in turn: a row keeps the heads of two (ReadRow.make_head).
    stamps = [1_700_000_000.25, 1_700_000_000.001, 1_700_000_000.0] * 2
    stamps += [1_700_000_000.25, 1_700_000_000.3, 1_700_000_000.25]
    for reference in ("Obj001.Level", "T" * 5000):
        field = reference_field(reference)
        for data_type, value in cases:
            state = types.SimpleNamespace(
                info=types.SimpleNamespace(mx_data_type=data_type),
                gen_function=_constant,
                flaky=False,
                computed_at=-1,
            )
            row = ReadRow(reference, parse_reference("Obj001.Level"), field, state, b"")  # type: ignore[arg-type]
            tick = 0
            for stamp in stamps:
                sample = TagSample(value, data_type, 192, stamp)  # type: ignore[arg-type]
                expected = good_read_row(field, sample, False)
                row.wire = expected  # as if kept by an earlier read: kept again
                # The second tick: kept row and cached pieces; the third: the row named
                # twice in one read (one sample, the kept row).
                for times in (1, 1, 2):
                    tick += 1
                    out = [b""] * (times + 1)
                    made = fresh_rows(
                        [row] * times,
                        [value] * times,  # type: ignore[list-item]
                        list(range(1, times + 1)),
                        out,
                        tick,
                        stamp,
                    )
                    assert out == [b"", *[expected] * times] and made == times * len(expected)
                    kept = state.sample
                    assert (kept.value, kept.data_type, kept.quality) == (value, data_type, 192)
                    assert (kept.timestamp, kept.status) == (stamp, STATUS_OK)
                    assert state.computed_at == tick
                reply = _reference_read_reply(
                    [ReadResult(reference, sample, False, "", (STATUS_OK,))]
                )
                assert pb.BulkReadReply.FromString(expected) == reply


@pytest.mark.parametrize("flaky_one_in", [0, 3])
async def test_a_remembered_reads_planned_rows_are_the_plain_paths_rows(
    flaky_one_in: int, monkeypatch: pytest.MonkeyPatch, numpy_path: bool
) -> None:
    """A poller's repeated ReadBulk is answered by its chunks' plans (the rows of
    attributes only their models drive decided a generator's group at a time, the others
    row by row). Through the client, every reply is byte for byte what the generic path
    answers at the same tick, however each group is decided: its kept rows (no tick changed
    it), rows of samples another read computed (row by row, or planned too), values
    computed anew, or row by row when a group's attributes are partly changed (another
    session read some of them in a new period). Between reads another session also advises
    one of the attributes and pins another by a write; every sample stays its model's value
    at the tick it was computed."""
    decisions: list[int | None] = []
    decide = _Group.decide

    def spy(group: _Group, tick: int) -> int | None:
        decisions.append(decide(group, tick))
        return decisions[-1]

    monkeypatch.setattr(_Group, "decide", spy)
    async with GatewaySimulator(
        catalog=_model_catalog(120), scan_interval_ms=3_600_000, flaky_one_in=flaky_one_in
    ) as sim:
        plant = sim.plant
        assert plant is not None
        refs = [r for r in _references(120) if ".." not in r]  # some twice
        assert len(refs) > MEMO_CHUNK_ROWS  # two chunks
        states = {r: plant.state(r) for r in refs}
        async with _library_sessions(sim, "reader", "other") as (session, other):
            other_h = await other.register("other")
            hlmx = await session.register("reader")
            runtime = _runtime_of(sim, session)
            cache = runtime._read_rows
            assert cache is not None
            steps: list[int | str] = [1, 1, 0, 3, 30, "other", 1, 7, "advise", 50, 1, 200]
            steps += [0, "write", 25, "other", 2, "all", 1, "generic", 3]
            for step in steps:
                if step == "other":  # a new period, then half the attributes read there
                    for _ in range(26):
                        plant.step()
                    await other.read_bulk(other_h, refs[::2])
                elif step == "generic":  # ... all of them, through Plant.current
                    for _ in range(26):
                        plant.step()
                    other_rt = sim.sessions.get(other.session_id).runtime  # type: ignore[union-attr]
                    other_cache, other_rt._read_rows = other_rt._read_rows, None
                    try:
                        await other.read_bulk(other_h, refs)
                    finally:
                        other_rt._read_rows = other_cache
                elif step == "all":  # ... all of them, twice (the repeat planned too)
                    for _ in range(2):
                        for _ in range(26):
                            plant.step()
                        await other.read_bulk(other_h, refs)
                elif step == "advise":
                    await other.subscribe_bulk(other_h, ["Obj005.Level", "Obj006.Flag"])
                elif step == "write":
                    (row,) = await other.subscribe_bulk(other_h, ["Obj007.Count"])
                    await other.write(other_h, row.item_handle, 7, wait=True)
                else:
                    for _ in range(int(step)):
                        plant.step()
                await _fast_and_plain(session, runtime, hlmx, refs, states)
            assert cache.memo is not None and len(cache.memo) == 2
            plans = [plan for _, plan in cache.plans.values()]
            assert len(plans) == 2 and all(plan is not None and plan.groups for plan in plans)
            assert all(plan is not None and plan.loose for plan in plans)  # repeats at least
            groups = [group for plan in plans for group in plan.groups]  # type: ignore[union-attr]
            # The path asked for: every generator of BATCHED but the constant's by arrays,
            # a Double's, Float's, Boolean's and Integer's rows spliced by them too (the
            # Integers' where their varints were as long: some were), or none of it.
            vectors = {g.function for g in groups if g.vector is not None}
            assert vectors == (set(BATCHED) - {_constant} if numpy_path else set())
            fixed = {g.data_type for g in groups if g.fixed is not None}
            assert fixed == ({MX_DOUBLE, MX_FLOAT, MX_BOOLEAN, MX_INTEGER} if numpy_path else set())
            assert any(g.fixed for g in groups if g.data_type == MX_INTEGER) == numpy_path
    assert set(decisions) == {_KEEP, _ENCODE, _COMPUTE, None}


async def test_a_plans_cost_covers_the_bytes_it_holds(
    monkeypatch: pytest.MonkeyPatch, numpy_path: bool
) -> None:
    """A remembered chunk's plan counts in the read cache's bound by its cost: it must cover
    what the plan holds once reads built heads for two sizes of tail, a third having come
    and gone (its lists, the rows it encoded last, the heads and their rows' layouts)."""
    plant = Plant(_model_catalog(120), scan_interval_ms=1, flaky_one_in=0)
    runtime = SimulatedRuntime(plant)
    await runtime.start(lambda events: None)
    hlmx = await runtime.register("cost")
    refs = [r for r in _references(120) if ".." not in r]
    cache = runtime._read_rows
    assert cache is not None
    now = [1_764_000_000.5]
    monkeypatch.setattr(simruntime, "time", types.SimpleNamespace(time=lambda: now[0]))
    for tick, fraction in enumerate((0.5, 0.000_5, 0.5, 0.000_5, 0.25)):  # 5 and 4 bytes
        plant.tick += 41 + tick
        now[0] = 1_764_000_000 + tick + fraction
        memo = runtime.read_memo(b"call")
        assert memo is not None
        parts = memo.rows or list(chunks(refs, READ_CHUNK_ROWS))
        for part, chunk in enumerate(parts):
            if memo.rows is None:
                runtime.read_wire(hlmx, chunk, 1 << 24, memo=memo)
            else:
                runtime.read_wire(hlmx, None, 1 << 24, memo=memo, rows=chunk, part=part)
        memo.done()
    plans = [plan for _, plan in cache.plans.values() if plan is not None]
    groups = [group for plan in plans for group in plan.groups]
    # The heads of two sizes of tail: a Double's and a Boolean's rows' by struct, or their
    # templates (the numpy path).
    for kind in (FIXED_BOOL, FIXED_DOUBLE):
        of_kind = [group for group in groups if group.kind == kind]
        assert any(len((g.fixed or {}) if numpy_path else g.heads) == 2 for g in of_kind)
    assert any(len(group.sizes) == 2 for group in groups)
    shared: dict[int, SharedValues] = {}
    held_by_plans = 0
    for plan in plans:
        held = sys.getsizeof(plan.template) + sys.getsizeof(plan.loose) * 2
        held += sys.getsizeof(plan.order) + sum(map(sys.getsizeof, plan.order))
        for group in plan.groups:
            lists = (group.positions, group.states, group.args, group.fields, group.parts)
            held += sum(map(sys.getsizeof, lists)) + sys.getsizeof(group.wires)
            held += sum(map(sys.getsizeof, group.wires))
            held += sum(map(sys.getsizeof, group.samples))
            for heads in group.heads.values():
                held += sys.getsizeof(heads) + sum(map(sys.getsizeof, heads))
            # Each row's layout for the sizes of tail whose heads are kept, and no others
            # (the layouts themselves are shared by every plan).
            assert group.layouts.keys() == group.heads.keys()
            held += sum(map(sys.getsizeof, group.layouts.values()))
            for sizes in group.sizes.values():
                held += sys.getsizeof(sizes) + sum(map(sys.getsizeof, sizes))
            held += sys.getsizeof(group.pieces)  # a VARIABLE kind's pieces by value
            held += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in group.pieces.items())
            for fixed in (group.fixed or {}).values():  # the numpy path's templates
                held += sys.getsizeof(fixed) + sys.getsizeof(fixed.template)
                held += sys.getsizeof(fixed.layout)
            if group.vector is not None:  # the arrays of its parameters
                cells = [cell.cell_contents for cell in group.vector.__closure__ or ()]
                owners = [c for c in cells if isinstance(c, SharedValues)]
                if owners:  # computed with the other chunks' groups: counted below
                    shared[id(owners[0])] = owners[0]
                    continue
                held += _arrays_held(group.vector)
        assert held <= plan.cost, (held, plan.cost)
        held_by_plans += held
    # The arrays a generator's groups share across chunks (their parameters', the values
    # of one tick) are covered by the costs of the plans whose groups joined them.
    assert shared or not numpy_path
    for together in shared.values():
        assert together.values is not None and together.array is not None
        held_by_plans += _arrays_held(together.values) + together.array.nbytes
        held_by_plans += sys.getsizeof(together.params) + sys.getsizeof(together.offsets)
    assert held_by_plans <= sum(plan.cost for plan in plans), (held_by_plans, plans)
    await runtime.close()


def _arrays_held(values: Any) -> int:
    """Bytes of the arrays a group's :data:`~mxgateway_sim._readvec.Values` holds (its
    parameters', and those made ahead)."""
    cells = [cell.cell_contents for cell in values.__closure__ or ()]
    cells += [a for c in cells if isinstance(c, list) for a in c]  # made ahead
    arrays = [cell for cell in cells if hasattr(cell, "nbytes")]
    assert arrays
    return sum(sys.getsizeof(a) + a.nbytes for a in arrays)
