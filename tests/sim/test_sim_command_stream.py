"""The simulator's ``InvokeStream``: after its first reply, each reply goes out in one gRPC
batch with the read of the next request (``GatewayServicer._batched``), and the stream
answers, refuses and ends on that path as it did with one operation at a time. With
batches off (``MXGATEWAY_GRPC_BATCH=0``) the same tests check that no batch is started and
the stream behaves the same."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from simhelpers import Gw, command, wait_for

from mxgateway import _grpcbatch
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import FaultPlan, GatewaySimulator, RpcFault
from mxgateway_sim._faults import STREAM_OFF
from mxgateway_sim._limits import DEFAULT_MAX_MESSAGE_BYTES

SEND_AND_READ = ("SendMessageOperation", "ReceiveMessageOperation")


def _batched(expected: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The batches ``expected`` where batches are on; none where they are off
    (``MXGATEWAY_GRPC_BATCH=0``, docs/operations.md; or a grpcio without them): the
    stream answers, refuses and ends the same way then, one operation at a time."""
    return expected if _grpcbatch.AVAILABLE else []


@pytest.fixture
def server_batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The operations of each batch the simulator starts itself (not grpc.aio's own)."""
    batches: list[tuple[str, ...]] = []
    execute = _grpcbatch._execute_batch

    async def counted(call: Any, operations: tuple[Any, ...], loop: Any) -> None:
        if type(call).__name__ == "RPCState":  # a server call's
            batches.append(tuple(type(op).__name__ for op in operations))
        await execute(call, operations, loop)

    monkeypatch.setattr(_grpcbatch, "_execute_batch", counted)
    return batches


async def test_after_its_first_reply_each_reply_goes_out_with_the_next_read(
    gw: Gw, server_batches: list[tuple[str, ...]]
) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    commands = [
        command("ping"),
        command("read_bulk", server_handle=sh, tag_addresses=["Tank01.Level"]),
        command("get_session_state"),
        command("register", client_name="stream"),
    ]
    stream = gw.stub.InvokeStream(metadata=gw.md)
    try:
        for cmd in commands:
            await stream.write(pb.MxCommandRequest(session_id=sid, command=cmd))
            reply = await stream.read()
            assert (reply.kind, reply.protocol_status.code) == (
                cmd.kind,
                pb.PROTOCOL_STATUS_CODE_OK,
            )
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF  # the last reply went out before the end
        assert await stream.code() == grpc.StatusCode.OK
    finally:
        stream.cancel()
    # The first request came through the body gate and its reply with the headers; then
    # one read, and each later reply with the next read (the last one read the end).
    assert server_batches == _batched([("ReceiveMessageOperation",)] + [SEND_AND_READ] * 3)


async def test_a_fault_plan_ends_a_batched_stream_before_its_next_command(
    sim: GatewaySimulator, gw: Gw, server_batches: list[tuple[str, ...]]
) -> None:
    sid = await gw.open()
    ping = pb.MxCommandRequest(session_id=sid, command=command("ping"))
    stream = gw.stub.InvokeStream(metadata=gw.md)
    try:
        for _ in range(3):
            await stream.write(ping)
            assert (await stream.read()).kind == pb.MX_COMMAND_KIND_PING
        sim.faults.replace(FaultPlan(rpc={"OpenSession": RpcFault(delay_s=0.0)}))
        await stream.write(ping)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert err.value.details() == STREAM_OFF
    finally:
        stream.cancel()
    assert server_batches[1:] == _batched([SEND_AND_READ] * 2)  # the refused ping: in a batch


async def test_a_client_that_cancels_a_batched_stream_leaves_no_server_task(
    gw: Gw, server_batches: list[tuple[str, ...]]
) -> None:
    sid = await gw.open()
    ping = pb.MxCommandRequest(session_id=sid, command=command("ping"))
    before = len(asyncio.all_tasks())
    stream = gw.stub.InvokeStream(metadata=gw.md)
    for _ in range(3):
        await stream.write(ping)
        assert (await stream.read()).kind == pb.MX_COMMAND_KIND_PING
    assert server_batches[-1:] == _batched([SEND_AND_READ])  # the handler waits in a batch
    stream.cancel()
    await wait_for(lambda: len(asyncio.all_tasks()) <= before, timeout=10)
    assert await gw.stub.Invoke(ping, metadata=gw.md)  # the gateway serves on


async def test_a_request_over_the_message_limit_on_a_batched_stream_ends_it_so(
    gw: Gw, server_batches: list[tuple[str, ...]]
) -> None:
    # gRPC core refuses a message over the server's limit in the batch that reads it: the
    # stream ends RESOURCE_EXHAUSTED, as when grpc.aio read it, and the gateway serves on.
    sid = await gw.open()
    ping = pb.MxCommandRequest(session_id=sid, command=command("ping"))
    huge = pb.MxCommandRequest(session_id=sid, command=command("ping"))
    huge.client_correlation_id = "x" * (DEFAULT_MAX_MESSAGE_BYTES + 1024)
    stream = gw.stub.InvokeStream(metadata=gw.md)
    try:
        for _ in range(2):
            await stream.write(ping)
            assert (await stream.read()).kind == pb.MX_COMMAND_KIND_PING
        await stream.write(huge)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        stream.cancel()
    assert server_batches[-1:] == _batched([SEND_AND_READ])  # the huge request's read: a batch
    assert await gw.stub.Invoke(ping, metadata=gw.md)
