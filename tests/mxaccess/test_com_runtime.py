"""The MXAccess COM runtime against the fake LMXProxyServer (and a real one on a node)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import datetime, timezone

import pytest
from comhelpers import Target, advised, data_changes, write_completes
from fake_lmx import REGDB_E_CLASSNOTREG, FakeComError, FakePlatform

from mxgateway_mxaccess import ComStartError, MxAccessComRuntime
from mxgateway_sim._domain import (
    E_INVALIDARG,
    BufferedDataChange,
    DataChange,
    MxAccessError,
    MxRuntimeEvent,
    OperationComplete,
    WriteComplete,
    WriteRequest,
)

# -- the runtime against either server ------------------------------------------------------


async def test_first_value_arrives_as_data_change(target: Target) -> None:
    h, item = await advised(target, target.read_tag)
    assert h > 0 and item > 0
    first = data_changes(target.events, item)[0]
    assert first.server_handle == h
    assert first.sample.status.ok and first.sample.quality >= 192
    assert first.sample.timestamp > 0
    if target.kind == "fake":
        assert first.sample.value == 42.5 and first.sample.data_type == 4  # Double


async def test_write_is_ok_then_on_write_complete_then_new_value(target: Target) -> None:
    h, item = await advised(target, target.write_tag)
    await target.runtime.write(h, item, WriteRequest(value=7))
    [done] = (await target.wait_for(lambda ev: bool(write_completes(ev, item))))[-1:]
    assert isinstance(done, WriteComplete) and done.status.ok
    await target.wait_for(lambda ev: any(d.sample.value == 7 for d in data_changes(ev, item)))


async def test_write_before_the_type_resolved_is_e_invalidarg(target: Target) -> None:
    h = await target.runtime.register("mxgw-test")
    item = await target.runtime.add_item(h, target.write_tag)
    with pytest.raises(MxAccessError) as caught:
        await target.runtime.write(h, item, WriteRequest(value=1))
    assert caught.value.hresult == E_INVALIDARG
    assert caught.value.message.startswith("Write: ")
    assert "before the item's first OnDataChange" in caught.value.message


async def test_read_bulk_answers_from_any_registration_of_the_session(
    fake_target: Target,
) -> None:
    t = fake_target
    await advised(t, t.read_tag)
    other = await t.runtime.register("another registration")
    [row] = await t.runtime.read(other, [t.read_tag.upper()], 5.0)
    assert row.ok and row.was_cached  # references compare without case, as MXAccess does
    assert [n for n, _ in t.fake.calls].count("AddItem") == 1


async def test_close_gives_up_on_a_com_call_that_never_returns() -> None:
    platform = FakePlatform()
    runtime = MxAccessComRuntime(platform, idle_s=0.01, close_timeout_s=0.2)
    await runtime.start(lambda batch: None)
    platform.hang_register = threading.Event()
    stuck = asyncio.ensure_future(runtime.register("x"))
    await asyncio.sleep(0.1)
    try:
        await runtime.close()  # returns although Register is still running on the STA
        assert not stuck.done()
        with pytest.raises(MxAccessError, match="not running"):
            await runtime.ping()
    finally:
        platform.hang_register.set()
        with contextlib.suppress(Exception):
            await stuck


async def test_read_bulk_uncached_then_cached(target: Target) -> None:
    h = await target.runtime.register("mxgw-test")
    [row] = await target.runtime.read(h, [target.read_tag], 30.0)
    assert row.ok and not row.was_cached and row.sample is not None
    item = await target.runtime.add_item(h, target.read_tag)
    await target.runtime.advise(h, item, supervisory=False)
    await target.wait_for(lambda ev: bool(data_changes(ev, item)))
    [again] = await target.runtime.read(h, [target.read_tag], 30.0)
    assert again.ok and again.was_cached
    # ReadBulk's own item raised no event into the session.
    assert {e.item_handle for e in target.events if isinstance(e, DataChange)} == {item}


async def test_release_all_counts_everything_held(target: Target) -> None:
    await advised(target, target.read_tag)
    h2 = await target.runtime.register("mxgw-test-2")
    await target.runtime.add_item(h2, target.write_tag)
    counts = await target.runtime.release_all()
    assert (counts.advises, counts.items, counts.registrations) == (1, 2, 2)


async def test_ping_and_worker_info(target: Target) -> None:
    await target.runtime.ping()
    info = target.runtime.worker_info()
    assert info.backend_name == "mxaccess-com"
    assert "LMXProxy.LMXProxyServer" in info.backend_version


# -- fake-only: what a real node cannot be made to show on demand ---------------------------


async def test_every_call_and_event_runs_on_one_sta_thread(fake_target: Target) -> None:
    t = fake_target
    h, item = await advised(t, t.write_tag)
    await t.runtime.write(h, item, WriteRequest(value=3))
    await t.wait_for(lambda ev: bool(write_completes(ev, item)))
    fake, platform = t.fake, t.platform
    assert platform is not None
    assert fake.call_threads == {platform.apartment_thread} == fake.event_threads
    assert platform.apartment_thread != threading.get_ident()


async def test_events_need_the_pump() -> None:
    platform = FakePlatform(first_value_delay_s=0.0, pumping=False)
    runtime = MxAccessComRuntime(platform, idle_s=0.01)
    events: list[MxRuntimeEvent] = []
    await runtime.start(events.extend)
    try:
        h = await runtime.register("x")
        item = await runtime.add_item(h, "Tank01.Level")
        await runtime.advise(h, item, supervisory=False)
        await asyncio.sleep(0.3)
        assert events == []  # Register worked, but nothing fires without a message pump
        platform.pumping = True
        platform.wake()
        for _ in range(200):
            if events:
                break
            await asyncio.sleep(0.01)
        assert [type(e) for e in events] == [DataChange]
    finally:
        await runtime.close()


async def test_teardown_order_and_com_object_released(fake_target: Target) -> None:
    t = fake_target
    await advised(t, t.read_tag)
    fake, platform = t.fake, t.platform
    await t.runtime.close()
    names = [name for name, _ in fake.calls]
    assert names[-3:] == ["UnAdvise", "RemoveItem", "Unregister"]
    assert platform is not None and platform.released and platform.apartment_left
    with pytest.raises(MxAccessError, match="not running"):
        await t.runtime.register("after close")


async def test_unknown_handles_keep_the_com_hresult(fake_target: Target) -> None:
    with pytest.raises(MxAccessError) as caught:
        await fake_target.runtime.advise(99, 1, supervisory=False)
    assert caught.value.hresult == E_INVALIDARG  # unwrapped from DISP_E_EXCEPTION
    assert caught.value.message.startswith("Advise: The parameter is incorrect")


async def test_unknown_reference_fails_in_its_data_change(fake_target: Target) -> None:
    t = fake_target
    h = await t.runtime.register("x")
    item = await t.runtime.add_item(h, "NoSuchObject.Attr")
    await t.runtime.advise(h, item, supervisory=False)
    [change] = data_changes(await t.wait_for(lambda ev: bool(data_changes(ev, item))), item)
    status = change.sample.status
    assert not status.ok and (status.category, status.detail) == (4, 12)
    assert change.sample.value is None and change.sample.quality == 4
    [row] = await t.runtime.read(h, ["NoSuchObject.Other"], 5.0)
    assert not row.ok and row.statuses[0].category == 4


async def test_read_timeout_is_a_row_error_and_cleans_up() -> None:
    platform = FakePlatform(first_value_delay_s=5.0)
    runtime = MxAccessComRuntime(platform, idle_s=0.01)
    await runtime.start(lambda batch: None)
    try:
        h = await runtime.register("x")
        [row] = await runtime.read(h, ["Tank01.Level"], 0.2)
        assert not row.ok and "no OnDataChange within 0.2 s" in row.error
        assert platform.server is not None
        names = [name for name, _ in platform.server.calls]
        assert names == ["Register", "AddItem", "Advise", "UnAdvise", "RemoveItem"]
    finally:
        await runtime.close()


async def test_write_variants_pass_arguments_in_com_order(fake_target: Target) -> None:
    t = fake_target
    h, item = await advised(t, "Tank01.SecureSp")
    when = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    await t.runtime.write(h, item, WriteRequest(value=1, user_id=101))
    await t.runtime.write(h, item, WriteRequest(value=2, timestamp=when, user_id=101))
    await t.runtime.write(
        h, item, WriteRequest(value=3, user_id=101, verifier_user_id=102, secured=True)
    )
    await t.runtime.write(
        h,
        item,
        WriteRequest(value=4.5, timestamp=when, user_id=101, verifier_user_id=102, secured=True),
    )
    writes = [(n, a) for n, a in t.fake.calls if n.startswith("Write")]
    assert [n for n, _ in writes] == ["Write", "Write2", "WriteSecured", "WriteSecured2"]
    (_, w), (_, w2), (_, ws), (_, ws2) = writes
    assert (w[2].vt, w[2].value, w[3]) == (3, 1, 101)  # VT_I4 value, UserID last
    # Write2's time: the instant's wall clock in the date zone (this host's), labelled UTC
    # for pywin32 (tests/mxaccess/test_com_times.py has the zones).
    wall = when.astimezone().replace(tzinfo=timezone.utc)
    assert (w2[2].value, w2[3].vt, w2[3].value, w2[4]) == (2, 7, wall, 101)
    assert ws[2:4] == (101, 102) and (ws[4].vt, ws[4].value) == (3, 3)  # user ids first
    assert ws2[2:4] == (101, 102) and (ws2[4].vt, ws2[4].value) == (5, 4.5) and ws2[5].vt == 7
    done = await t.wait_for(lambda ev: len(write_completes(ev, item)) == 4)
    statuses = [c.status for c in write_completes(done, item)]
    # A plain write to a SecuredWrite attribute fails in OnWriteComplete, not in the reply.
    assert [s.ok for s in statuses] == [False, False, True, True]
    assert (statuses[0].category, statuses[0].detail) == (6, 1012)


async def test_unwritable_value_is_refused_before_com(fake_target: Target) -> None:
    t = fake_target
    h, item = await advised(t, t.write_tag)
    with pytest.raises(MxAccessError) as caught:
        await t.runtime.write(h, item, WriteRequest(value=b"\x01\x02"))
    assert caught.value.hresult == E_INVALIDARG
    assert not [n for n, _ in t.fake.calls if n.startswith("Write")]


async def test_add_item_variants(fake_target: Target) -> None:
    t = fake_target
    h = await t.runtime.register("x")
    await t.runtime.add_item(h, "Tank01.Level")
    await t.runtime.add_item(h, "Me.Level", "Tank01")
    await t.runtime.add_item(h, "Tank01.Level", "Tank01", buffered=True)
    assert [n for n, _ in t.fake.calls][1:] == ["AddItem", "AddItem2", "AddBufferedItem"]
    assert t.fake.calls[2][1] == (h, "Me.Level", "Tank01")
    with pytest.raises(MxAccessError) as caught:
        await t.runtime.add_item(h, "   ")
    assert caught.value.hresult == E_INVALIDARG


async def test_buffered_items_deliver_batches(fake_target: Target) -> None:
    t = fake_target
    h = await t.runtime.register("x")
    await t.runtime.set_buffered_update_interval(h, 100)
    item = await t.runtime.add_item(h, "Tank01.Setpoint", buffered=True)
    await t.runtime.advise(h, item, supervisory=True)
    await t.wait_for(lambda ev: any(isinstance(e, BufferedDataChange) for e in ev))
    t.fake.change("Tank01.Setpoint", 11)
    t.fake.change("Tank01.Setpoint", 12)
    batches = await t.wait_for(
        lambda ev: any(isinstance(e, BufferedDataChange) and len(e.samples) == 2 for e in ev)
    )
    batch = next(e for e in batches if isinstance(e, BufferedDataChange) and len(e.samples) == 2)
    assert batch.data_type == 2 and [s.value for s in batch.samples] == [11, 12]
    assert all(s.quality == 192 and s.data_type == 2 for s in batch.samples)
    assert t.fake.calls[-1][0] == "AdviseSupervisory"


async def test_suspend_activate_and_operation_complete(fake_target: Target) -> None:
    t = fake_target
    h, item = await advised(t, t.write_tag)
    assert (await t.runtime.suspend(h, item)).ok
    t.fake.change(t.write_tag, 50)
    await asyncio.sleep(0.2)
    assert not any(d.sample.value == 50 for d in data_changes(t.events, item))
    assert (await t.runtime.activate(h, item)).ok
    await t.wait_for(lambda ev: any(d.sample.value == 50 for d in data_changes(ev, item)))
    t.fake.operation_complete(h, item)
    await t.wait_for(lambda ev: any(isinstance(e, OperationComplete) for e in ev))


async def test_users(fake_target: Target) -> None:
    t = fake_target
    h = await t.runtime.register("x")
    assert await t.runtime.authenticate_user(h, r"DOMAIN\operator", "operator") == 101
    assert await t.runtime.authenticate_user(h, "operator", "wrong") == 0
    guid = "{6F0B3B1E-0000-4000-8000-000000000101}"
    assert await t.runtime.archestra_user_to_id(h, guid) == 101
    assert "<password>" in repr(t.fake.calls)  # the fake itself never keeps the password


async def test_events_for_removed_items_are_dropped(fake_target: Target) -> None:
    t = fake_target
    h, item = await advised(t, t.write_tag)
    assert t.platform is not None
    t.platform.pumping = False
    t.fake.change(t.write_tag, 77)  # raised by MXAccess after the item went (teardown)
    await t.runtime.remove_item(h, item)
    t.platform.pumping = True
    await asyncio.sleep(0.2)
    assert not any(d.sample.value == 77 for d in data_changes(t.events, item))
    assert t.runtime._dropped == 1


# -- start-up ------------------------------------------------------------------------------


async def test_creation_failure_is_a_clear_start_error() -> None:
    error = FakeComError(REGDB_E_CLASSNOTREG, "Class not registered")
    runtime = MxAccessComRuntime(FakePlatform(create_error=error))
    with pytest.raises(ComStartError) as caught:
        await runtime.start(lambda batch: None)
    text = str(caught.value)
    assert "0x80040154" in text and "32-bit" in text


@pytest.mark.skipif(__import__("sys").platform == "win32", reason="checks the non-Windows error")
async def test_no_windows_no_start() -> None:
    with pytest.raises(ComStartError, match="needs Windows"):
        await MxAccessComRuntime().start(lambda batch: None)
