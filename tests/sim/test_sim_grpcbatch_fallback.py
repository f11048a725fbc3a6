"""The simulator's ``InvokeStream`` on a grpcio whose internals differ from what
``mxgateway._grpcbatch`` uses (grpcio has no upper version pin): the first failure of a
batch for that reason turns batches off for good and the stream goes on with one
operation at a time, every command answered once. The differences are simulated by
replacing the private pieces for the server's calls only (the client here is grpc.aio's
own ``write()``/``read()``, or the library's with real batches)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from simhelpers import Gw, command

from mxgateway import ClientOptions, GatewayClient, _grpcbatch
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator


@pytest.fixture(autouse=True)
def batches_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches available at the start; whatever the test turns off is restored after it."""
    monkeypatch.setattr(_grpcbatch, "AVAILABLE", True)


def _server_call(call: Any) -> bool:
    return type(call).__name__ == "RPCState"


async def _stream(gw: Gw, sid: str, commands: list[pb.MxCommand]) -> list[pb.MxCommandReply]:
    """Run ``commands`` on one new stream, one at a time; half-close and expect OK."""
    stream = gw.stub.InvokeStream(metadata=gw.md, timeout=30)
    try:
        replies = []
        for cmd in commands:
            await stream.write(pb.MxCommandRequest(session_id=sid, command=cmd))
            replies.append(await stream.read())
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
        return replies
    finally:
        stream.cancel()


def _commands(sh: int) -> list[pb.MxCommand]:
    return [
        command("ping"),
        command("read_bulk", server_handle=sh, tag_addresses=["Tank01.Level"]),
        command("get_session_state"),
        command("register", client_name="fallback"),
    ]


async def test_a_batch_refused_before_it_ran_leaves_the_stream_to_one_operation_at_a_time(
    sim: GatewaySimulator, gw: Gw, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another signature of execute_batch: nothing happened on the call; the reply not yet
    # sent goes out and the stream answers on (before: INTERNAL, the stream ended).
    tries: list[tuple[str, ...]] = []
    execute = _grpcbatch._execute_batch

    def execute_batch(call: Any, operations: tuple[Any, ...], loop: Any) -> Any:
        if _server_call(call):
            tries.append(tuple(type(op).__name__ for op in operations))
            raise TypeError("execute_batch() takes exactly 4 positional arguments")
        return execute(call, operations, loop)

    monkeypatch.setattr(_grpcbatch, "_execute_batch", execute_batch)
    sid = await gw.open()
    sh = await gw.register(sid)
    for _ in range(2):  # the second stream does not try a batch
        replies = await _stream(gw, sid, _commands(sh))
        assert [(r.kind, r.protocol_status.code) for r in replies] == [
            (c.kind, pb.PROTOCOL_STATUS_CODE_OK) for c in _commands(sh)
        ]
    assert tries == [("ReceiveMessageOperation",)]
    assert not _grpcbatch.AVAILABLE
    # The library's client (its own batches are real) is answered as before.
    options = ClientOptions(endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True)
    async with (
        await GatewayClient.connect(options=options) as client,
        await client.open_session() as session,
    ):
        h = await session.register("fallback")
        for _ in range(3):
            rows = await session.read_bulk(h, ["Tank01.Level"])
            assert [r.tag_address for r in rows] == ["Tank01.Level"]
    assert len(tries) == 1


async def test_a_server_call_not_found_behind_its_context_serves_one_operation_at_a_time(
    gw: Gw, monkeypatch: pytest.MonkeyPatch
) -> None:
    # grpc.aio's RPCState renamed or no longer referred to by the context: no batches.
    execute = _grpcbatch._execute_batch
    tries: list[object] = []

    def execute_batch(call: Any, operations: tuple[Any, ...], loop: Any) -> Any:
        tries.append(call)
        return execute(call, operations, loop)

    monkeypatch.setattr(_grpcbatch, "_RPCState", type("RenamedState", (), {}))
    monkeypatch.setattr(_grpcbatch, "_execute_batch", execute_batch)
    sid = await gw.open()
    sh = await gw.register(sid)
    replies = await _stream(gw, sid, _commands(sh))
    assert [r.protocol_status.code for r in replies] == [pb.PROTOCOL_STATUS_CODE_OK] * 4
    assert tries == []


async def test_a_reply_whose_batch_is_refused_goes_out_and_the_stream_answers_on(
    gw: Gw, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The refusal comes at a reply's batch (send and receive), not the first receive: that
    # reply, not sent, goes out the plain way, then the rest of the stream.
    tries: list[tuple[str, ...]] = []
    execute = _grpcbatch._execute_batch

    def execute_batch(call: Any, operations: tuple[Any, ...], loop: Any) -> Any:
        if _server_call(call):
            tries.append(tuple(type(op).__name__ for op in operations))
            if len(tries) == 2:
                raise TypeError("SendMessageOperation() takes exactly 3 positional arguments")
        return execute(call, operations, loop)

    monkeypatch.setattr(_grpcbatch, "_execute_batch", execute_batch)
    sid = await gw.open()
    sh = await gw.register(sid)
    replies = await _stream(gw, sid, _commands(sh))
    assert [(r.kind, r.protocol_status.code) for r in replies] == [
        (c.kind, pb.PROTOCOL_STATUS_CODE_OK) for c in _commands(sh)
    ]
    assert tries == [
        ("ReceiveMessageOperation",),
        ("SendMessageOperation", "ReceiveMessageOperation"),
    ]


class _MessageRenamed:
    """A ReceiveMessageOperation whose result is no longer read by ``message()``."""

    def __init__(self, operation: Any) -> None:
        self.operation = operation

    def message(self) -> bytes:
        raise AttributeError("'ReceiveMessageOperation' object has no attribute 'message'")


async def test_a_request_received_but_not_readable_ends_the_stream_unavailable_once(
    gw: Gw, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch ran (a request came in) but this grpcio gives it another way: the command
    # did not run; the stream ends UNAVAILABLE (a client sends it again) and the next
    # stream answers everything without batches.
    receive: Any = _grpcbatch._ReceiveMessage
    execute = _grpcbatch._execute_batch
    tries: list[int] = []

    def receive_renamed(flags: int) -> Any:
        tries.append(flags)
        return _MessageRenamed(receive(flags))

    def execute_batch(call: Any, operations: tuple[Any, ...], loop: Any) -> Any:
        real = tuple(op.operation if isinstance(op, _MessageRenamed) else op for op in operations)
        return execute(call, real, loop)

    monkeypatch.setattr(_grpcbatch, "_ReceiveMessage", receive_renamed)
    monkeypatch.setattr(_grpcbatch, "_execute_batch", execute_batch)
    sid = await gw.open()
    sh = await gw.register(sid)
    ping = pb.MxCommandRequest(session_id=sid, command=command("ping"))
    stream = gw.stub.InvokeStream(metadata=gw.md, timeout=30)
    try:
        await stream.write(ping)
        assert (await stream.read()).kind == pb.MX_COMMAND_KIND_PING  # through the gate
        await stream.write(ping)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stream.cancel()
    replies = await _stream(gw, sid, _commands(sh))
    assert [r.protocol_status.code for r in replies] == [pb.PROTOCOL_STATUS_CODE_OK] * 4
    assert len(tries) == 1
    assert not _grpcbatch.AVAILABLE
