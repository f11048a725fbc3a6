"""The command stream on a grpcio whose internals differ from what ``mxgateway._grpcbatch``
uses (grpcio has no upper version pin): the first failure of a batch for that reason turns
batches off for good and every command is answered once, as with ``write()``/``read()``.
The differences are simulated by replacing the private pieces; the gateway is a plain
threaded ``grpc.server`` recording what each carriage carried."""

from __future__ import annotations

from typing import Any

import pytest
from stream_gateways import PING, WRITE, RecordingGateway, threaded_gateway

from mxgateway import GatewayClient, _grpcbatch
from mxgateway.generated import mxaccess_gateway_pb2 as pb


@pytest.fixture
def batches_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches available at the start; whatever the test turns off is restored after it."""
    monkeypatch.setattr(_grpcbatch, "AVAILABLE", True)


def _client_call(call: Any) -> bool:
    return type(call).__name__ == "_AioCall"


async def _run(
    gateway: RecordingGateway, commands: list[pb.MxCommand]
) -> list[pb.MxCommandKind.ValueType]:
    with threaded_gateway(gateway) as options:
        async with await GatewayClient.connect(options=options) as client:
            kinds = [(await client.invoke("session-1", c)).kind for c in commands]
            assert client._commands is not None and not client._commands.unsupported
            return kinds


@pytest.mark.usefixtures("batches_on")
@pytest.mark.parametrize("where", ["execute_batch", "ReceiveMessageOperation"])
async def test_a_batch_refused_before_it_ran_falls_back_to_write_and_read_on_the_stream(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Another signature of execute_batch or of an operation class: nothing happened on the
    # stream. The command is written and read on it (not dropped, not sent twice) and so
    # is every later one, without trying a batch again.
    tries: list[str] = []

    def changed(*args: Any) -> Any:
        tries.append(where)
        raise TypeError(f"{where}() takes exactly 4 positional arguments")

    if where == "execute_batch":
        execute = _grpcbatch._execute_batch

        def execute_batch(call: Any, operations: Any, loop: Any) -> Any:
            if _client_call(call):
                return changed()
            return execute(call, operations, loop)

        monkeypatch.setattr(_grpcbatch, "_execute_batch", execute_batch)
    else:
        monkeypatch.setattr(_grpcbatch, "_ReceiveMessage", changed)
    gateway = RecordingGateway()
    kinds = await _run(gateway, [PING, PING, WRITE, PING, PING])
    assert (
        kinds
        == [pb.MX_COMMAND_KIND_PING] * 2
        + [pb.MX_COMMAND_KIND_WRITE]
        + [pb.MX_COMMAND_KIND_PING] * 2
    )
    assert gateway.streamed == kinds  # each once, all on the one stream
    assert (gateway.invoked, gateway.streams) == ([], 1)
    assert tries == [where]  # batches off for good after the first
    assert not _grpcbatch.AVAILABLE


class _MessageRenamed:
    """A ReceiveMessageOperation whose result is no longer read by ``message()``."""

    def __init__(self, flags: int) -> None:
        self.operation = _RealReceive(flags)

    def __getattr__(self, name: str) -> Any:
        if name == "message":
            raise AttributeError("'ReceiveMessageOperation' object has no attribute 'message'")
        return getattr(self.operation, name)


_RealReceive: Any = _grpcbatch._ReceiveMessage


@pytest.mark.usefixtures("batches_on")
async def test_a_batch_that_ran_but_cannot_be_read_sends_a_read_again_once_through_invoke(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The batch ran (the ping went out, its reply came in) but this grpcio gives the reply
    # another way: the reply is lost, the stream is dropped and Invoke answers the ping
    # (safe to send again), once. Later commands use a new stream without batches.
    made: list[int] = []

    def receive(flags: int) -> Any:
        made.append(flags)
        return _MessageRenamed(flags)

    # The renamed operation must still be what execute_batch accepts: give it the real one
    # and read the result through the stand-in.
    execute = _grpcbatch._execute_batch

    def execute_batch(call: Any, operations: Any, loop: Any) -> Any:
        real = tuple(op.operation if isinstance(op, _MessageRenamed) else op for op in operations)
        return execute(call, real, loop)

    monkeypatch.setattr(_grpcbatch, "_ReceiveMessage", receive)
    monkeypatch.setattr(_grpcbatch, "_execute_batch", execute_batch)
    gateway = RecordingGateway()
    kinds = await _run(gateway, [PING, PING, WRITE, PING])
    assert kinds == [pb.MX_COMMAND_KIND_PING] * 2 + [
        pb.MX_COMMAND_KIND_WRITE,
        pb.MX_COMMAND_KIND_PING,
    ]
    assert gateway.streamed == kinds  # the lost ping's reply went out on the first stream
    assert gateway.invoked == [pb.MX_COMMAND_KIND_PING]  # and it was answered again, once
    assert gateway.streams == 2
    assert len(made) == 1  # no batch after the failure
    assert not _grpcbatch.AVAILABLE


class _StandIn:
    """A stream call without gRPC's own object behind it (as bench/opcua.py's
    ``_CannedStream``): answers each command at once."""

    def __init__(self) -> None:
        self.kinds: list[int] = []

    def done(self) -> bool:
        return False

    async def write(self, request: Any) -> None:
        self.kinds.append(request.command.kind)

    async def read(self) -> pb.MxCommandReply:
        return pb.MxCommandReply(
            kind=self.kinds[-1], protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_OK)
        )

    def cancel(self) -> None:
        pass


@pytest.mark.usefixtures("batches_on")
async def test_a_stream_call_without_grpcs_own_object_is_written_and_read() -> None:
    # A call whose _cython_call is missing (renamed in another grpcio; a stand-in): the
    # command is written and read on it, never lost to a traceback.
    gateway = RecordingGateway()
    with threaded_gateway(gateway) as options:
        async with await GatewayClient.connect(options=options) as client:
            await client.invoke("session-1", PING)  # the stream has answered a command
            commands = client._commands
            assert commands is not None and commands._answered
            real, commands._call = commands._call, _StandIn()
            stand_in = commands._call
            try:
                for _ in range(2):
                    assert (await client.invoke("session-1", PING)).kind == pb.MX_COMMAND_KIND_PING
            finally:
                commands._call = real
            assert stand_in.kinds == [pb.MX_COMMAND_KIND_PING] * 2
    assert (gateway.streamed, gateway.invoked) == ([pb.MX_COMMAND_KIND_PING], [])
    assert not _grpcbatch.AVAILABLE


@pytest.mark.usefixtures("batches_on")
async def test_batches_turned_off_after_a_stream_answered_are_not_tried_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another client of the process (or a pipelined read) found this grpcio's batches
    # unusable after this stream answered a command: the stream's next read is written
    # and read, no batch tried.
    tries: list[object] = []
    execute = _grpcbatch._execute_batch

    def execute_batch(call: Any, operations: Any, loop: Any) -> Any:
        if _client_call(call):
            tries.append(call)
        return execute(call, operations, loop)

    monkeypatch.setattr(_grpcbatch, "_execute_batch", execute_batch)
    gateway = RecordingGateway()
    with threaded_gateway(gateway) as options:
        async with await GatewayClient.connect(options=options) as client:
            await client.invoke("session-1", PING)
            await client.invoke("session-1", PING)
            assert len(tries) == 1  # batches work here
            assert client._commands is not None and client._commands._answered
            _grpcbatch.AVAILABLE = False
            await client.invoke("session-1", PING)
            assert len(tries) == 1
    assert gateway.streamed == [pb.MX_COMMAND_KIND_PING] * 3
    assert (gateway.invoked, gateway.streams) == ([], 1)
