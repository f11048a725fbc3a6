"""ReadBulk from the session's row cache answers exactly what the uncached path answers.

The simulated runtime encodes ReadBulk rows itself and keeps them per session
(``mxgateway_sim._readrows``); ``--read-cache-bytes 0`` (here: the session's cache switched
off) takes the generic path, ``SimulatedRuntime.read`` + ``read_reply_bytes``. Both are read
through the public client on real gRPC, on one plant frozen between ticks (a value read
from the plant keeps its sample until a tick changes it, so even rows nobody advises are
identical), and their rows compared byte for byte: advised rows, rows another session keeps
current, rows nobody advises, array elements, unknown objects and attributes, malformed
references, repeats; after a tick, an advise, an unadvise, a redeploy and with the cache too
small to hold the rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from mxgateway import GatewayClient, MxGatewayInvalidRequestError, Session
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, InMemoryCatalog, SessionOptions, builtin_catalog
from mxgateway_sim._readrows import MEMO_CHUNK_ROWS
from mxgateway_sim._simruntime import SimulatedRuntime
from mxgateway_sim._svc_common import READ_CHUNK_ROWS
from mxgateway_sim._wire import read_reply_bytes, varint

KEPT = ["Tank01.Level", "Pump01.Running", "Pump01.StartCount", "Line01.State"]
"""Advised in the session that reads them (answered from the advise: ``was_cached``)."""
OTHER = ["Pump01.Speed", "Tank01.Temperature", "Line01.Counter", "Tank01.LevelHistory[3]"]
"""Advised in another session only: this session reads the plant's current value."""
FRESH = [
    "Tank01.LevelSetpoint",
    "Tank01.Description",
    "Pump01.Mode",
    "Tank01.ProductCodes[]",
    "Line01.Setpoints[2]",
    "Pump01.LastStart",
    "Pump01.RunTime",
    "Line01.Recipe",
]
"""Advised nowhere: computed when read (their timestamps are the read's time)."""
FAILING = [
    "Nope01.Level",  # unknown object
    "Tank01.Nope",  # unknown attribute of a known object
    "Tank01.LevelHistory",  # an array without [] or [N]
    "Tank01.Level[2]",  # an index on a scalar
    "Line01.Setpoints[9]",  # out of range
    "bad ref",  # malformed
    "Me.Level",  # relative without a context
    "",
]
ALL = [*KEPT, *OTHER, *FRESH, *FAILING, *KEPT[:2], *OTHER[:1], *FRESH[:1], *FAILING[:2]]


class Catalog(InMemoryCatalog):
    """The builtin plant, redeployable (a test double: the version is what a redeploy
    changes)."""

    def redeploy(self, *drop: str) -> None:
        self._tags = [t for t in self._tags if t.full_tag_reference not in drop]
        self._by_ref = {t.full_tag_reference.lower(): t for t in self._tags}
        self._version += 1


@pytest.fixture
async def catalog() -> Catalog:
    return Catalog(builtin_catalog().all_tags())


async def _open(sim: GatewaySimulator) -> AsyncIterator[tuple[GatewayClient, Session]]:
    async with (
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
        await client.open_session(client_session_name="rows") as session,
    ):
        yield client, session


def _runtime(sim: GatewaySimulator, session: Session) -> SimulatedRuntime:
    found = sim.sessions.get(session.session_id)
    assert found is not None
    runtime = found.runtime
    assert isinstance(runtime, SimulatedRuntime)
    return runtime


MALFORMED = {"bad ref", "Me.Level", ""}
"""The references of FAILING that do not parse (a call with one is not remembered)."""


async def _compare(sim: GatewaySimulator, session: Session, hlmx: int, tags: list[str]) -> None:
    """Read ``tags`` with the cache (twice: building, then reusing) and without it; then
    the same without the malformed references, a call the cache remembers whole: its
    repeat answers the remembered rows (and the first read of it, the rows remembered by
    the last _compare, before whatever the test changed since)."""
    runtime = _runtime(sim, session)
    cache = runtime._read_rows
    assert cache is not None
    for batch in (tags, [t for t in tags if t not in MALFORMED]):
        first = await session.read_bulk(hlmx, batch)
        remembered = cache.memo is not None
        again = await session.read_bulk(hlmx, batch)
        runtime._read_rows = None  # the generic path
        try:
            plain = await session.read_bulk(hlmx, batch)
        finally:
            runtime._read_rows = cache
        assert [r.tag_address for r in plain] == batch
        for a, b, c in zip(first, again, plain, strict=True):
            assert a.SerializeToString() == c.SerializeToString(), (a, c)
            assert b.SerializeToString() == c.SerializeToString(), (b, c)
        if batch is not tags and cache.max_bytes > 100_000:
            assert remembered  # a roomy cache remembers a call without malformed rows
        # What is remembered is in the cache (counted in its bound), never a dropped row.
        memo = cache.memo or []
        assert all(cache.rows.get(row.text) is row for chunk in memo for row in chunk)


async def test_a_remembered_call_looks_its_rows_up_again_after_a_redeploy(
    catalog: Catalog,
) -> None:
    """The plant redeployed at a pause of a remembered call (between two of its chunks):
    the rest of the call is answered from the new namespace, as without the cache."""
    async with GatewaySimulator(catalog=catalog, scan_interval_ms=3_600_000, flaky_one_in=0) as sim:
        async for _, session in _open(sim):
            hlmx = await session.register("rows")
            batch = [*OTHER, *FRESH, *KEPT]
            await session.read_bulk(hlmx, batch)
            runtime = _runtime(sim, session)
            cache = runtime._read_rows
            assert cache is not None
            key = pb.ReadBulkCommand(server_handle=hlmx, tag_addresses=batch).SerializeToString()
            memo = runtime.read_memo(key)
            assert memo is not None and memo.rows is not None  # the repeat is remembered
            catalog.redeploy("Line01.Recipe")
            plant = sim.plant
            assert plant is not None
            plant.step()  # the plant takes the new namespace
            wire = runtime.read_wire(hlmx, None, 1 << 24, memo=memo, rows=memo.rows[0])
            assert wire == read_reply_bytes(await runtime.read(hlmx, batch, 5.0))
            rows = pb.BulkReadReply.FromString(wire).results
            assert [r.tag_address for r in rows if not r.was_successful] == ["Line01.Recipe"]
            memo.done()
            assert cache.memo is None  # not remembered again: the call looked rows up


async def _times_of_plant_reads(sim: GatewaySimulator, session: Session, hlmx: int) -> None:
    """A value read from the plant keeps the time it was computed at while no tick changes
    it (a static attribute: as an advised item sees it); the rows one read computes carry
    one time, the read's (as one scan tick's do)."""
    plant = sim.plant
    assert plant is not None
    tags = [t for t in FRESH if "[" not in t]
    states = [plant.state(t) for t in tags]
    assert all(st is not None for st in states)
    static = [st is not None and st.period == 0 and not st.flaky for st in states]
    assert True in static and False in static
    before = await session.read_bulk(hlmx, tags)
    for _ in range(10):  # past every period of these attributes
        plant.step()
    after = await session.read_bulk(hlmx, tags)
    times = set()
    for kept, a, b in zip(static, before, after, strict=True):
        if kept:
            assert (a.timestamp, a.value) == (b.timestamp, b.value), a.tag_address
        else:
            times.add(b.timestamp.SerializeToString())
    assert len(times) == 1
    again = await session.read_bulk(hlmx, tags)  # no tick since: every sample kept
    assert [r.timestamp for r in again] == [r.timestamp for r in after]


async def test_cached_rows_are_the_uncached_rows(catalog: Catalog) -> None:
    async with GatewaySimulator(catalog=catalog, scan_interval_ms=3_600_000, flaky_one_in=0) as sim:
        async for _, other in _open(sim):
            other_h = await other.register("other")
            await other.subscribe_bulk(other_h, [*OTHER, *KEPT[:1]])
            async for _, session in _open(sim):
                hlmx = await session.register("rows")
                rows = await session.subscribe_bulk(hlmx, KEPT)
                assert all(r.was_successful for r in rows)
                plant = sim.plant
                assert plant is not None
                await _compare(sim, session, hlmx, ALL)
                read = await session.read_bulk(hlmx, ALL)
                assert [r.was_cached for r in read[: len(KEPT)]] == [True] * len(KEPT)
                assert not any(r.was_cached for r in read[len(KEPT) : len(KEPT) + 8])
                assert [r.was_successful for r in read[-len(FAILING[:2]) :]] == [False, False]
                await _times_of_plant_reads(sim, session, hlmx)

                # Advised here after being read: the same sample, now was_cached.
                await session.subscribe_bulk(hlmx, [OTHER[0]])
                await _compare(sim, session, hlmx, ALL)
                read = await session.read_bulk(hlmx, [OTHER[0]])
                assert read[0].was_cached

                plant.step()  # new samples for the advised tags
                await _compare(sim, session, hlmx, ALL)

                # Unadvised: the same references now read the plant's value, not cached.
                await session.unsubscribe_bulk(hlmx, [r.item_handle for r in rows[:2]])
                await _compare(sim, session, hlmx, ALL)
                read = await session.read_bulk(hlmx, KEPT[:2])
                assert [r.was_cached for r in read] == [False, False]

                # Redeployed without Line01.Recipe (read before: its row fails now) and
                # Line01.State (advised: its item's last value goes Bad, and once
                # unadvised the reference fails like any unknown one).
                catalog.redeploy("Line01.Recipe", KEPT[3])
                await _compare(sim, session, hlmx, ALL)
                plant.step()
                await _compare(sim, session, hlmx, ALL)
                read = await session.read_bulk(hlmx, ["Line01.Recipe", KEPT[3]])
                assert [r.was_successful for r in read] == [False, False]
                assert [r.was_cached for r in read] == [False, True]
                await session.unsubscribe_bulk(hlmx, [rows[3].item_handle])
                await _compare(sim, session, hlmx, ALL)
                read = await session.read_bulk(hlmx, [KEPT[3]])
                assert (read[0].was_successful, read[0].was_cached) == (False, False)


async def test_a_cache_too_small_for_the_rows_still_answers_them(catalog: Catalog) -> None:
    options = SessionOptions(read_cache_bytes=2_000)  # about three rows
    async with GatewaySimulator(
        catalog=catalog, scan_interval_ms=3_600_000, flaky_one_in=0, session_options=options
    ) as sim:
        async for _, session in _open(sim):
            hlmx = await session.register("rows")
            await session.subscribe_bulk(hlmx, KEPT)
            await _compare(sim, session, hlmx, ALL)
            cache = _runtime(sim, session)._read_rows
            assert cache is not None
            assert 0 < cache.bytes <= 2_000 and len(cache) < len(set(ALL))


async def test_flaky_qualities_and_statuses_encode_alike() -> None:
    """A plant where some attributes go Bad or Uncertain (rows with failed statuses)."""
    async with GatewaySimulator(
        catalog=builtin_catalog(), scan_interval_ms=3_600_000, flaky_one_in=1
    ) as sim:
        plant = sim.plant
        assert plant is not None
        async for _, session in _open(sim):
            hlmx = await session.register("rows")
            await session.subscribe_bulk(hlmx, KEPT + OTHER)
            seen: set[bool] = set()
            for _ in range(12):  # walk the flaky windows
                for _ in range(25):
                    plant.step()
                await _compare(sim, session, hlmx, KEPT + OTHER)
                seen.update(r.was_successful for r in await session.read_bulk(hlmx, KEPT))
            assert seen == {True, False}


async def test_a_reply_over_the_message_limit_is_refused_alike(catalog: Catalog) -> None:
    """Rows too large together for one reply: refused, naming the flag, with the same
    message with and without the cache."""
    options = SessionOptions(max_message_bytes=64 * 1024, max_value_bytes=32 * 1024)
    async with GatewaySimulator(
        catalog=catalog, scan_interval_ms=3_600_000, flaky_one_in=0, session_options=options
    ) as sim:
        async for _, writer in _open(sim):
            wh = await writer.register("writer")
            big = ["Pump01.Mode", "Line01.Recipe"]
            rows = await writer.subscribe_bulk(wh, big)
            for row in rows:
                await writer.write(wh, row.item_handle, "x" * 20_000, wait=True)
            async for _, session in _open(sim):
                hlmx = await session.register("rows")
                read = await session.read_bulk(hlmx, big)  # two rows fit
                assert [len(r.value.string_value) for r in read] == [20_000, 20_000]
                runtime = _runtime(sim, session)
                cache = runtime._read_rows
                messages = []
                for on in (True, False, True):
                    runtime._read_rows = cache if on else None
                    with pytest.raises(MxGatewayInvalidRequestError) as caught:
                        await session.read_bulk(hlmx, [*KEPT, *big * 3])
                    messages.append(str(caught.value))
                runtime._read_rows = cache
                assert "--max-message-bytes" in messages[0] and "nothing was read" in messages[0]
                assert messages[0] == messages[1] == messages[2]


async def test_a_call_of_many_chunks_answers_what_its_single_reads_answer(
    catalog: Catalog,
) -> None:
    """A read of one chunk is not sliced, a longer one is: over several chunks (cached,
    remembered and generic) its rows are those of one read per reference."""
    async with GatewaySimulator(catalog=catalog, scan_interval_ms=3_600_000, flaky_one_in=0) as sim:
        async for _, session in _open(sim):
            hlmx = await session.register("rows")
            await session.subscribe_bulk(hlmx, KEPT)
            single = {t: (await session.read_bulk(hlmx, [t]))[0] for t in ALL}
            cache = _runtime(sim, session)._read_rows
            assert cache is not None
            wellformed = [t for t in ALL if t not in MALFORMED]
            for base in (ALL, wellformed):  # the second is remembered whole
                batch = base * (2 * MEMO_CHUNK_ROWS // len(base) + 1)
                assert len(batch) > 2 * MEMO_CHUNK_ROWS > 2 * READ_CHUNK_ROWS  # three chunks
                await _compare(sim, session, hlmx, batch)
                for _ in range(2):
                    rows = await session.read_bulk(hlmx, batch)
                    assert [r.SerializeToString() for r in rows] == [
                        single[t].SerializeToString() for t in batch
                    ]
            assert cache.memo is not None and len(cache.memo) == 3  # the last batch
            assert sum(map(len, cache.memo)) == len(batch)


def _ld(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


async def test_a_large_read_bulk_is_remembered_by_the_bytes_it_came_in(catalog: Catalog) -> None:
    """A ReadBulk of 16 KiB or more is known by its payload's own bytes, not serialised again:
    one whose fields come in another order than the generated classes write them is
    remembered by those bytes, its repeat finds the remembered rows, and both answer what
    the client's read answers. A payload sent in two parts (the parser merges them) is not
    one slice of the request: remembered by its serialisation, and answered alike."""
    async with GatewaySimulator(catalog=catalog, scan_interval_ms=3_600_000, flaky_one_in=0) as sim:
        async for _, session in _open(sim):
            hlmx = await session.register("rows")
            tags = [t for t in ALL if t not in MALFORMED] * 80
            assert len(pb.ReadBulkCommand(tag_addresses=tags).SerializeToString()) > 16 * 1024
            expected = [r.SerializeToString() for r in await session.read_bulk(hlmx, tags)]
            cache = _runtime(sim, session)._read_rows
            assert cache is not None
            names = b"".join(_ld(2, t.encode()) for t in tags)
            handle = varint(1 << 3) + varint(hlmx)
            reordered = names + handle  # server_handle last: not how the classes write it
            halves = _ld(30, handle + names[: len(names) // 2]) + _ld(30, names[len(names) // 2 :])
            kind = varint(1 << 3) + varint(pb.MX_COMMAND_KIND_READ_BULK)
            sid = _ld(1, session.session_id.encode())
            channel = grpc.aio.insecure_channel(sim.endpoint)
            invoke = channel.unary_unary(
                "/mxaccess_gateway.v1.MxAccessGateway/Invoke",
                response_deserializer=pb.MxCommandReply.FromString,
            )
            metadata = (("authorization", f"Bearer {sim.api_key}"),)
            try:
                for payload, key in (
                    (_ld(30, reordered), reordered),
                    (halves, pb.ReadBulkCommand(server_handle=hlmx, tag_addresses=tags)),
                ):
                    remembered = None
                    for _ in range(2):
                        reply = await invoke(sid + _ld(3, kind + payload), metadata=metadata)
                        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK
                        rows = [r.SerializeToString() for r in reply.bulk_read.results]
                        assert rows == expected
                        if isinstance(key, bytes):
                            assert cache.memo_key == key
                        else:
                            assert cache.memo_key == key.SerializeToString()
                        assert cache.memo is not None
                        assert remembered is None or cache.memo is remembered  # found again
                        remembered = cache.memo
            finally:
                await channel.close()
            assert reordered != pb.ReadBulkCommand.FromString(reordered).SerializeToString()
