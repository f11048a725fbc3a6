"""The gRPC seam: API key metadata, deadlines, error mapping, stream closing, cancellation."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import grpc
import pytest
from client_fakes import SESSION_ID, FakeServer, StreamAbort, data_change

from mxgateway import (
    ClientClosedError,
    ClientOptions,
    GatewayClient,
    MxGatewayAuthenticationError,
    MxGatewaySessionNotFoundError,
    MxGatewayTimeoutError,
    MxGatewayUnavailableError,
)
from mxgateway._transport import Transport
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pbg
from support import unused_port, wait_for

KEY = "mxgw_k1_transportSecret0123456789"


def _opts(endpoint: str, **kw: object) -> ClientOptions:
    return ClientOptions(endpoint=endpoint, plaintext=True, api_key=KEY, **kw)  # type: ignore[arg-type]


async def test_api_key_and_extra_metadata_on_unary_and_stream(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield data_change(1)

    fake.servicer.events_plan = plan
    opts = _opts(fake.endpoint, metadata=(("x-client", "tests"),))
    async with await Transport.open(opts) as t:
        stub = pbg.MxAccessGatewayStub(t.channel)
        await t.unary(stub.OpenSession, pb.OpenSessionRequest(client_session_name="a"))
        stream = t.stream(stub.StreamEvents, pb.StreamEventsRequest(session_id=SESSION_ID))
        events = [ev async for ev in stream]
        assert [e.worker_sequence for e in events] == [1]
    for method in ("OpenSession", "StreamEvents"):
        (md,) = fake.servicer.rec.metadata[method]
        assert md["authorization"] == f"Bearer {KEY}"
        assert md["x-client"] == "tests"


async def test_no_api_key_sends_no_authorization(fake: FakeServer) -> None:
    opts = ClientOptions(endpoint=fake.endpoint, plaintext=True)
    async with await Transport.open(opts) as t:
        stub = pbg.MxAccessGatewayStub(t.channel)
        await t.unary(stub.OpenSession, pb.OpenSessionRequest())
    (md,) = fake.servicer.rec.metadata["OpenSession"]
    assert "authorization" not in md


async def test_unary_error_is_mapped_and_chained(fake: FakeServer) -> None:
    fake.servicer.abort["OpenSession"] = (grpc.StatusCode.UNAUTHENTICATED, f"bad key {KEY}")
    async with await Transport.open(_opts(fake.endpoint)) as t:
        stub = pbg.MxAccessGatewayStub(t.channel)
        with pytest.raises(MxGatewayAuthenticationError) as info:
            await t.unary(stub.OpenSession, pb.OpenSessionRequest())
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
    assert KEY not in str(info.value)
    assert "OpenSession" in str(info.value)


async def test_stream_error_is_mapped_inside_iteration(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield data_change(1)
        yield StreamAbort(grpc.StatusCode.NOT_FOUND, "unknown session")

    fake.servicer.events_plan = plan
    async with await Transport.open(_opts(fake.endpoint)) as t:
        stub = pbg.MxAccessGatewayStub(t.channel)
        stream = t.stream(
            stub.StreamEvents, pb.StreamEventsRequest(session_id=SESSION_ID), session_id=SESSION_ID
        )
        first = await stream.__anext__()
        assert first.worker_sequence == 1
        with pytest.raises(MxGatewaySessionNotFoundError) as info:
            await stream.__anext__()
        assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
        assert stream.done
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()


async def test_default_deadline_applies(fake: FakeServer) -> None:
    fake.servicer.hang.add("OpenSession")
    async with await Transport.open(_opts(fake.endpoint, timeout=0.2)) as t:
        stub = pbg.MxAccessGatewayStub(t.channel)
        with pytest.raises(MxGatewayTimeoutError):
            await t.unary(stub.OpenSession, pb.OpenSessionRequest())
        await wait_for(lambda: fake.servicer.rec.cancelled.get("OpenSession"))


async def test_cancelling_a_unary_call_cancels_it_on_the_server(fake: FakeServer) -> None:
    fake.servicer.hang.add("OpenSession")
    async with await Transport.open(_opts(fake.endpoint, timeout=None)) as t:
        stub = pbg.MxAccessGatewayStub(t.channel)
        task = asyncio.ensure_future(t.unary(stub.OpenSession, pb.OpenSessionRequest()))
        await asyncio.wait_for(fake.servicer.rec.started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(fake.servicer.rec.cancel_event.wait(), 5)
    assert fake.servicer.rec.cancelled["OpenSession"] == 1


@pytest.mark.parametrize("how", ["aclose", "break", "cancel-task", "context"])
async def test_stream_is_cancelled_on_the_server(fake: FakeServer, how: str) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield data_change(1)
        await asyncio.Event().wait()

    fake.servicer.events_plan = plan
    async with await Transport.open(_opts(fake.endpoint)) as t:
        stub = pbg.MxAccessGatewayStub(t.channel)
        req = pb.StreamEventsRequest(session_id=SESSION_ID)
        if how == "aclose":
            stream = t.stream(stub.StreamEvents, req)
            await stream.__anext__()
            await stream.aclose()
            assert stream.done
        elif how == "break":

            async def consume() -> None:
                async for _ in t.stream(stub.StreamEvents, req):
                    break

            await consume()
            gc.collect()
        elif how == "context":
            async with t.stream(stub.StreamEvents, req) as stream:
                await stream.__anext__()
        else:
            stream = t.stream(stub.StreamEvents, req)

            async def read_all() -> None:
                async for _ in stream:
                    pass

            task = asyncio.ensure_future(read_all())
            await wait_for(lambda: fake.servicer.attempts.get("StreamEvents"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.wait_for(fake.servicer.rec.cancel_event.wait(), 5)
    assert fake.servicer.rec.cancelled["StreamEvents"] == 1


async def test_use_after_close_is_a_clear_error(fake: FakeServer) -> None:
    t = await Transport.open(_opts(fake.endpoint))
    stub = pbg.MxAccessGatewayStub(t.channel)
    await t.close()
    await t.close()  # idempotent
    assert t.closed
    with pytest.raises(ClientClosedError, match="closed"):
        await t.unary(stub.OpenSession, pb.OpenSessionRequest())
    with pytest.raises(ClientClosedError):
        t.stream(stub.StreamEvents, pb.StreamEventsRequest())
    with pytest.raises(ClientClosedError):
        _ = t.channel


async def test_connect_to_nothing_fails_fast_as_unavailable() -> None:
    port = unused_port()
    with pytest.raises(MxGatewayUnavailableError) as info:
        await Transport.open(_opts(f"127.0.0.1:{port}", connect_timeout=30.0, connect_wait=0))
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "retried" not in str(info.value)
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)


async def test_a_refusing_gateway_is_retried_then_unavailable_with_the_reason() -> None:
    port = unused_port()
    with pytest.raises(MxGatewayUnavailableError) as info:
        await Transport.open(_opts(f"127.0.0.1:{port}", connect_timeout=30.0, connect_wait=0.5))
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "retried for" in message
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
    assert info.value.__cause__.code() is grpc.StatusCode.UNAVAILABLE


async def test_connecting_waits_for_a_gateway_that_starts_a_moment_later() -> None:
    # The README's sequence: `mxgw-sim serve ... &`, then at once a client command.
    from mxgateway_sim import GatewaySimulator, builtin_catalog

    port = unused_port()
    connecting = asyncio.ensure_future(Transport.open(_opts(f"127.0.0.1:{port}")))
    await asyncio.sleep(0.6)
    assert not connecting.done()  # still waiting, not refused
    async with GatewaySimulator(port=port, catalog=builtin_catalog(), api_keys=[KEY]):
        transport = await asyncio.wait_for(connecting, 10)
        async with transport:
            stub = pbg.MxAccessGatewayStub(transport.channel)
            reply = await transport.unary(stub.OpenSession, pb.OpenSessionRequest())
            assert reply.session_id


async def test_repr_hides_the_key(fake: FakeServer) -> None:
    async with await Transport.open(_opts(fake.endpoint)) as t:
        assert KEY not in repr(t)
        assert fake.endpoint in repr(t)


async def test_closing_under_a_running_unary_call_is_client_closed(fake: FakeServer) -> None:
    fake.servicer.hang.add("OpenSession")
    t = await Transport.open(_opts(fake.endpoint, timeout=None))
    stub = pbg.MxAccessGatewayStub(t.channel)
    task = asyncio.ensure_future(t.unary(stub.OpenSession, pb.OpenSessionRequest()))
    await asyncio.wait_for(fake.servicer.rec.started.wait(), 5)
    await t.close()
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(task, 5)
    assert not task.cancelled()


async def test_aclose_from_another_task_ends_the_reader_cleanly(fake: FakeServer) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        yield data_change(1)
        await asyncio.Event().wait()

    fake.servicer.events_plan = plan
    async with await Transport.open(_opts(fake.endpoint)) as t:
        stub = pbg.MxAccessGatewayStub(t.channel)
        stream = t.stream(stub.StreamEvents, pb.StreamEventsRequest(session_id=SESSION_ID))

        reads_started = 0

        async def read_all() -> int:
            nonlocal reads_started
            count = 0
            while True:
                reads_started += 1
                try:
                    await stream.__anext__()
                except StopAsyncIteration:
                    return count
                count += 1

        reader = asyncio.ensure_future(read_all())
        # This task runs again only once the reader is suspended: in its second read, it is
        # blocked on the next message (no sleep guessing how long that takes).
        await wait_for(lambda: reads_started == 2)
        await stream.aclose()
        assert await asyncio.wait_for(reader, 5) == 1
        await asyncio.wait_for(fake.servicer.rec.cancel_event.wait(), 5)


async def test_a_pause_cut_short_leaves_no_grpc_completion_for_its_closed_loop(
    fake: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A reconnect pause on a channel that cannot connect ends at its delay. It used to
    # watch the channel's state: the watch, cut short, stayed pending inside gRPC, the
    # channel's close completed it after the loop had closed, and the loop running gRPC
    # next (this test's, as the next test's in a suite) logged "Exception in callback
    # PollerCompletionQueue._handle_events" with "Event loop is closed" (grpc/grpc#34139).
    # Each pause runs on a loop of its own, in a thread.
    endpoint = f"127.0.0.1:{unused_port()}"

    async def pause_then_close() -> None:
        transport = Transport(_opts(endpoint, connect_timeout=None))
        try:
            await transport.pause(0.1)
        finally:
            await transport.close()

    async with grpc.aio.insecure_channel(fake.endpoint) as channel:
        await channel.channel_ready()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(10):
                await asyncio.to_thread(asyncio.run, pause_then_close())
                await asyncio.sleep(0.01)  # a moment for a stray completion to arrive
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


async def test_a_client_dropped_without_closing_warns(fake: FakeServer) -> None:
    client = await GatewayClient.connect(options=_opts(fake.endpoint))
    transport = client.transport
    try:
        with pytest.warns(ResourceWarning, match=r"unclosed <GatewayClient 127\.0\.0\.1:\d+ open>"):
            del client
            gc.collect()
    finally:
        await transport.close()
    async with await GatewayClient.connect(options=_opts(fake.endpoint)) as closed:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del closed
        gc.collect()
