"""A large ``read_bulk`` is sent as bytes encoded ahead, those of the session's previous
read when it asked for the same tags (``mxgateway._encoded``).

What must hold: the bytes on the wire are exactly those of the request the plain path
builds (``MxCommandRequest.SerializeToString()``), on the command stream, on unary
``Invoke`` and on ``Invoke`` after a gateway without the stream refused it; a read of other
tags, another handle or timeout, a list changed after the last read, or references that
only claim to equal the remembered ones, sends its own references.
test_client_read_bulk.py compares the rows with those of ``invoke_raw``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import grpc.aio
import pytest

from mxgateway import ClientOptions, GatewayClient, Session
from mxgateway._encoded import ReadMemo
from mxgateway.generated import mxaccess_gateway_pb2 as pb

SID = "session-0123456789abcdef0123456789abcdef"
SERVICE = pb.DESCRIPTOR.services_by_name["MxAccessGateway"].full_name
# More than the 256 tags a read of a few is sent without encoding ahead.
REFS = [f"Area{i % 7}.Obj{i:04d}.Attr\u00e9{'x' * (i % 13)}" for i in range(600)]


def _command(handle: int, tags: Iterable[str], timeout_ms: int = 0) -> pb.MxCommand:
    return pb.MxCommand(
        kind=pb.MX_COMMAND_KIND_READ_BULK,
        read_bulk=pb.ReadBulkCommand(
            server_handle=handle, tag_addresses=list(tags), timeout_ms=timeout_ms
        ),
    )


@pytest.mark.parametrize("session_id", [SID, "s", "\u00e9" * 200])
@pytest.mark.parametrize("correlation_id", ["py-1-0001-1", "", "c" * 300])
@pytest.mark.parametrize(("handle", "timeout_ms"), [(0, 0), (7, 250), (-5, 2**31 - 1)])
def test_encoded_request_is_the_serialized_message(
    session_id: str, correlation_id: str, handle: int, timeout_ms: int
) -> None:
    for tags in (REFS, ["", "a"], ["\U0001f600" * 70_000]):  # lengths of 1 to 3 varint bytes
        plain = _command(handle, tags, timeout_ms)
        memo = ReadMemo(handle, list(tags), timeout_ms, [plain.SerializeToString()])
        (encoded,) = memo.requests(session_id, lambda: correlation_id)
        expected = pb.MxCommandRequest(
            session_id=session_id, client_correlation_id=correlation_id, command=plain
        )
        assert encoded.wire == expected.SerializeToString()
        assert encoded.message == expected
        assert (encoded.session_id, encoded.kind) == (session_id, pb.MX_COMMAND_KIND_READ_BULK)


class _RawGateway:
    """A gateway that records the bytes of every command request and answers a ReadBulk
    with one row per reference it carries (the reference echoed)."""

    def __init__(self, with_stream: bool = True) -> None:
        """``with_stream=False``: no ``InvokeStream`` (upstream's gateway: UNIMPLEMENTED)."""
        self.wires: list[bytes] = []
        self.server = grpc.aio.server()
        handlers = {
            "OpenSession": grpc.unary_unary_rpc_method_handler(self._open),
            "CloseSession": grpc.unary_unary_rpc_method_handler(self._close),
            "Invoke": grpc.unary_unary_rpc_method_handler(self._invoke),
        }
        if with_stream:
            handlers["InvokeStream"] = grpc.stream_stream_rpc_method_handler(self._invoke_stream)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.endpoint = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    async def _open(self, _wire: bytes, _context: Any) -> bytes:
        reply = pb.OpenSessionReply(session_id=SID, gateway_protocol_version=3)
        reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_OK
        return reply.SerializeToString()

    async def _close(self, _wire: bytes, _context: Any) -> bytes:
        reply = pb.CloseSessionReply(session_id=SID, final_state=pb.SESSION_STATE_CLOSED)
        reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_OK
        return reply.SerializeToString()

    def _answer(self, wire: bytes) -> bytes:
        self.wires.append(wire)
        request = pb.MxCommandRequest.FromString(wire)
        reply = pb.MxCommandReply(session_id=request.session_id, kind=request.command.kind)
        reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_OK
        for tag in request.command.read_bulk.tag_addresses:
            reply.bulk_read.results.add(tag_address=tag, was_successful=True)
        return reply.SerializeToString()

    async def _invoke(self, wire: bytes, _context: Any) -> bytes:
        return self._answer(wire)

    async def _invoke_stream(self, wires: AsyncIterator[bytes], _context: Any) -> Any:
        async for wire in wires:
            yield self._answer(wire)


@contextlib.asynccontextmanager
async def _raw_session(path: str) -> AsyncIterator[tuple[_RawGateway, Session]]:
    """A session on a :class:`_RawGateway`; ``path``: "invoke" (``command_stream`` off),
    "stream", or "fallback" (the client on the stream, the gateway without it)."""
    gateway = _RawGateway(with_stream=path != "fallback")
    stream = path != "invoke"
    await gateway.server.start()
    try:
        options = ClientOptions(
            endpoint=gateway.endpoint, api_key="k", plaintext=True, command_stream=stream
        )
        async with (
            await GatewayClient.connect(options=options) as client,
            await client.open_session("memo") as session,
        ):
            yield gateway, session
    finally:
        await gateway.server.stop(None)


def _plain_wire(wire: bytes, command: pb.MxCommand) -> bytes:
    """What the plain path sends for ``command`` in the request ``wire`` came in (its
    session and correlation ids)."""
    sent = pb.MxCommandRequest.FromString(wire)
    return pb.MxCommandRequest(
        session_id=sent.session_id,
        client_correlation_id=sent.client_correlation_id,
        command=command,
    ).SerializeToString()


class _Claims(str):
    """A reference that claims to equal any string (a ``str`` subclass)."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


@pytest.mark.parametrize("path", ["invoke", "stream", "fallback"])
async def test_every_read_sends_the_plain_paths_bytes(path: str) -> None:
    """Reads that repeat, change and vary a large tag list: each request's bytes are those
    of the plain path's request for exactly the arguments of that call, and each answer
    echoes those references."""
    changed = list(REFS)
    changed[300] = "Other.Tag"
    claims: list[str] = [_Claims(f"Claim{i}") for i in range(len(REFS))]
    calls: list[tuple[int, list[str], int]] = [
        (3, REFS, 0),  # encoded and remembered
        (3, REFS, 0),  # the remembered bytes
        (3, list(REFS), 0),  # an equal list of the same strings
        (3, [r.encode().decode() for r in REFS], 0),  # equal strings, other objects
        (3, REFS, 250),  # another timeout
        (4, REFS, 250),  # another handle
        (3, changed, 0),  # one reference changed
        (3, REFS[:-1], 0),  # one fewer
        (3, REFS, 0),
        (3, claims, 0),  # not plain strings: never taken for the remembered ones
        (3, REFS, 0),  # ... nor remembered (each claims to equal any string)
        (3, REFS * 2, 0),
    ]
    async with _raw_session(path) as (gateway, session):
        mutable = list(REFS)
        await session.read_bulk(3, mutable)
        mutable[5] = "Mutated.After"  # a list changed after its read sends the change
        calls.append((3, list(mutable), 0))
        before = len(gateway.wires)
        for handle, tags, timeout_ms in calls:
            rows = await session.read_bulk(handle, tags, timeout_ms=timeout_ms)
            assert [r.tag_address for r in rows] == [str.__str__(t) for t in tags]
        wires = gateway.wires[before:]
        assert len(wires) == len(calls)
        for wire, (handle, tags, timeout_ms) in zip(wires, calls, strict=True):
            assert wire == _plain_wire(wire, _command(handle, map(str.__str__, tags), timeout_ms))
        assert len({pb.MxCommandRequest.FromString(w).client_correlation_id for w in wires}) == len(
            wires
        )
