"""The one place the benchmarks touch the client library and the simulator's API.

Everything here adapts to what has landed: when ``mxgateway.GatewayClient`` (or a method)
is missing, the adapters say so and the benchmark reports the figure as skipped.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

import mxgateway
from bench._common import API_KEY, METADATA
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pb_grpc

_names = itertools.count()


def client_class() -> Any:
    """``mxgateway.GatewayClient`` or None."""
    return getattr(mxgateway, "GatewayClient", None)


def missing_reason() -> str:
    """Why the library modes cannot run, or '' when they can."""
    cls = client_class()
    if cls is None:
        return "mxgateway.GatewayClient has not landed yet"
    for name in ("connect", "open_session", "stream_events_raw", "stream_event_batches_raw"):
        if not hasattr(cls, name):
            return f"GatewayClient.{name} has not landed yet"
    return ""


@dataclass
class Lib:
    """A connected library client and one open session."""

    client: Any
    session: Any


@contextlib.asynccontextmanager
async def library_session(
    address: str, *, command_stream: bool = False
) -> AsyncIterator[Lib | None]:
    """A library client + session on ``address`` (None when the library is not there).

    Both are closed on exit; the channel is the library's own (keepalive and all).
    Commands go through one unary ``Invoke`` each unless ``command_stream`` (the
    library's default, ``InvokeStream``): the benches that compare the library with a
    bare ``Invoke`` stub, or swap the stub's ``Invoke``, measure that path.
    """
    if missing_reason():
        yield None
        return
    options = mxgateway.ClientOptions(
        endpoint=address,
        api_key=API_KEY,
        plaintext=True,
        timeout=60,
        command_stream=command_stream,
    )
    client = await client_class().connect(options=options)
    try:
        session = await client.open_session("bench")
        try:
            yield Lib(client, session)
        finally:
            with contextlib.suppress(Exception):
                await session.close()
    finally:
        await client.close()


def session_channel(lib: Lib) -> grpc.aio.Channel:
    """The library's channel (the bare stub runs on the same one)."""
    channel: grpc.aio.Channel = lib.client.transport.channel
    return channel


def session_id(lib: Lib) -> str:
    """The library session's id."""
    return str(lib.session.session_id)


# -- unary --------------------------------------------------------------------------------


def unary_calls(lib: Lib) -> dict[str, Callable[[int], Awaitable[int]]]:
    """REGISTER through ``Session.invoke_raw`` and through ``Session.register``."""
    session = lib.session

    async def invoke_raw(i: int) -> int:
        cmd = pb.MxCommand(kind=pb.MX_COMMAND_KIND_REGISTER)
        cmd.register.client_name = f"bench-raw-{next(_names)}"
        reply = await session.invoke_raw(cmd)
        return int(reply.register.server_handle)

    async def helper(i: int) -> int:
        return int(await session.register(f"bench-helper-{next(_names)}"))

    return {"invoke_raw": invoke_raw, "helper_register": helper}


async def bare_open_session(channel: grpc.aio.Channel) -> str:
    """OpenSession with the generated stub (when the library is missing)."""
    stub = pb_grpc.MxAccessGatewayStub(channel)
    reply = await stub.OpenSession(
        pb.OpenSessionRequest(client_session_name="bench"), metadata=METADATA, timeout=30
    )
    return str(reply.session_id)


# -- events -------------------------------------------------------------------------------


async def stream_events_raw(ctx: Any, n: int) -> int:
    """``GatewayClient.stream_events_raw``: count ``n`` sequenced events."""
    stream = ctx.lib.client.stream_events_raw(ctx.session_id)
    count = 0
    try:
        async for ev in stream:
            if ev.worker_sequence:
                count += 1
                if count >= n:
                    break
    except mxgateway.MxGatewayError as exc:
        if not ctx.overflowed(exc):
            raise
    finally:
        await stream.aclose()
    return count


async def stream_event_batches_raw(ctx: Any, n: int) -> int:
    """``GatewayClient.stream_event_batches_raw``: count ``n`` sequenced events."""
    stream = ctx.lib.client.stream_event_batches_raw(ctx.session_id)
    count = 0
    try:
        async for batch in stream:
            for ev in batch.events:
                if ev.worker_sequence:
                    count += 1
            if count >= n:
                break
    except mxgateway.MxGatewayError as exc:
        if not ctx.overflowed(exc):
            raise
    finally:
        await stream.aclose()
    return count


async def typed_events(ctx: Any, n: int) -> int:
    """``Session.events()``: count ``n`` typed ``DataChange`` events.

    The typed stream resumes by itself after a disconnect; its resumes and the events its
    ``EventGap`` notices say were lost are added to the context's counters.
    """
    data_change = mxgateway.DataChange
    stream = ctx.lib.session.events(new_only=True)  # live throughput, not the replay
    count = 0
    try:
        async for ev in stream:
            if type(ev) is data_change:
                count += 1
                if count >= n:
                    break
    finally:
        await stream.aclose()
        ctx.disconnects += int(getattr(stream, "resume_count", 0))
        ctx.gaps += int(getattr(stream, "missed_events", 0))
    return count


async def typed_events_read_fields(ctx: Any, n: int) -> int:
    """``Session.events()`` reading every documented ``DataChange`` field of each event.

    The typed events decode some fields lazily (the timestamp on first access), so this is
    what a consumer that uses the events really pays.
    """
    data_change = mxgateway.DataChange
    stream = ctx.lib.session.events(new_only=True)  # live throughput, not the replay
    count = 0
    sink: list[Any] = [None]
    try:
        async for ev in stream:
            if type(ev) is data_change:
                sink[0] = (ev.worker_sequence, ev.item_handle, ev.value, ev.quality, ev.timestamp)
                count += 1
                if count >= n:
                    break
    finally:
        await stream.aclose()
        ctx.disconnects += int(getattr(stream, "resume_count", 0))
        ctx.gaps += int(getattr(stream, "missed_events", 0))
    return count


def event_modes() -> tuple[dict[str, Callable[[Any, int], Awaitable[int]]], str]:
    """The library's event modes, or ({}, why-not)."""
    why = missing_reason()
    if why:
        return {}, why
    modes: dict[str, Callable[[Any, int], Awaitable[int]]] = {
        "stream_events_raw": stream_events_raw,
        "stream_event_batches_raw": stream_event_batches_raw,
    }
    if hasattr(getattr(mxgateway, "Session", None), "events") and hasattr(mxgateway, "DataChange"):
        modes["typed_events"] = typed_events
        modes["typed_events_read_fields"] = typed_events_read_fields
    return modes, ""


# -- simulator ----------------------------------------------------------------------------


async def bulk_ops(address: str, tags: list[str]) -> tuple[Any, str]:
    """An async context manager yielding (BulkOps, handles) for the library, or (None, why)."""
    why = missing_reason()
    if why:
        return None, why
    return _lib_bulk(address, tags), ""


@contextlib.asynccontextmanager
async def _lib_bulk(address: str, tags: list[str]) -> AsyncIterator[tuple[Any, list[int]]]:
    from bench.bulk import BulkOps

    async with library_session(address) as lib:
        assert lib is not None
        session = lib.session
        hlmx = await session.register("bench-bulk-lib")
        rows = await session.subscribe_bulk(hlmx, tags)
        handles = [r.item_handle for r in rows]

        async def read_bulk(t: Any) -> int:
            return sum(1 for r in await session.read_bulk(hlmx, t) if r.was_successful)

        async def write_bulk(h: Any, v: Any) -> int:
            res = await session.write_bulk(hlmx, zip(h, v, strict=True))
            return sum(1 for r in res if r.was_successful)

        async def read_one(tag: str) -> int:
            return len(await session.read_bulk(hlmx, (tag,)))

        async def write_one(h: int, v: object) -> None:
            await session.write(hlmx, h, v)

        yield BulkOps(read_bulk, write_bulk, read_one, write_one), handles
