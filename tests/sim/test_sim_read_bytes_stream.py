"""On an InvokeStream, a large ReadBulk's kept request bytes never stand for a later one, nor
outlive the command they came with."""

from __future__ import annotations

import gc

import grpc
import pytest
from google.protobuf.message import DecodeError

from mxgateway import GatewayClient
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, builtin_catalog
from mxgateway_sim._requestbytes import (
    KEEP_FROM_BYTES,
    RECENT,
    parse_command,
    read_bulk_bytes,
)
from mxgateway_sim._wire import varint


async def test_a_refused_large_read_leaves_nothing_for_the_next_read_on_its_stream() -> None:
    # The servicer's deserializer keeps a large ReadBulk request's bytes for its handler
    # (mxgateway_sim._requestbytes), which looks them up in the session's memo. A large
    # read refused before its handler (an unknown session) leaves them behind on the
    # stream; a small read after it must be answered for its own tags, not by the rows
    # remembered for the large one.
    catalog = builtin_catalog()
    tags = [t.full_tag_reference for t in catalog.all_tags() if not t.is_array]
    tags = (tags * (1 + 20_000 // len(tags)))[:2_000]
    assert len(pb.ReadBulkCommand(tag_addresses=tags).SerializeToString()) > 16 * 1024
    small = tags[:2]
    async with (
        GatewaySimulator(catalog=catalog, scan_interval_ms=3_600_000, flaky_one_in=0) as sim,
        await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
        await client.open_session(client_session_name="reader") as session,
    ):
        handle = await session.register("reader")
        channel = grpc.aio.insecure_channel(sim.endpoint)
        stream = channel.stream_stream(
            "/mxaccess_gateway.v1.MxAccessGateway/InvokeStream",
            request_serializer=pb.MxCommandRequest.SerializeToString,
            response_deserializer=pb.MxCommandReply.FromString,
        )(metadata=(("authorization", f"Bearer {sim.api_key}"),))

        def read(session_id: str, refs: list[str]) -> pb.MxCommandRequest:
            command = pb.MxCommand(kind=pb.MX_COMMAND_KIND_READ_BULK)
            command.read_bulk.server_handle = handle
            command.read_bulk.tag_addresses.extend(refs)
            return pb.MxCommandRequest(session_id=session_id, command=command)

        try:
            for _ in range(2):  # remembered, then found again by its bytes
                await stream.write(read(session.session_id, tags))
                reply = await stream.read()
                assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK, reply
                assert [r.tag_address for r in reply.bulk_read.results] == tags
            await stream.write(read("no-such-session", tags))
            refused = await stream.read()
            assert refused.protocol_status.code != pb.PROTOCOL_STATUS_CODE_OK
            for refs in (small, tags[:3]):
                await stream.write(read(session.session_id, refs))
                reply = await stream.read()
                assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK, reply
                assert [r.tag_address for r in reply.bulk_read.results] == refs
            await stream.done_writing()
            assert await stream.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        finally:
            stream.cancel()
            await channel.close()


def _kept_requests() -> int:
    """Large ReadBulk requests kept with their bytes for a handler (``_requestbytes``)."""
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if type(o) is tuple
        and len(o) == 2
        and type(o[0]) is pb.MxCommandRequest
        and type(o[1]) is bytes
        and len(o[1]) >= KEEP_FROM_BYTES
    )


async def test_an_open_stream_holds_no_large_read_its_handler_did_not_take() -> None:
    # A large ReadBulk's request and bytes are kept for its handler; one refused before
    # the handler took them (an unknown session) is not held by the open stream afterwards
    # (it was, until the stream's next large read: twice the request's size per stream).
    catalog = builtin_catalog()
    tags = [t.full_tag_reference for t in catalog.all_tags() if not t.is_array]
    tags = (tags * (1 + 20_000 // len(tags)))[:2_000]
    async with GatewaySimulator(catalog=catalog, scan_interval_ms=3_600_000) as sim:
        channel = grpc.aio.insecure_channel(sim.endpoint)
        command = pb.MxCommand(kind=pb.MX_COMMAND_KIND_READ_BULK)
        command.read_bulk.server_handle = 1
        command.read_bulk.tag_addresses.extend(tags)
        request = pb.MxCommandRequest(session_id="no-such-session", command=command)
        streams = []
        try:
            before = _kept_requests()
            for _ in range(3):
                stream = channel.stream_stream(
                    "/mxaccess_gateway.v1.MxAccessGateway/InvokeStream",
                    request_serializer=pb.MxCommandRequest.SerializeToString,
                    response_deserializer=pb.MxCommandReply.FromString,
                )(metadata=(("authorization", f"Bearer {sim.api_key}"),))
                streams.append(stream)
                await stream.write(request)
                refused = await stream.read()
                assert refused.protocol_status.code != pb.PROTOCOL_STATUS_CODE_OK
            assert _kept_requests() == before
        finally:
            for stream in streams:
                stream.cancel()
            await channel.close()


def test_a_repeated_large_read_gives_the_same_payload_bytes_object() -> None:
    # A poller sends the same large ReadBulk again and again, each request with its own
    # correlation id: its payload's bytes are the last one's very object (Python keeps
    # its hash: the session's memo finds the call without hashing ~400 kB again); a
    # payload of other bytes, even of the same length or beginning with the last one's,
    # gets its own, equal to its serialisation.
    tags = [f"Tank{i:05}.Level" for i in range(2_000)]

    def payload_bytes(correlation_id: str, refs: list[str]) -> bytes | None:
        command = pb.MxCommand(kind=pb.MX_COMMAND_KIND_READ_BULK)
        command.read_bulk.server_handle = 7
        command.read_bulk.tag_addresses.extend(refs)
        request = pb.MxCommandRequest(
            session_id="s1", client_correlation_id=correlation_id, command=command
        )
        parsed = parse_command(request.SerializeToString())
        found = read_bulk_bytes(parsed.command.read_bulk)
        assert found == command.read_bulk.SerializeToString()
        return found

    first = payload_bytes("c-1", tags)
    assert payload_bytes("c-2", tags) is first
    other = [*tags[:-1], "Tank99999.Level"]  # as long, one tag else
    assert len(other) == len(tags)
    second = payload_bytes("c-3", other)
    assert second is not first
    # Two payloads in turn (a long list read in two requests): each keeps its object.
    assert payload_bytes("c-4", tags) is first
    assert payload_bytes("c-5", other) is second
    assert payload_bytes("c-6", tags[:-1]) is not None
    assert payload_bytes("c-7", tags) is first  # not taken for the one a tag shorter
    for i in range(RECENT):  # RECENT others given since: forgotten
        payload_bytes(f"d-{i}", [*tags[:-1], f"Other{i}.Level"])
    assert payload_bytes("c-8", tags) is not first


def test_a_repeated_large_read_is_parsed_once_with_its_own_correlation_id() -> None:
    # A request of the same session and command bytes as the last large ReadBulk parsed is
    # answered with that parse (a 10,000-tag request's parse checks 10,000 strings), its
    # correlation id the new one's; any other difference (session, command, another
    # field), or a correlation id that is not UTF-8, is parsed as FromString parses it.
    tags = [f"Tank{i:05}.Level" for i in range(2_000)]

    def request(session_id: str = "s1", correlation: str = "c", refs: list[str] = tags) -> bytes:
        command = pb.MxCommand(kind=pb.MX_COMMAND_KIND_READ_BULK)
        command.read_bulk.server_handle = 7
        command.read_bulk.tag_addresses.extend(refs)
        return pb.MxCommandRequest(
            session_id=session_id, client_correlation_id=correlation, command=command
        ).SerializeToString()

    def parse(data: bytes) -> pb.MxCommandRequest:
        parsed = parse_command(data)
        assert parsed == pb.MxCommandRequest.FromString(data)  # what the plain parse gives
        read_bulk_bytes(parsed.command.read_bulk)  # what the handler takes
        return parsed

    first = parse(request(correlation="c-1"))
    again = parse(request(correlation="c-2"))
    assert again is first and again.client_correlation_id == "c-2"
    assert parse(request(correlation="")) is first  # no correlation id at all
    second = parse(request(session_id="s2"))
    assert second is not first
    # Two requests in turn (a long list read in two): each one's parse is kept.
    assert parse(request(correlation="c-3")) is first
    assert parse(request(session_id="s2", correlation="c-4")) is second
    for i in range(RECENT):  # RECENT others parsed since: forgotten
        parse(request(session_id=f"t{i}"))
    other = parse(request(correlation="c-5"))
    assert other is not first
    assert parse(request(correlation="c-6")) is other
    assert parse(request(refs=[*tags[:-1], "Tank99999.Level"])) is not other  # as long
    last = parse(request())
    # A command that begins with the last one's bytes and goes on (its kind again): parsed.
    command = pb.MxCommandRequest.FromString(request()).command.SerializeToString()
    number = pb.MxCommand.DESCRIPTOR.fields_by_name["kind"].number
    command += bytes([number << 3, pb.MX_COMMAND_KIND_PING])
    longer = b"\x0a\x02s1\x1a" + varint(len(command)) + command
    assert parse(longer).command.kind == pb.MX_COMMAND_KIND_PING
    last = parse(request())
    extra = request() + b"\x22\x01x"  # a field 4 (newer than these bindings): parsed
    assert parse(extra) is not last
    assert parse(request()) is last  # one with another field is not kept either
    bad = bytearray(request(correlation="c-5"))
    bad[bad.index(b"c-5")] = 0xFF  # not UTF-8
    with pytest.raises(DecodeError):
        parse_command(bytes(bad))


def test_the_kept_requests_are_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # At most RECENT kept, and at most RECENT_BYTES of them beyond the newest (which is
    # kept whatever its size).
    from mxgateway_sim import _requestbytes

    monkeypatch.setattr(_requestbytes, "RECENT_BYTES", 10)
    items: list[bytes] = []
    for piece in (b"a" * 4, b"b" * 4, b"c" * 4, b"d" * 40):
        _requestbytes._keep(items, piece, len)
    assert items == [b"d" * 40, b"c" * 4, b"b" * 4]  # 8 bytes beyond the newest
    _requestbytes._keep(items, b"e" * 9, len)
    assert items == [b"e" * 9]  # the 40 bytes before it are over the bound
    monkeypatch.setattr(_requestbytes, "RECENT_BYTES", 1 << 20)
    for i in range(2 * RECENT):
        _requestbytes._keep(items, bytes([i]), len)
    assert len(items) == RECENT
