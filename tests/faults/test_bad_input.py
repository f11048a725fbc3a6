"""Bad input: each gets a clear error, and nothing is corrupted (the session keeps working)."""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from faulthelpers import DEADLINE, Raw, connect
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxgateway import (
    GatewayClient,
    MxAccessError,
    MxGatewayNotFoundError,
    MxGatewaySessionNotFoundError,
    Session,
    from_mx_value,
    to_mx_value,
)
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator

E_INVALIDARG = -2147024809
OK = pb.PROTOCOL_STATUS_CODE_OK
INVALID = pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST


async def _setpoint(session: Session) -> tuple[int, int]:
    """A registration and an advised, writeable Double item."""
    h = await session.register("bad-input")
    item = await session.add_item(h, "Tank01.LevelSetpoint")
    await session.advise(h, item)
    return h, item


async def _still_healthy(session: Session, h: int, item: int) -> None:
    """Nothing corrupted: the session answers, the item reads, a good write still works."""
    await session.ping()
    assert await session.get_session_state() == pb.SESSION_STATE_READY
    await session.write(h, item, 12.5)
    rows = await session.read_bulk(h, ["Tank01.LevelSetpoint"])
    assert rows[0].was_successful


async def test_malformed_references(sim: GatewaySimulator) -> None:
    async with await connect(sim) as client, await client.open_session() as session:
        h, item = await _setpoint(session)
        for ref in ["", " ", "Tank01..Level", "Tank01.Level[0]", "Me.Level", "A" * 400, "a b.c"]:
            with pytest.raises(MxAccessError) as raised:
                await session.add_item(h, ref)
            assert raised.value.hresult == E_INVALIDARG, ref
        # Empty and huge strings elsewhere: a 1 MiB client name is just a name.
        assert await session.register("") > 0
        assert await session.register("n" * (1 << 20)) > 0
        rows = await session.read_bulk(h, ["", "x" * 100_000])
        assert [r.was_successful for r in rows] == [False, False]
        assert all(r.error_message for r in rows)
        await _still_healthy(session, h, item)


async def test_unknown_handles(sim: GatewaySimulator) -> None:
    async with await connect(sim) as client, await client.open_session() as session:
        h, item = await _setpoint(session)
        calls = [
            session.advise(h, 9999),
            session.unadvise(h, 9999),
            session.remove_item(h, 9999),
            session.write(h, 9999, 1.0),
            session.add_item(777, "Tank01.Level"),
            session.unregister(777),
            session.advise(777, item),
        ]
        for call in calls:
            with pytest.raises(MxAccessError) as raised:
                await call
            assert raised.value.hresult == E_INVALIDARG
            assert "unknown" in str(raised.value)
        rows = await session.advise_item_bulk(h, [item, 9999, -1])
        assert [r.was_successful for r in rows] == [True, False, False]
        await _still_healthy(session, h, item)


async def test_wrong_session_ids(sim: GatewaySimulator, raw: Raw) -> None:
    async with await connect(sim) as client:
        with pytest.raises(ValueError, match="session_id"):
            client.attach_session("")  # refused before anything is sent
        for sid in ["session-" + "0" * 32, "nonsense", "x" * 10_000, "session-\u00e9\u0000"]:
            with pytest.raises(MxGatewaySessionNotFoundError):
                await client.attach_session(sid).ping()
            with pytest.raises(MxGatewayNotFoundError):
                await client.close_session(sid)
            with pytest.raises(MxGatewayNotFoundError):
                async for _ in client.stream_events_raw(sid):
                    pass
    # The raw reply of Invoke names the problem in protocol_status, not a gRPC error.
    for sid in ["", "session-" + "f" * 32]:
        reply = await raw.invoke(sid, "ping")
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND
        assert reply.protocol_status.message


async def test_oversized_bulk_request_is_split_by_the_client(sim: GatewaySimulator) -> None:
    async with await connect(sim) as client, await client.open_session() as session:
        h, item = await _setpoint(session)
        refs = [f"{'A' * 240}.{i}" for i in range(70_000)]  # ~17 MiB, over the 16 MiB limit
        # The client splits the call into requests that fit; one row per reference, in order.
        results = await session.add_item_bulk(h, refs)
        assert [r.tag_address for r in results] == refs
        assert sim.sessions is not None
        assert len(sim.sessions.sessions()) == 1
        await _still_healthy(session, h, item)
    # A peer configured to send more than 16 MiB: the server refuses the message and lives.
    big = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(sim.endpoint, options=big) as channel:
        raw = Raw(channel, sim.api_key)
        sid = await raw.open()
        with pytest.raises(grpc.aio.AioRpcError) as rpc_error:
            await raw.invoke(sid, "add_item_bulk", server_handle=1, tag_addresses=refs)
        assert rpc_error.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await raw.ok(sid, "ping")


async def test_non_finite_out_of_range_and_wrong_type_values(sim: GatewaySimulator) -> None:
    async with await connect(sim) as client, await client.open_session() as session:
        h, item = await _setpoint(session)
        counter = await session.add_item(h, "Line01.BatchCount")  # Integer, writeable
        ratio = await session.add_item(h, "Line01.Ratio")  # Float
        await session.advise(h, counter)
        await session.advise(h, ratio)
        # The client refuses before sending.
        for bad in [math.nan, math.inf, -math.inf, object(), [1, "a"], [[1]], 2**64]:
            with pytest.raises(ValueError):
                await session.write(h, item, bad)
        with pytest.raises(ValueError):
            await session.write(h, counter, datetime(2025, 1, 1))  # naive
        # A peer that sends them anyway: accepted, refused in the OnWriteComplete (the
        # status names the problem).
        for value in [pb.MxValue(double_value=math.nan), pb.MxValue(double_value=-math.inf)]:
            with pytest.raises(MxAccessError) as refused:
                await session.write(h, item, value, wait=True)
            assert refused.value.completion is not None
            assert "finite" in str(refused.value)
        # Out of range and wrong types: the documented MXAccess details.
        cases: list[tuple[int, Any, int]] = [
            (counter, 2**40, 20),
            (ratio, 1e39, 20),
            (counter, "abc", 19),
            (counter, datetime(2025, 1, 1, tzinfo=timezone.utc), 18),
            (counter, b"\x00\x01", 18),
            (counter, [1, 2], 1005),
        ]
        for handle, value, detail in cases:
            # Accepted (a plain OK, as upstream); refused in the OnWriteComplete.
            with pytest.raises(MxAccessError) as raised:
                await session.write(h, handle, value, wait=True)
            assert raised.value.completion is not None
            assert [s.detail for s in raised.value.statuses] == [detail], value
        await session.write(h, counter, "42")  # convertible: accepted
        await session.write(h, ratio, timedelta(seconds=0).total_seconds())
        await _still_healthy(session, h, item)


async def test_garbage_bytes_on_the_grpc_port(sim: GatewaySimulator, raw: Raw) -> None:
    host, _, port = sim.endpoint.rpartition(":")
    rng = random.Random(1)
    payloads = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(rng.randrange(256) for _ in range(4096)),
        bytes(rng.randrange(256) for _ in range(65536)),
        b"\x00" * 9,
        os.urandom(1),
    ]

    def blast(data: bytes) -> None:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(data)
            s.settimeout(2)
            try:
                while s.recv(65536):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass

    for data in payloads:
        await asyncio.to_thread(blast, data)
    sid = await raw.open()
    await raw.ok(sid, "ping")


async def test_unknown_command_kinds_and_mismatched_payloads(raw: Raw) -> None:
    sid = await raw.open()
    commands = [
        pb.MxCommand(kind=999),  # out-of-range enum number, no payload
        pb.MxCommand(kind=999, ping=pb.PingCommand()),
        pb.MxCommand(),  # UNSPECIFIED, empty
        pb.MxCommand(kind=pb.MX_COMMAND_KIND_WRITE),  # no payload
        pb.MxCommand(kind=pb.MX_COMMAND_KIND_WRITE, register=pb.RegisterCommand()),
        pb.MxCommand(kind=-5, ping=pb.PingCommand()),
    ]
    for cmd in commands:
        reply = await raw.stub.Invoke(
            pb.MxCommandRequest(session_id=sid, command=cmd), metadata=raw.md
        )
        assert reply.protocol_status.code == INVALID, cmd
        assert reply.protocol_status.message
    reply = await raw.stub.Invoke(pb.MxCommandRequest(session_id=sid), metadata=raw.md)
    assert reply.protocol_status.code == INVALID
    await raw.ok(sid, "ping")


async def test_timestamps_no_datetime_can_hold_are_invalid_requests(raw: Raw) -> None:
    """Found by the command fuzzer: a year-0 Write2 timestamp crashed the handler."""
    sid = await raw.open()
    await raw.ok(sid, "register", client_name="t")
    item = await raw.ok(sid, "add_item", server_handle=1, item_definition="Tank01.LevelSetpoint")
    handle = item.add_item.item_handle
    await raw.ok(sid, "advise", server_handle=1, item_handle=handle)
    for seconds in (-62_135_596_801, 253_402_300_800):  # 0000-12-31 and 10000-01-01
        reply = await raw.invoke(
            sid,
            "write2",
            server_handle=1,
            item_handle=handle,
            value=to_mx_value(1.0),
            timestamp_value=Timestamp(seconds=seconds),
        )
        assert reply.protocol_status.code == INVALID, reply
        assert "out of range" in reply.protocol_status.message
    await raw.ok(sid, "ping")


# -- property-based -------------------------------------------------------------------------

_int32 = st.integers(-(2**31), 2**31 - 1)
_int64 = st.integers(-(2**63), 2**63 - 1)
_double = st.floats(allow_nan=False, allow_infinity=False)
_text = st.text(max_size=200)
_when = st.datetimes(
    min_value=datetime(1601, 1, 2),
    max_value=datetime(9998, 12, 31),
    timezones=st.just(timezone.utc),
)
_elapsed = st.timedeltas(min_value=timedelta(days=-10_000), max_value=timedelta(days=10_000))
_scalar = st.one_of(st.booleans(), _int64, _double, _text, _when, _elapsed, st.binary(max_size=64))
_array = st.one_of(
    st.lists(st.booleans(), min_size=1, max_size=20),
    st.lists(_int32, min_size=1, max_size=20),
    st.lists(_double, min_size=1, max_size=20),
    st.lists(_text, min_size=1, max_size=20),
    st.lists(_when, min_size=1, max_size=20),
    st.lists(_elapsed, min_size=1, max_size=20),
)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.none(), _scalar, _array))
@pytest.mark.slow
def test_value_round_trip(value: Any) -> None:
    mx = to_mx_value(value)
    wire = pb.MxValue.FromString(mx.SerializeToString())
    back = from_mx_value(wire)
    if isinstance(value, float) and value == 0.0:
        assert back == 0.0 and math.copysign(1, back) == math.copysign(1, value)  # type: ignore[arg-type]
    else:
        assert back == value
    assert type(back) is type(value) or (value is None and back is None)


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers()))
def test_value_conversion_rejects_what_mxaccess_cannot_hold(value: float | int) -> None:
    finite = isinstance(value, int) or math.isfinite(value)
    in_range = not isinstance(value, int) or -(2**63) <= value < 2**63
    if finite and in_range:
        assert from_mx_value(to_mx_value(value)) == value
    else:
        with pytest.raises(ValueError):
            to_mx_value(value)


_PAYLOADS = [f.name for f in pb.MxCommand.DESCRIPTOR.oneofs_by_name["payload"].fields]


def _fill(message: Any, data: st.DataObject, depth: int = 0) -> None:
    """Random scalars (and a few nested messages) in every field of ``message``."""
    fd = message.DESCRIPTOR
    for field in fd.fields:
        if data.draw(st.booleans()):
            continue
        name = field.name
        t = field.type
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == 3
        if t == field.TYPE_MESSAGE:
            if depth < 2 and not repeated:
                _fill(getattr(message, name), data, depth + 1)
            elif depth < 2:
                for _ in range(data.draw(st.integers(0, 3))):
                    _fill(getattr(message, name).add(), data, depth + 1)
            continue
        if t == field.TYPE_STRING:
            strategy: Any = st.text(max_size=50)
        elif t == field.TYPE_BOOL:
            strategy = st.booleans()
        elif t in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
            strategy = st.floats(width=32) if t == field.TYPE_FLOAT else st.floats()
        elif t == field.TYPE_BYTES:
            strategy = st.binary(max_size=32)
        elif t == field.TYPE_ENUM:
            strategy = st.integers(-3, 40)
        elif t in (field.TYPE_INT64, field.TYPE_SINT64, field.TYPE_SFIXED64):
            strategy = st.integers(-(2**63), 2**63 - 1)
        elif t in (field.TYPE_UINT32, field.TYPE_FIXED32):
            strategy = st.integers(0, 2**32 - 1)
        elif t in (field.TYPE_UINT64, field.TYPE_FIXED64):
            strategy = st.integers(0, 2**64 - 1)
        else:
            strategy = st.integers(-5, 5) | st.integers(-(2**31), 2**31 - 1)
        try:
            if repeated:
                getattr(message, name).extend(data.draw(st.lists(strategy, max_size=4)))
            else:
                setattr(message, name, data.draw(strategy))
        except (TypeError, ValueError):  # e.g. a oneof member that is a message in disguise
            pass


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_random_commands_never_crash_the_server(
    sim: GatewaySimulator, raw: Raw, data: st.DataObject
) -> None:
    sid = await raw.open()
    try:
        await raw.ok(sid, "register", client_name="fuzz")
        await raw.ok(sid, "add_item", server_handle=1, item_definition="Tank01.LevelSetpoint")
        for _ in range(data.draw(st.integers(1, 4))):
            kind = data.draw(st.integers(-2, 45) | st.sampled_from(list(pb.MxCommandKind.values())))
            cmd = pb.MxCommand(kind=kind)
            payload = data.draw(st.sampled_from([None, *_PAYLOADS]))
            if payload is not None and data.draw(st.booleans()):  # half: a well-formed kind
                kind = pb.MxCommandKind.Value("MX_COMMAND_KIND_" + payload.upper())
                cmd.kind = kind  # type: ignore[assignment]
            if payload is not None:
                getattr(cmd, payload).SetInParent()
                _fill(getattr(cmd, payload), data)
            request = pb.MxCommandRequest(session_id=sid, command=cmd)
            reply = await asyncio.wait_for(raw.stub.Invoke(request, metadata=raw.md), DEADLINE)
            code = reply.protocol_status.code
            assert code in pb.ProtocolStatusCode.values() and code != 0, reply
            assert reply.protocol_status.message
            if code == INVALID:
                continue
    finally:
        # A SHUTDOWN_WORKER or a crash closes the session; the server must still serve.
        ping = await raw.invoke(sid, "ping")
        assert ping.protocol_status.code in (
            OK,
            pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND,
            pb.PROTOCOL_STATUS_CODE_SESSION_NOT_READY,
        )
        with_id = await raw.open()
        await raw.ok(with_id, "ping")
        await raw.stub.CloseSession(pb.CloseSessionRequest(session_id=with_id), metadata=raw.md)
        try:
            await raw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=raw.md)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.NOT_FOUND


async def test_client_object_survives_bad_calls(sim: GatewaySimulator) -> None:
    """A GatewayClient that saw every kind of failure above is still usable."""
    async with await connect(sim) as client:
        assert isinstance(client, GatewayClient)
        with pytest.raises(MxGatewaySessionNotFoundError):
            await client.attach_session("nope").ping()
        async with await client.open_session() as session:
            await session.ping()
