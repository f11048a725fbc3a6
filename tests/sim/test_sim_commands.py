"""Every MXAccess command over real gRPC: handles, references, advise, writes, security."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import grpc
import pytest
from simhelpers import SCAN_MS, Gw, changes, command

from mxgateway._values import from_mx_value, timestamp_to_datetime, to_mx_value
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import (
    SCOPES,
    ApiKeyStore,
    GatewaySimulator,
    InMemoryCatalog,
    TagInfo,
    builtin_catalog,
    new_key,
)
from mxgateway_sim._builtin import tag

E_INVALIDARG = -2147024809
OK = pb.PROTOCOL_STATUS_CODE_OK
MXFAIL = pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE


async def test_register_and_item_handles_are_sequential(gw: Gw) -> None:
    sid = await gw.open()
    assert await gw.register(sid) == 1
    assert await gw.register(sid) == 2
    assert await gw.add(sid, 1, "Tank01.Level") == 1
    assert await gw.add(sid, 2, "Tank01.Level") == 2  # item handles are per session
    other = await gw.open()
    assert await gw.register(other) == 1


async def test_unknown_handles_fail_with_e_invalidarg(gw: Gw) -> None:
    sid = await gw.open()
    reply = await gw.invoke(sid, "add_item", server_handle=7, item_definition="Tank01.Level")
    assert reply.protocol_status.code == MXFAIL
    assert reply.hresult == E_INVALIDARG
    sh = await gw.register(sid)
    reply = await gw.invoke(sid, "advise", server_handle=sh, item_handle=99)
    assert (reply.protocol_status.code, reply.hresult) == (MXFAIL, E_INVALIDARG)
    reply = await gw.invoke(sid, "unregister", server_handle=sh + 1)
    assert reply.hresult == E_INVALIDARG


async def test_malformed_references_fail_add_item(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    for bad in ("", "Tank01..Level", "Tank 01.Level", "Tank01.Level[0]", "A" * 330, "Me.Level"):
        reply = await gw.invoke(sid, "add_item", server_handle=sh, item_definition=bad)
        assert reply.protocol_status.code == MXFAIL, bad
        assert reply.hresult == E_INVALIDARG, bad
        assert reply.diagnostic_message


async def test_unknown_reference_reports_configuration_error_on_advise(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    unknown_object = await gw.subscribe(sid, sh, "NoSuchObject.Level")
    unknown_attribute = await gw.subscribe(sid, sh, "Tank01.NoSuchAttribute")
    events = await gw.drain_until(
        sid,
        lambda ev: bool(changes(ev, unknown_object)) and bool(changes(ev, unknown_attribute)),
    )
    for ih, detail in ((unknown_object, 12), (unknown_attribute, 11)):
        (change,) = changes(events, ih)
        assert change.quality == 4
        (status,) = change.statuses
        assert status.success == 0
        assert status.category == pb.MX_STATUS_CATEGORY_CONFIGURATION_ERROR
        assert status.raw_category == 4
        assert status.detail == detail
        assert change.value.is_null


async def test_advise_delivers_current_value_then_changes_and_unadvise_stops(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    level = await gw.subscribe(sid, sh, "tank01.LEVEL")  # case-insensitive
    events = await gw.drain_until(sid, lambda ev: len(changes(ev, level)) >= 3)
    first = changes(events, level)[0]
    assert first.quality == 192
    assert first.value.data_type == pb.MX_DATA_TYPE_DOUBLE
    assert first.statuses[0].success == 1
    assert first.timestamp.seconds > 0
    await gw.ok(sid, "un_advise", server_handle=sh, item_handle=level)
    await gw.drain(sid)
    clock = await gw.subscribe(sid, sh, "Line01.Counter")  # changes every scan
    after = await gw.drain_until(sid, lambda ev: len(changes(ev, clock)) >= 4)
    assert changes(after, level) == []


async def test_arrays_whole_element_and_bare(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    whole = await gw.subscribe(sid, sh, "Tank01.ProductCodes[]")
    element = await gw.subscribe(sid, sh, "Tank01.ProductCodes[2]")
    bare = await gw.subscribe(sid, sh, "Tank01.ProductCodes")
    outside = await gw.subscribe(sid, sh, "Tank01.ProductCodes[9]")
    events = await gw.drain_until(
        sid, lambda ev: all(changes(ev, ih) for ih in (whole, element, bare, outside))
    )
    values = from_mx_value(changes(events, whole)[0].value)
    assert isinstance(values, list) and len(values) == 5
    assert from_mx_value(changes(events, element)[0].value) == values[1]
    bare_status = changes(events, bare)[0].statuses[0]
    assert (bare_status.success, bare_status.raw_category, bare_status.detail) == (0, 3, 1003)
    assert changes(events, outside)[0].statuses[0].detail == 1003


async def test_add_item2_resolves_me_against_the_context(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    reply = await gw.ok(
        sid, "add_item2", server_handle=sh, item_definition="Me.Recipe", item_context="Line01"
    )
    ih = reply.add_item2.item_handle
    await gw.ok(sid, "advise", server_handle=sh, item_handle=ih)
    events = await gw.drain_until(sid, lambda ev: bool(changes(ev, ih)))
    assert changes(events, ih)[0].statuses[0].success == 1


async def _write(
    gw: Gw, sid: str, sh: int, ih: int, value: object, **kw: object
) -> pb.MxCommandReply:
    return await gw.invoke(
        sid, "write", server_handle=sh, item_handle=ih, value=to_mx_value(value), **kw
    )


async def _outcome(gw: Gw, sid: str, ih: int, reply: pb.MxCommandReply) -> pb.MxStatusProxy:
    """Upstream semantics: an accepted write answers a plain OK; its outcome is the status
    of the OnWriteComplete it raises (drained here)."""
    assert (reply.protocol_status.code, reply.hresult, list(reply.statuses)) == (OK, 0, [])
    events = await gw.drain_until(
        sid,
        lambda ev: any(
            e.HasField("on_write_complete") and e.on_write_complete.item_handle == ih for e in ev
        ),
    )
    done = [e.on_write_complete for e in events if e.HasField("on_write_complete")]
    assert [d.item_handle for d in done] == [ih]
    (status,) = done[0].statuses
    return status


async def test_write_needs_advise_then_updates_value_and_completes(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    ih = await gw.add(sid, sh, "Line01.BatchCount")
    reply = await _write(gw, sid, sh, ih, 5)
    assert (reply.protocol_status.code, reply.hresult) == (MXFAIL, E_INVALIDARG)
    await gw.ok(sid, "advise", server_handle=sh, item_handle=ih)
    reply = await _write(gw, sid, sh, ih, 4242)
    assert reply.protocol_status.code == OK, reply
    events = await gw.drain_until(
        sid, lambda ev: any(from_mx_value(c.value) == 4242 for c in changes(ev, ih))
    )
    completes = [e.on_write_complete for e in events if e.HasField("on_write_complete")]
    assert [c.item_handle for c in completes] == [ih]
    assert completes[0].statuses[0].success == 1
    # OnWriteComplete comes before the OnDataChange carrying the written value.
    order = [e.family for e in events if e.family != pb.MX_EVENT_FAMILY_UNSPECIFIED]
    assert order.index(pb.MX_EVENT_FAMILY_ON_WRITE_COMPLETE) < len(order) - 1


async def test_write2_carries_the_timestamp(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    ih = await gw.subscribe(sid, sh, "Line01.Recipe")
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    stamp = pb.Write2Command(timestamp_value=None)
    stamp.timestamp_value.FromDatetime(when)
    await gw.ok(
        sid,
        "write2",
        server_handle=sh,
        item_handle=ih,
        value=to_mx_value("R-77"),
        timestamp_value=stamp.timestamp_value,
    )
    events = await gw.drain_until(
        sid, lambda ev: any(from_mx_value(c.value) == "R-77" for c in changes(ev, ih))
    )
    written = next(c for c in changes(events, ih) if from_mx_value(c.value) == "R-77")
    assert timestamp_to_datetime(written.timestamp) == when


async def test_read_only_attributes_are_not_writeable(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    for ref in ("Tank01.Level", "Pump01.SerialNumber"):  # Calculated / ViewOnly
        ih = await gw.subscribe(sid, sh, ref)
        await gw.drain(sid)
        reply = await _write(gw, sid, sh, ih, 1.0 if ref.endswith("Level") else "x")
        status = await _outcome(gw, sid, ih, reply)
        assert (status.success, status.detail) == (0, 1007), ref
        assert status.category == pb.MX_STATUS_CATEGORY_OPERATIONAL_ERROR


async def test_only_argument_errors_fail_a_write_synchronously(gw: Gw) -> None:
    """As COM: a bad handle, an item not advised, or one whose type never resolved throw
    (E_INVALIDARG) and raise no OnWriteComplete."""
    sid = await gw.open()
    sh = await gw.register(sid)
    unresolved = await gw.subscribe(sid, sh, "NoSuchObject.Level")
    not_advised = await gw.add(sid, sh, "Line01.BatchCount")
    await gw.drain(sid)
    for ih in (unresolved, not_advised, 999):
        reply = await _write(gw, sid, sh, ih, 1)
        assert (reply.protocol_status.code, reply.hresult) == (MXFAIL, E_INVALIDARG), ih
        if ih != 999:
            assert "Value does not fall within the expected range" in reply.diagnostic_message
    assert not [e for e in await gw.drain(sid) if e.HasField("on_write_complete")]


async def test_type_mismatches_fail_with_conversion_details(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    ih = await gw.subscribe(sid, sh, "Line01.BatchCount")  # MxInteger
    cases = {
        "abc": 19,
        (1, 2): 1005,
        datetime(2024, 1, 1, tzinfo=timezone.utc): 18,
        2**40: 20,
    }
    await gw.drain(sid)
    for value, detail in cases.items():
        reply = await _write(gw, sid, sh, ih, list(value) if isinstance(value, tuple) else value)
        status = await _outcome(gw, sid, ih, reply)
        assert (status.category, status.detail) == (
            pb.MX_STATUS_CATEGORY_OPERATIONAL_ERROR,
            detail,
        ), value
    # A convertible string is converted to the attribute's type.
    assert (await _write(gw, sid, sh, ih, "42")).protocol_status.code == OK
    events = await gw.drain_until(
        sid,
        lambda ev: any(
            c.value.HasField("int32_value") and c.value.int32_value == 42 for c in changes(ev, ih)
        ),
    )
    assert events


async def test_authenticate_user_and_archestra_user_to_id(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    for user, password, user_id in (
        ("operator", "operator", 101),
        ("PLANT\\verifier", "verifier", 102),
        ("operator", "guess", 0),  # a wrong password: user id 0
    ):
        reply = await gw.ok(
            sid,
            "authenticate_user",
            server_handle=sh,
            verify_user=user,
            verify_user_password=password,
        )
        assert reply.authenticate_user.user_id == user_id, user
        assert password not in str(reply)
    by_guid = await gw.ok(
        sid,
        "archestra_user_to_id",
        server_handle=sh,
        user_id_guid="{6F0B3B1E-0000-4000-8000-000000000103}",
    )
    assert by_guid.archestra_user_to_id.user_id == 103


async def _secured(
    gw: Gw, sid: str, sh: int, ih: int, value: object, user: int, verifier: int
) -> pb.MxCommandReply:
    return await gw.invoke(
        sid,
        "write_secured",
        server_handle=sh,
        item_handle=ih,
        current_user_id=user,
        verifier_user_id=verifier,
        value=to_mx_value(value),
    )


async def test_secured_write_needs_an_authenticated_user(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    ih = await gw.subscribe(sid, sh, "Pump01.SpeedSetpoint")  # SecuredWrite
    await gw.drain(sid)
    plain = await _outcome(gw, sid, ih, await _write(gw, sid, sh, ih, 10.0))
    assert (plain.raw_category, plain.detail) == (6, 1012)
    assert plain.category == pb.MX_STATUS_CATEGORY_SECURITY_ERROR
    nobody = await _outcome(gw, sid, ih, await _secured(gw, sid, sh, ih, 10.0, 0, 0))
    assert (nobody.category, nobody.detail) == (pb.MX_STATUS_CATEGORY_SECURITY_ERROR, 1016)
    secured = await _outcome(gw, sid, ih, await _secured(gw, sid, sh, ih, 11.0, 101, 101))
    assert secured.category == pb.MX_STATUS_CATEGORY_OK
    supervisory = await gw.subscribe(sid, sh, "Pump01.SpeedSetpoint", supervisory=True)
    await gw.drain(sid)
    status = await _outcome(gw, sid, supervisory, await _write(gw, sid, sh, supervisory, 12.0))
    assert status.category == pb.MX_STATUS_CATEGORY_OK


async def test_verified_write_needs_two_different_users_with_verify_rights(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    ih = await gw.subscribe(sid, sh, "Pump01.Interlock")  # VerifiedWrite
    await gw.drain(sid)
    for reply in (
        await _write(gw, sid, sh, ih, True),
        await _secured(gw, sid, sh, ih, True, 101, 101),
        await _secured(gw, sid, sh, ih, True, 102, 101),
    ):
        assert (reply.protocol_status.code, list(reply.statuses)) == (OK, [])
    reply = await gw.invoke(
        sid,
        "write_secured2",
        server_handle=sh,
        item_handle=ih,
        current_user_id=101,
        verifier_user_id=102,
        value=to_mx_value(True),
    )
    assert reply.protocol_status.code == OK
    events = await gw.drain_until(
        sid, lambda ev: sum(e.HasField("on_write_complete") for e in ev) >= 4
    )
    outcomes = [
        (e.on_write_complete.statuses[0].category, e.on_write_complete.statuses[0].detail)
        for e in events
        if e.HasField("on_write_complete")
    ]
    security, ok = pb.MX_STATUS_CATEGORY_SECURITY_ERROR, pb.MX_STATUS_CATEGORY_OK
    assert outcomes == [(security, 1013), (security, 1013), (security, 1017), (ok, 0)]


async def test_suspend_and_activate(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    ih = await gw.subscribe(sid, sh, "Line01.Counter")  # changes every tick
    await gw.drain_until(sid, lambda ev: len(changes(ev, ih)) >= 2)
    reply = await gw.ok(sid, "suspend", server_handle=sh, item_handle=ih)
    assert reply.statuses[0].success == 1
    await gw.drain(sid)
    other = await gw.subscribe(sid, sh, "Tank01.Temperature")
    quiet = await gw.drain_until(sid, lambda ev: len(changes(ev, other)) >= 4)
    assert changes(quiet, ih) == []
    await gw.ok(sid, "activate", server_handle=sh, item_handle=ih)
    events = await gw.drain_until(sid, lambda ev: bool(changes(ev, ih)))
    assert changes(events, ih)


async def test_buffered_items_deliver_batches(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    await gw.ok(sid, "set_buffered_update_interval", server_handle=sh, update_interval_ms=150)
    reply = await gw.ok(
        sid, "add_buffered_item", server_handle=sh, item_definition="Line01.Counter"
    )
    ih = reply.add_buffered_item.item_handle
    await gw.ok(sid, "advise_supervisory", server_handle=sh, item_handle=ih)

    def buffered(ev: list[pb.MxEvent]) -> list[pb.OnBufferedDataChangeEvent]:
        return [e.on_buffered_data_change for e in ev if e.HasField("on_buffered_data_change")]

    events = await gw.drain_until(sid, lambda ev: len(buffered(ev)) >= 2)
    batches = buffered(events)
    assert all(b.item_handle == ih for b in batches)
    assert batches[0].data_type == pb.MX_DATA_TYPE_INTEGER
    assert max(len(b.samples) for b in batches) >= 2  # several scans per delivery
    values = [s.value.int32_value for b in batches for s in b.samples]
    assert values == sorted(values)  # a counter, oldest first
    assert not changes(events, ih)  # no plain OnDataChange for a buffered item


async def test_control_commands(gw: Gw) -> None:
    sid = await gw.open()
    await gw.ok(sid, "ping")
    state = await gw.ok(sid, "get_session_state")
    assert state.session_state.state == pb.SESSION_STATE_READY
    info = (await gw.ok(sid, "get_worker_info")).worker_info
    assert info.backend_name == "mxgw-sim"
    assert info.worker_protocol_version == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:  # admin only
        await gw.invoke(sid, "shutdown_worker")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_shutdown_worker_closes_the_session() -> None:
    admin = new_key()
    store = ApiKeyStore()
    store.add(admin, SCOPES, name="admin")
    async with (
        GatewaySimulator(catalog=builtin_catalog(), key_store=store) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        gw = Gw(channel, admin)
        sid = await gw.open()
        await gw.ok(sid, "shutdown_worker")
        await _closed_soon(gw, sid)


async def _closed_soon(gw: Gw, sid: str) -> None:
    reply = await gw.invoke(sid, "ping")
    for _ in range(100):
        if reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND:
            break
        reply = await gw.invoke(sid, "ping")
    assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_NOT_FOUND


async def test_invalid_requests(gw: Gw) -> None:
    sid = await gw.open()
    mismatch = pb.MxCommand(kind=pb.MX_COMMAND_KIND_PING, register=pb.RegisterCommand())
    empty = pb.MxCommand(kind=pb.MX_COMMAND_KIND_PING)
    unspecified = pb.MxCommand(ping=pb.PingCommand())
    for cmd in (mismatch, empty, unspecified):
        reply = await gw.stub.Invoke(
            pb.MxCommandRequest(session_id=sid, command=cmd), metadata=gw.md
        )
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST, cmd
        assert reply.protocol_status.message
    negative = await gw.invoke(sid, "drain_events", max_events=-1)
    assert negative.protocol_status.code == pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST


class _Redeployable(InMemoryCatalog):
    """A catalog whose namespace a test can redeploy."""

    def redeploy(self, tags: list[TagInfo]) -> None:
        self.__init__(tags, self.version + 1)  # type: ignore[misc]


async def test_redeploy_makes_undeployed_items_bad_and_new_ones_resolvable() -> None:
    base = builtin_catalog().all_tags()
    catalog = _Redeployable(base)
    async with (
        GatewaySimulator(catalog=catalog, scan_interval_ms=SCAN_MS, flaky_one_in=0) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        gw = Gw(channel, sim.api_key)
        sid = await gw.open()
        sh = await gw.register(sid)
        level = await gw.subscribe(sid, sh, "Tank01.Level")
        await gw.drain_until(sid, lambda ev: bool(changes(ev, level)))
        extra = tag("Tank02", "Level", 4)
        catalog.redeploy([t for t in base if t.tag_name != "Tank01"] + [extra])
        events = await gw.drain_until(
            sid, lambda ev: any(c.quality == 4 for c in changes(ev, level))
        )
        gone = next(c for c in changes(events, level) if c.quality == 4)
        assert (gone.statuses[0].success, gone.statuses[0].detail) == (0, 12)
        fresh = await gw.subscribe(sid, sh, "Tank02.Level")
        events = await gw.drain_until(sid, lambda ev: bool(changes(ev, fresh)))
        assert changes(events, fresh)[0].quality == 192


async def test_remove_item_and_unregister_release_handles(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    first = await gw.subscribe(sid, sh, "Line01.Counter")
    second = await gw.add(sid, sh, "Tank01.Level")
    await gw.ok(sid, "remove_item", server_handle=sh, item_handle=first)
    gone = await gw.invoke(sid, "advise", server_handle=sh, item_handle=first)
    assert gone.hresult == E_INVALIDARG
    await gw.ok(sid, "unregister", server_handle=sh)
    for payload, fields in (
        ("advise", {"item_handle": second}),
        ("add_item", {"item_definition": "Tank01.Level"}),
    ):
        reply = await gw.invoke(sid, payload, server_handle=sh, **fields)
        assert (reply.protocol_status.code, reply.hresult) == (MXFAIL, E_INVALIDARG), payload
    closed = await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
    assert (closed.released_item_count, closed.released_registration_count) == (0, 0)


async def test_written_value_is_read_back_after_the_item_is_removed(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    ih = await gw.subscribe(sid, sh, "Line01.BatchCount")
    assert (await _write(gw, sid, sh, ih, 31337)).protocol_status.code == OK
    # Removed before any scan tick could deliver the written value.
    await gw.ok(sid, "un_advise", server_handle=sh, item_handle=ih)
    await gw.ok(sid, "remove_item", server_handle=sh, item_handle=ih)
    reply = await gw.ok(sid, "read_bulk", server_handle=sh, tag_addresses=["Line01.BatchCount"])
    (row,) = reply.bulk_read.results
    assert (row.was_successful, row.was_cached) == (True, False)
    assert from_mx_value(row.value) == 31337


async def test_uncached_reads_of_a_moving_attribute_are_current(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    ref = "Tank01.Level"  # a generator-driven value that is never advised here

    async def read() -> object:
        reply = await gw.ok(sid, "read_bulk", server_handle=sh, tag_addresses=[ref])
        return from_mx_value(reply.bulk_read.results[0].value)

    first = await read()
    deadline = asyncio.get_running_loop().time() + 10
    while await read() == first:
        assert asyncio.get_running_loop().time() < deadline, "value never moved"
        await asyncio.sleep(0.05)


async def test_answered_replies_are_the_whole_reply_serialized(gw: Gw) -> None:
    """An answered command's header and OK status are written as bytes, ahead of what the
    handler filled: on Invoke and on InvokeStream, the bytes are exactly those of the
    reply message serialized whole, with the header a refusal carries."""
    sid = await gw.open()
    sh = await gw.register(sid)
    item = await gw.add(sid, sh, "Tank01.LevelSetpoint")
    await gw.ok(sid, "advise", server_handle=sh, item_handle=item)
    commands = [
        command("ping"),
        command("register", client_name="bytes"),
        command("add_item", server_handle=sh, item_definition="Pump01.SpeedSetpoint"),
        command("write", server_handle=sh, item_handle=item, value=to_mx_value(12.5)),
        command("read_bulk", server_handle=sh, tag_addresses=["Tank01.LevelSetpoint"]),
        command("suspend", server_handle=sh, item_handle=item),
        command("get_session_state"),
        command("get_worker_info"),
        command("remove_item", server_handle=sh, item_handle=999),  # an MXAccess failure
        command("drain_events", max_events=-1),  # refused: INVALID_REQUEST
    ]
    raw = pb.MxCommandRequest.SerializeToString
    unary = gw.channel.unary_unary(
        "/mxaccess_gateway.v1.MxAccessGateway/Invoke", request_serializer=raw
    )
    bidi = gw.channel.stream_stream(
        "/mxaccess_gateway.v1.MxAccessGateway/InvokeStream", request_serializer=raw
    )
    stream = bidi(metadata=gw.md)
    answers: list[tuple[pb.MxCommand, bytes]] = []
    try:
        for cmd in commands:
            request = pb.MxCommandRequest(session_id=sid, command=cmd)
            answers.append((cmd, await unary(request, metadata=gw.md)))
            await stream.write(request)
            answers.append((cmd, await stream.read()))
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF  # the gateway ends the stream too
        assert await stream.code() == grpc.StatusCode.OK
    finally:
        stream.cancel()  # a no-op once it ended; ends it when the test failed midway
    codes = []
    for cmd, data in answers:
        reply = pb.MxCommandReply.FromString(data)
        assert reply.SerializeToString() == data, cmd  # canonical: fields in number order
        name = cmd.WhichOneof("payload").replace("_", "")
        assert (reply.session_id, reply.kind) == (sid, cmd.kind)
        assert reply.correlation_id.replace("_", "").startswith(f"gateway-correlation-{name}-")
        codes.append(reply.protocol_status.code)
        if reply.protocol_status.code == OK:
            assert reply.protocol_status.message == "OK"
    assert codes == [OK] * 16 + [MXFAIL] * 2 + [pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST] * 2
    numbers = [
        int(pb.MxCommandReply.FromString(d).correlation_id.rsplit("-", 1)[1]) for _, d in answers
    ]
    assert numbers == sorted(set(numbers))  # one fresh number per command
