"""``Session.read_bulk`` sends the request it builds in place (no copy of its rows) and
answers exactly what the same ``ReadBulk`` sent through ``invoke_raw`` answers.

Real simulator on loopback gRPC, a plant frozen between ticks (a read keeps each sample
until a tick changes it), on the command stream and on unary ``Invoke``.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from mxgateway import ClientOptions, GatewayClient, MxGatewaySessionNotFoundError, Session
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, builtin_catalog

TAGS = [
    "Tank01.Level",
    "Pump01.Speed",
    "Tank01.LevelSetpoint",
    "Tank01.LevelHistory[3]",
    "Nope01.Level",
    "bad ref",
    "Tank01.Level",
]


def _read(handle: int, tags: list[str], timeout_ms: int = 0) -> pb.MxCommand:
    return pb.MxCommand(
        kind=pb.MX_COMMAND_KIND_READ_BULK,
        read_bulk=pb.ReadBulkCommand(
            server_handle=handle, tag_addresses=tags, timeout_ms=timeout_ms
        ),
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_read_bulk_answers_what_invoke_raw_answers(stream: bool) -> None:
    async with _frozen_session(stream) as (_sim, session, hlmx):
        client = session.client
        await session.subscribe_bulk(hlmx, TAGS[:1])  # one row from the advise
        for timeout_ms in (0, 250):
            rows = await session.read_bulk(hlmx, TAGS, timeout_ms=timeout_ms)
            reply = await session.invoke_raw(_read(hlmx, TAGS, timeout_ms))
            raw = list(reply.bulk_read.results)
            assert [r.tag_address for r in rows] == TAGS
            assert [r.SerializeToString() for r in rows] == [r.SerializeToString() for r in raw]
            assert [r.was_successful for r in rows] == [True] * 4 + [False] * 2 + [True]
            assert rows[0].was_cached and not rows[1].was_cached
        # Listing the rows pauses the garbage collector (no collection in the middle of
        # the burst of row objects) and leaves it as the caller had it.
        assert gc.isenabled()
        again = await session.read_bulk(hlmx, TAGS)
        assert gc.isenabled()
        gc.disable()
        try:
            disabled = await session.read_bulk(hlmx, TAGS)
            assert not gc.isenabled()
        finally:
            gc.enable()
        assert [r.SerializeToString() for r in again] == [r.SerializeToString() for r in disabled]
        assert [r.SerializeToString() for r in again] == [r.SerializeToString() for r in rows]
        # An unknown server handle: every row fails, alike on both paths.
        rows = await session.read_bulk(hlmx + 99, TAGS[:2])
        reply = await session.invoke_raw(_read(hlmx + 99, TAGS[:2]))
        assert [r.SerializeToString() for r in rows] == [
            r.SerializeToString() for r in reply.bulk_read.results
        ]
        assert not any(r.was_successful for r in rows)
        # A gateway-level refusal raises the same typed error on both paths.
        await client.close_session(session.session_id)
        with pytest.raises(MxGatewaySessionNotFoundError) as direct:
            await client.invoke_raw(session.session_id, _read(hlmx, TAGS))
        with pytest.raises(MxGatewaySessionNotFoundError) as helper:
            await session.read_bulk(hlmx, TAGS)
        assert str(helper.value) == str(direct.value)


@contextlib.asynccontextmanager
async def _frozen_session(
    stream: bool, **client_options: Any
) -> AsyncIterator[tuple[GatewaySimulator, Session, int]]:
    """A simulator that counts the commands it serves, its plant frozen between ticks, a
    session of a client on it (on the command stream or not; more ``ClientOptions`` in
    ``client_options``) and its server handle."""
    async with GatewaySimulator(
        catalog=builtin_catalog(),
        scan_interval_ms=3_600_000,
        flaky_one_in=0,
        metrics_listen=("127.0.0.1", 0),  # counts the commands it serves
    ) as sim:
        options = ClientOptions(
            endpoint=sim.endpoint,
            api_key=sim.api_key,
            plaintext=True,
            command_stream=stream,
            **client_options,
        )
        async with (
            await GatewayClient.connect(options=options) as client,
            await client.open_session("rb") as session,
        ):
            yield sim, session, await session.register("rb")


def _split_reads(stream: bool) -> contextlib.AbstractAsyncContextManager[Any]:
    """:func:`_frozen_session` of a client whose messages are at most 64 KiB."""
    return _frozen_session(stream, max_message_bytes=64 * 1024)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_few_long_references_are_still_split_to_fit(stream: bool) -> None:
    """A read of a few tags is sent without measuring its size when a bound on it fits
    the request budget; ten 10,000-character references (100 kB, over the client's
    64 KiB message limit) are still split into requests that fit, rows in order, each
    what the reference alone answers."""
    long_refs = [f"Tank{i:02d}." + "x" * 10_000 for i in range(10)]
    async with _split_reads(stream) as (_sim, session, hlmx):
        rows = await session.read_bulk(hlmx, long_refs)
        assert [r.tag_address for r in rows] == long_refs
        alone = [(await session.read_bulk(hlmx, [ref]))[0] for ref in long_refs]
        assert [r.SerializeToString() for r in rows] == [r.SerializeToString() for r in alone]
        short = await session.read_bulk(hlmx, TAGS[:3])
        assert [r.tag_address for r in short] == TAGS[:3]


def test_rows_are_listed_with_the_collector_paused() -> None:
    """What ``Session`` lists a reply's rows with: no collection runs in the middle (the
    collector is off while the rows are taken), and it is on again afterwards, or still
    off for a caller that had switched it off."""
    from mxgateway._session import _list_rows

    class Rows(Sequence[bool]):
        """Rows whose slice records whether the collector was on while it was taken."""

        def __init__(self, fail: bool = False) -> None:
            self.fail = fail

        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: Any) -> Any:
            if self.fail:
                raise RuntimeError("a row that does not list")
            assert index == slice(None)
            return [gc.isenabled()] * 3

    assert _list_rows(Rows()) == [False, False, False]
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        _list_rows(Rows(fail=True))
    assert gc.isenabled()
    gc.disable()
    try:
        assert _list_rows(Rows()) == [False, False, False]
        assert not gc.isenabled()
    finally:
        gc.enable()
    # A repeated field of the generated classes slices to a list of its messages.
    reply = pb.BulkReadReply()
    reply.results.add(tag_address="a")
    reply.results.add(tag_address="b")
    listed = _list_rows(reply.results)
    assert type(listed) is list
    assert listed == list(reply.results)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_few_references_of_four_byte_characters_are_split_by_their_bytes(
    stream: bool,
) -> None:
    """The bound that spares measuring a small read counts 4 bytes a character: four
    references of 1,100 four-byte characters each (17.6 kB encoded, 13.2 kB at 3 bytes a
    character) are over a 64 KiB client's request budget (a quarter of it), so the read
    reaches the gateway as more than one command, rows in order."""
    refs = [f"Tank{i:02d}." + "\U0001f600" * 1_100 for i in range(4)]
    budget = 64 * 1024 // 4
    assert sum(len(r.encode()) for r in refs) > budget >= 3 * sum(map(len, refs)) + 64
    async with _split_reads(stream) as (sim, session, hlmx):

        def reads() -> int:
            return sum(n for (kind, _), n in sim.stats.commands.items() if "bulk" in kind)

        before = reads()
        rows = await session.read_bulk(hlmx, refs)
        assert [r.tag_address for r in rows] == refs
        assert reads() - before >= 2


@pytest.mark.parametrize("stream", [False, True])
async def test_repeated_large_reads_answer_what_invoke_raw_answers(stream: bool) -> None:
    """A read of more than 256 tags, sent as bytes encoded ahead (``mxgateway._encoded``):
    the first read of a list and the repeats of it give exactly the rows ``invoke_raw`` of
    the same ``ReadBulk`` gives, generated ``BulkReadResult`` messages, and so does a read
    of other tags in between."""
    tags = TAGS * 60  # 420 rows, failures included
    other = list(reversed(tags))
    async with _frozen_session(stream) as (_sim, session, hlmx):
        for read in (tags, tags, other, tags):
            rows = await session.read_bulk(hlmx, read)
            reply = await session.invoke_raw(_read(hlmx, read))
            assert [r.SerializeToString() for r in rows] == [
                r.SerializeToString() for r in reply.bulk_read.results
            ]
            assert all(type(r) is pb.BulkReadResult for r in rows)
            assert [r.tag_address for r in rows] == read
            assert sum(r.was_successful for r in rows) == 5 * 60


@pytest.mark.parametrize("stream", [False, True])
async def test_a_large_read_over_the_request_budget_is_split(stream: bool) -> None:
    """A read of more than 256 tags whose command is over the request budget (a quarter
    of a 64 KiB client's message limit) is not sent as one encoded request: it reaches the
    gateway as several commands, rows in order, each row what the command of that
    reference alone answers; and so does the same read again."""
    tags = (TAGS * 100)[:600]  # ~9 kB of references a read, 18 kB for two lists
    refs = tags + [t + " " for t in tags]  # twice the rows, the second half unknown
    async with _split_reads(stream) as (sim, session, hlmx):

        def reads() -> int:
            return sum(n for (kind, _), n in sim.stats.commands.items() if "bulk" in kind)

        alone = {t: (await session.read_bulk(hlmx, [t]))[0].SerializeToString() for t in refs}
        for _ in range(2):
            before = reads()
            rows = await session.read_bulk(hlmx, refs)
            assert reads() - before >= 2
            assert [r.SerializeToString() for r in rows] == [alone[t] for t in refs]
