"""A large ``read_bulk`` is pipelined: sent as several requests, written back to back on
the command stream (concurrent calls on ``Invoke``), so the client decodes one reply while
the gateway computes the next.

What must hold: the rows are exactly those of the same ``ReadBulk`` sent whole, in order;
each request is what the plain path sends for its slice of the tags, its repeat too; the
next request is on its way before the first reply is read (stream) or before the first
call is answered (``Invoke``); a chunk that fails fails the whole read with its typed error,
and the deadline is one for the whole read; either leaves no call or task behind, and the
next command on the stream gets its own reply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from test_client_read_bulk import _frozen_session, _read
from test_client_read_memo import _RawGateway

from mxgateway import (
    ClientOptions,
    GatewayClient,
    MxGatewayInvalidRequestError,
    MxGatewayTimeoutError,
    Session,
)
from mxgateway import _session as session_module
from mxgateway.generated import mxaccess_gateway_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["MxAccessGateway"].full_name
ROWS = session_module._PIPE_ROWS
CHUNKS = session_module._PIPE_CHUNKS
REFS = [f"Area{i % 7}.Obj{i:05d}.Attr" for i in range(CHUNKS * ROWS + 7)]
"""Rows enough for the most requests a read is sent in."""
LAST = REFS[(CHUNKS - 1) * -(-len(REFS) // CHUNKS)]
"""The first tag of the last request."""
PATHS = ["invoke", "stream"]
ALL_PATHS = [*PATHS, "fallback"]
"""``fallback``: the client on the stream, the gateway without it (``Invoke`` then)."""


def _client_tasks() -> list[asyncio.Task[Any]]:
    """The tasks of this loop other than the test's own and the gateway's (its server
    and its handlers of calls)."""
    return [
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task()
        and "aio/server" not in repr(t)
        and "AioServer" not in repr(t)
        and f"/{SERVICE}/" not in t.get_name()
        and "_invoke_stream" not in repr(t)
    ]


async def _settled(session: Session) -> list[asyncio.Task[Any]]:
    """:func:`_client_tasks` other than the open command stream's own (it waits for the
    stream's status) once they ended: a cancelled call's last task ends when gRPC
    delivers its status, a turn of the loop or two later. Those left after 5 s."""

    def left() -> list[asyncio.Task[Any]]:
        tasks = _client_tasks()
        commands = session.client._commands
        call = None if commands is None else commands._call
        if call is not None and not call.done():  # the stream, open for the next command
            watch = [t for t in tasks if "_handle_status_once_received" in repr(t)]
            if len(watch) == 1:
                tasks.remove(watch[0])
        return tasks

    for _ in range(500):
        if not left():
            break
        await asyncio.sleep(0.01)
    return left()


def _first(wire: bytes) -> str:
    """The first tag of a ReadBulk request."""
    return pb.MxCommandRequest.FromString(wire).command.read_bulk.tag_addresses[0]


class _Gateway(_RawGateway):
    """:class:`_RawGateway` that records the RPC each request came on and reads a
    stream's requests as they come; ``before(wire)`` runs before a request is answered (to
    hold it), ``refuse`` names first tags answered INVALID_REQUEST."""

    def __init__(self, with_stream: bool = True) -> None:
        super().__init__(with_stream)
        self.requests: list[tuple[str, bytes]] = []
        self.streams = 0
        self.arrived = asyncio.Condition()
        self.before: Callable[[bytes], Awaitable[None]] | None = None
        self.refuse: set[str] = set()

    async def _arrive(self, how: str, wire: bytes) -> None:
        async with self.arrived:
            self.requests.append((how, wire))
            self.arrived.notify_all()

    async def wait_for(self, count: int) -> bool:
        """True once ``count`` requests arrived (False after 10 s)."""
        async with self.arrived:
            try:
                await asyncio.wait_for(
                    self.arrived.wait_for(lambda: len(self.requests) >= count), 10
                )
            except asyncio.TimeoutError:
                return False
        return True

    async def _answer_held(self, wire: bytes) -> bytes:
        if self.before is not None:
            await self.before(wire)
        request = pb.MxCommandRequest.FromString(wire)
        reply = pb.MxCommandReply(session_id=request.session_id, kind=request.command.kind)
        tags = request.command.read_bulk.tag_addresses
        if tags and tags[0] in self.refuse:
            reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST
            reply.protocol_status.message = f"refused at {tags[0]}"
            return reply.SerializeToString()
        reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_OK
        for tag in tags:
            reply.bulk_read.results.add(tag_address=tag, was_successful=True)
        return reply.SerializeToString()

    async def _invoke(self, wire: bytes, _context: Any) -> bytes:
        await self._arrive("invoke", wire)
        return await self._answer_held(wire)

    async def _invoke_stream(self, wires: AsyncIterator[bytes], _context: Any) -> Any:
        # Requests are read as they come (a reader task), answered one at a time in order.
        self.streams += 1
        stream = f"stream{self.streams}"
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for wire in wires:
                    await self._arrive(stream, wire)
                    queue.put_nowait(wire)
            finally:
                queue.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (wire := await queue.get()) is not None:
                yield await self._answer_held(wire)
        finally:
            reader.cancel()


@contextlib.asynccontextmanager
async def _session(path: str, **options: Any) -> AsyncIterator[tuple[_Gateway, Session]]:
    gateway = _Gateway(with_stream=path != "fallback")
    await gateway.server.start()
    try:
        async with (
            await GatewayClient.connect(
                options=ClientOptions(
                    endpoint=gateway.endpoint,
                    api_key="k",
                    plaintext=True,
                    command_stream=path != "invoke",
                    **options,
                )
            ) as client,
            await client.open_session("pipe") as session,
        ):
            yield gateway, session
    finally:
        await gateway.server.stop(None)


def _plain(wire: bytes, handle: int, tags: list[str]) -> bytes:
    """The plain path's request of ``tags`` with ``wire``'s session and correlation ids."""
    sent = pb.MxCommandRequest.FromString(wire)
    return pb.MxCommandRequest(
        session_id=sent.session_id,
        client_correlation_id=sent.client_correlation_id,
        command=_read(handle, tags),
    ).SerializeToString()


@pytest.mark.parametrize("path", ALL_PATHS)
async def test_a_large_read_goes_in_requests_of_its_slices_each_the_plain_paths(
    path: str,
) -> None:
    async with _session(path) as (gateway, session):
        for _ in range(2):  # encoded, then the remembered bytes
            before = len(gateway.requests)
            rows = await session.read_bulk(3, REFS)
            assert [r.tag_address for r in rows] == REFS
            sent = gateway.requests[before:]
            assert len(sent) >= 2
            tags = [
                list(pb.MxCommandRequest.FromString(w).command.read_bulk.tag_addresses)
                for _, w in sent
            ]
            assert [t for part in tags for t in part] == REFS
            assert all(len(part) >= ROWS for part in tags)
            for (_, wire), part in zip(sent, tags, strict=True):
                assert wire == _plain(wire, 3, part)
            ids = {pb.MxCommandRequest.FromString(w).client_correlation_id for _, w in sent}
            assert len(ids) == len(sent)
            if path == "stream":  # all on the one stream
                assert {how for how, _ in sent} == {"stream1"}
            if path == "fallback":  # the gateway refused the stream: Invoke
                assert {how for how, _ in sent} == {"invoke"}


@pytest.mark.parametrize("path", ALL_PATHS)
async def test_the_next_request_is_sent_before_the_first_is_answered(path: str) -> None:
    # The gateway answers the first request only once the second arrived: a client that
    # waits for each reply before sending the next request never gets an answer.
    async with _session(path, timeout=20) as (gateway, session):
        await session.read_bulk(3, REFS)  # the stream opened and answering
        start = len(gateway.requests)

        async def hold(wire: bytes) -> None:
            if _first(wire) == REFS[0]:
                assert await gateway.wait_for(start + 2), "the second request never came"

        gateway.before = hold
        rows = await session.read_bulk(3, REFS)
        assert [r.tag_address for r in rows] == REFS


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("failing", ["first", "last"])
async def test_a_failing_chunk_fails_the_read_and_leaves_nothing_behind(
    path: str, failing: str
) -> None:
    # The first chunk fails while the next is on its way (its reply due: the stream is
    # ended), or the last one (nothing due).
    tag = REFS[0] if failing == "first" else LAST
    async with _session(path) as (gateway, session):
        await session.read_bulk(3, REFS)
        before, streams = len(gateway.requests), gateway.streams

        async def hold(wire: bytes) -> None:
            if _first(wire) == REFS[0]:  # answered once the next chunk is on its way
                assert await gateway.wait_for(before + 2), "the second request never came"

        gateway.before = hold
        gateway.refuse = {tag}
        with pytest.raises(MxGatewayInvalidRequestError, match=f"refused at {tag}"):
            await session.read_bulk(3, REFS)
        assert not await _settled(session)  # no call left behind
        gateway.before = None
        gateway.refuse = set()
        # The next commands get their own replies (none meant for the failed read).
        for tags in (["One.Tag"], REFS, ["Two.Tag"]):
            rows = await session.read_bulk(3, tags)
            assert [r.tag_address for r in rows] == tags
        assert not await _settled(session)
        if path == "stream":  # a new stream when replies were due, else the same one
            assert gateway.streams == streams + (failing == "first")


@pytest.mark.parametrize("path", PATHS)
async def test_one_deadline_covers_the_whole_read(path: str) -> None:
    # The second chunk is held longer than the read's deadline: the read raises the
    # deadline's typed error, leaves no call behind, and the next command is answered.
    release = asyncio.Event()
    async with _session(path) as (gateway, session):
        await session.read_bulk(3, REFS)

        later = set(REFS[1:])

        async def hold(wire: bytes) -> None:
            if _first(wire) in later:  # a chunk after the first
                await release.wait()

        gateway.before = hold
        with pytest.raises(MxGatewayTimeoutError):
            await session.read_bulk(3, REFS, timeout=0.5)
        assert not await _settled(session)
        release.set()
        gateway.before = None
        rows = await session.read_bulk(3, ["One.Tag"])
        assert [r.tag_address for r in rows] == ["One.Tag"]


@pytest.mark.parametrize("path", PATHS)
async def test_a_cancelled_read_leaves_nothing_behind(path: str) -> None:
    # The caller cancels the read while its second half is held: CancelledError, no call
    # left behind, and the next command answered with its own reply.
    release = asyncio.Event()
    async with _session(path) as (gateway, session):
        await session.read_bulk(3, REFS)
        start = len(gateway.requests)
        later = set(REFS[1:])

        async def hold(wire: bytes) -> None:
            if _first(wire) in later:
                await release.wait()

        gateway.before = hold
        read = asyncio.ensure_future(session.read_bulk(3, REFS))
        assert await gateway.wait_for(start + 2)  # both halves sent, the second held
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        assert not await _settled(session)
        release.set()
        gateway.before = None
        rows = await session.read_bulk(3, ["One.Tag"])
        assert [r.tag_address for r in rows] == ["One.Tag"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_pipelined_read_answers_what_one_read_bulk_answers(stream: bool) -> None:
    # Against the simulator (a plant frozen between ticks): rows of successes, failures
    # and one advised tag, read in several requests, are the rows of the same ReadBulk
    # sent whole through invoke_raw, in order; the repeat too.
    tags = [
        "Tank01.Level",
        "Pump01.Speed",
        "Nope01.Level",
        "Tank01.LevelHistory[3]",
        "bad ref",
    ] * (2 * ROWS // 5 + 3)
    async with _frozen_session(stream) as (sim, session, hlmx):
        await session.subscribe_bulk(hlmx, tags[:1])

        def reads() -> int:
            return sum(n for (kind, _), n in sim.stats.commands.items() if "read" in kind)

        for _ in range(2):
            before = reads()
            rows = await session.read_bulk(hlmx, tags)
            assert reads() - before >= 2  # sent in several requests
            reply = await session.invoke_raw(_read(hlmx, tags))
            assert [r.SerializeToString() for r in rows] == [
                r.SerializeToString() for r in reply.bulk_read.results
            ]
            assert [r.tag_address for r in rows] == tags
