"""Bulk commands: one row per entry, input order kept, per-entry failures, ReadBulk caching."""

from __future__ import annotations

from simhelpers import Gw, changes

from mxgateway._values import from_mx_value, to_mx_value
from mxgateway.generated import mxaccess_gateway_pb2 as pb

OK = pb.PROTOCOL_STATUS_CODE_OK
E_INVALIDARG = -2147024809


async def test_add_advise_remove_bulk_keep_order_and_fail_per_entry(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    refs = ["Tank01.Level", "bad ref", "Pump01.Speed", "Nope.X"]
    added = (await gw.ok(sid, "add_item_bulk", server_handle=sh, tag_addresses=refs)).bulk_subscribe
    assert [r.tag_address for r in added.results] == refs
    assert [r.was_successful for r in added.results] == [True, False, True, True]
    bad = added.results[1]
    assert (bad.item_handle, bad.hresult) == (0, E_INVALIDARG)
    assert bad.error_message
    handles = [r.item_handle for r in added.results if r.was_successful]
    advised = (
        await gw.ok(sid, "advise_item_bulk", server_handle=sh, item_handles=[*handles, 77])
    ).bulk_subscribe
    assert [r.item_handle for r in advised.results] == [*handles, 77]
    assert [r.was_successful for r in advised.results] == [True, True, True, False]
    events = await gw.drain_until(sid, lambda ev: all(changes(ev, h) for h in handles))
    assert changes(events, handles[2])[0].statuses[0].success == 0  # Nope.X
    unadvised = (
        await gw.ok(sid, "un_advise_item_bulk", server_handle=sh, item_handles=handles)
    ).bulk_subscribe
    assert all(r.was_successful for r in unadvised.results)
    removed = (
        await gw.ok(sid, "remove_item_bulk", server_handle=sh, item_handles=[handles[0], 99])
    ).bulk_subscribe
    assert [r.was_successful for r in removed.results] == [True, False]


async def test_subscribe_and_unsubscribe_bulk(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    refs = ["Line01.Counter", "Tank01.Level", "", "Pump01.Mode"]
    rows = (
        await gw.ok(sid, "subscribe_bulk", server_handle=sh, tag_addresses=refs)
    ).bulk_subscribe.results
    assert [r.was_successful for r in rows] == [True, True, False, True]
    handles = [r.item_handle for r in rows if r.was_successful]
    await gw.drain_until(sid, lambda ev: all(changes(ev, h) for h in handles))
    closed = (
        await gw.ok(sid, "unsubscribe_bulk", server_handle=sh, item_handles=[*handles, 55])
    ).bulk_subscribe.results
    assert [r.was_successful for r in closed] == [True, True, True, False]
    # The items are gone: advising one again is an unknown handle.
    reply = await gw.invoke(sid, "advise", server_handle=sh, item_handle=handles[0])
    assert reply.hresult == E_INVALIDARG


async def test_subscribe_bulk_buffered(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    rows = (
        await gw.ok(
            sid,
            "subscribe_bulk",
            server_handle=sh,
            tag_addresses=["Line01.Counter"],
            buffered_update_interval_ms=100,
        )
    ).bulk_subscribe.results
    ih = rows[0].item_handle
    events = await gw.drain_until(
        sid,
        lambda ev: any(
            e.HasField("on_buffered_data_change") and e.on_buffered_data_change.item_handle == ih
            for e in ev
        ),
    )
    assert not changes(events, ih)


async def _completions(gw: Gw, sid: str, count: int) -> list[tuple[int, int, int]]:
    """(item handle, category, detail) of the next ``count`` OnWriteComplete events."""
    events = await gw.drain_until(
        sid, lambda ev: sum(e.HasField("on_write_complete") for e in ev) >= count
    )
    done = [e.on_write_complete for e in events if e.HasField("on_write_complete")]
    return [(d.item_handle, d.statuses[0].category, d.statuses[0].detail) for d in done]


async def test_write_bulk_families(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    recipe = await gw.subscribe(sid, sh, "Line01.Recipe")
    level = await gw.subscribe(sid, sh, "Tank01.Level")  # read-only
    count = await gw.subscribe(sid, sh, "Line01.BatchCount")
    await gw.drain(sid)
    entries = [
        pb.WriteBulkEntry(item_handle=recipe, value=to_mx_value("A")),
        pb.WriteBulkEntry(item_handle=level, value=to_mx_value(1.0)),
        pb.WriteBulkEntry(item_handle=count, value=to_mx_value("not a number")),
        pb.WriteBulkEntry(item_handle=404, value=to_mx_value(1)),
        pb.WriteBulkEntry(item_handle=count, value=to_mx_value(7)),
    ]
    reply = await gw.ok(sid, "write_bulk", server_handle=sh, entries=entries)
    rows = reply.bulk_write.results
    assert [r.item_handle for r in rows] == [recipe, level, count, 404, count]
    # Upstream semantics per row: accepted rows are OK, only argument errors fail the row;
    # each accepted row's outcome is an OnWriteComplete, in entry order.
    assert [r.was_successful for r in rows] == [True, True, True, False, True]
    assert [list(r.statuses) for r in rows if r.was_successful] == [[], [], [], []]
    assert rows[3].hresult == E_INVALIDARG
    assert rows[3].error_message
    assert await _completions(gw, sid, 4) == [
        (recipe, pb.MX_STATUS_CATEGORY_OK, 0),
        (level, pb.MX_STATUS_CATEGORY_OPERATIONAL_ERROR, 1007),
        (count, pb.MX_STATUS_CATEGORY_OPERATIONAL_ERROR, 19),
        (count, pb.MX_STATUS_CATEGORY_OK, 0),
    ]
    stamped = pb.Write2BulkEntry(item_handle=recipe, value=to_mx_value("B"))
    stamped.timestamp_value.GetCurrentTime()
    reply2 = await gw.ok(sid, "write2_bulk", server_handle=sh, entries=[stamped])
    assert reply2.bulk_write.results[0].was_successful
    setpoint = await gw.subscribe(sid, sh, "Pump01.SpeedSetpoint")  # SecuredWrite
    secured = [
        pb.WriteSecuredBulkEntry(item_handle=setpoint, current_user_id=101, value=to_mx_value(5.0)),
        pb.WriteSecuredBulkEntry(item_handle=setpoint, current_user_id=0, value=to_mx_value(6.0)),
    ]
    await gw.drain(sid)
    rows3 = (
        await gw.ok(sid, "write_secured_bulk", server_handle=sh, entries=secured)
    ).bulk_write.results
    assert [r.was_successful for r in rows3] == [True, True]
    assert await _completions(gw, sid, 2) == [
        (setpoint, pb.MX_STATUS_CATEGORY_OK, 0),
        (setpoint, pb.MX_STATUS_CATEGORY_SECURITY_ERROR, 1016),
    ]
    rows4 = (
        await gw.ok(
            sid,
            "write_secured2_bulk",
            server_handle=sh,
            entries=[
                pb.WriteSecured2BulkEntry(
                    item_handle=setpoint, current_user_id=103, value=to_mx_value(8.0)
                )
            ],
        )
    ).bulk_write.results
    assert rows4[0].was_successful


async def test_read_bulk_cached_and_uncached(gw: Gw) -> None:
    sid = await gw.open()
    sh = await gw.register(sid)
    advised = await gw.subscribe(sid, sh, "Line01.Counter")
    await gw.drain_until(sid, lambda ev: bool(changes(ev, advised)))
    refs = ["Line01.Counter", "Line01.Recipe", "bad ref", "Nope.X", "Tank01.ProductCodes[3]"]
    reply = await gw.ok(sid, "read_bulk", server_handle=sh, tag_addresses=refs)
    rows = reply.bulk_read.results
    assert [r.tag_address for r in rows] == refs
    assert [r.was_successful for r in rows] == [True, True, False, False, True]
    assert [r.was_cached for r in rows] == [True, False, False, False, False]
    assert rows[1].quality == 192
    assert from_mx_value(rows[1].value) == "Line01 Recipe"
    assert rows[3].statuses[0].detail == 12
    assert rows[2].error_message and rows[3].error_message
    assert isinstance(from_mx_value(rows[4].value), str)
    # The subscription was not touched: the advised item keeps changing and no new items
    # were left behind (the next AddItem gets the next handle after the advised one).
    await gw.drain(sid)
    events = await gw.drain_until(sid, lambda ev: len(changes(ev, advised)) >= 2)
    assert changes(events, advised)
    assert await gw.add(sid, sh, "Tank01.Level") == advised + 1


async def test_read_bulk_with_unknown_server_handle_fails_per_row(gw: Gw) -> None:
    sid = await gw.open()
    reply = await gw.ok(sid, "read_bulk", server_handle=9, tag_addresses=["A.B", "C.D"])
    assert [r.was_successful for r in reply.bulk_read.results] == [False, False]
