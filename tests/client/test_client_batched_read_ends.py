"""A read in flight in one gRPC batch on the command stream (``_cmdstream._exchange``) that
ends by its deadline, by a cancel or by ``close()``: it raises as a read on ``Invoke``
would, is never sent again through ``Invoke`` (it ran, or may have), and leaves no task
or stream behind. The gateway is a plain threaded ``grpc.server`` that holds the stream's
second command until released."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import pytest
from stream_gateways import PING, WRITE, RecordingGateway, ok_reply, threaded_gateway

from mxgateway import ClientClosedError, GatewayClient, MxGatewayTimeoutError
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from support import wait_for


class _HoldingGateway(RecordingGateway):
    """Answers every command OK; holds each stream's second command until ``release`` is
    set (or the call ends). Records what each carriage carried and each stream's end."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = threading.Semaphore(0)
        self.release = threading.Event()

    def InvokeStream(self, request_iterator: Any, context: Any) -> Any:
        ended = threading.Event()
        context.add_callback(ended.set)
        context.add_callback(self.ended.release)
        for i, request in enumerate(request_iterator):
            self.streamed.append(request.command.kind)
            if i == 1:
                while not (self.release.is_set() or ended.is_set()):
                    self.release.wait(0.05)
                if ended.is_set():
                    return
            yield ok_reply(request)


async def _ends(how: str) -> _HoldingGateway:
    gateway = _HoldingGateway()
    with threaded_gateway(gateway) as options:
        try:
            options = dataclasses.replace(options, timeout=30)
            client = await GatewayClient.connect(options=options)
            try:
                await client.invoke("s", PING)  # the stream answered: the next read batches
                before = asyncio.all_tasks()
                if how == "deadline":
                    with pytest.raises(MxGatewayTimeoutError):
                        await client.invoke("s", PING, timeout=0.3)
                else:
                    task = asyncio.create_task(client.invoke("s", PING))
                    await wait_for(lambda: len(gateway.streamed) == 2)  # at the gateway
                    if how == "cancel":
                        task.cancel()
                        with pytest.raises(asyncio.CancelledError):
                            await task
                    else:
                        await client.close()
                        with pytest.raises(ClientClosedError):
                            await task
                # The stream of the read ended at the gateway; no task of it is left.
                assert await asyncio.to_thread(gateway.ended.acquire, True, 20)
                assert asyncio.all_tasks() <= before
                if how != "close":
                    assert (await client.invoke("s", PING)).kind == pb.MX_COMMAND_KIND_PING
            finally:
                await client.close()
        finally:
            gateway.release.set()
    return gateway


@pytest.mark.parametrize("how", ["deadline", "cancel", "close"])
async def test_a_batched_read_that_ends_in_flight_is_not_sent_again(how: str) -> None:
    gateway = await _ends(how)
    assert gateway.invoked == []  # never sent again through Invoke
    ping = pb.MX_COMMAND_KIND_PING
    assert gateway.streamed == ([ping] * 2 if how == "close" else [ping] * 3)


async def test_a_write_in_flight_on_the_stream_at_close_is_client_closed_as_on_invoke() -> None:
    # A write goes out, then its reply is read (no batch, whatever the grpcio): close()
    # cancels the stream under it, and grpc.aio raises CancelledError in the writer's task,
    # which nobody cancelled. As on Invoke it is ClientClosedError (with batches off,
    # MXGATEWAY_GRPC_BATCH=0, every command takes this path).
    gateway = _HoldingGateway()
    with threaded_gateway(gateway) as options:
        try:
            client = await GatewayClient.connect(options=dataclasses.replace(options, timeout=30))
            try:
                await client.invoke("s", PING)
                task = asyncio.create_task(client.invoke("s", WRITE))
                await wait_for(lambda: len(gateway.streamed) == 2)  # at the gateway
                await client.close()
                with pytest.raises(ClientClosedError):
                    await task
                assert await asyncio.to_thread(gateway.ended.acquire, True, 20)
            finally:
                await client.close()
        finally:
            gateway.release.set()
    assert gateway.invoked == []
    assert gateway.streamed == [pb.MX_COMMAND_KIND_PING, pb.MX_COMMAND_KIND_WRITE]
