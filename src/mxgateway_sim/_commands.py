"""Bulk commands composed from single MXAccess calls (any runtime gets them for free).

Each entry runs in input order and yields one row; an MXAccess failure of an entry becomes
that row's ``ok=False`` with the HRESULT and statuses, never an exception for the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mxgateway_sim._domain import MxAccessError, MxStatus, WriteRequest
from mxgateway_sim._runtime import MxAccessRuntime


@dataclass(slots=True)
class BulkRow:
    """One row of a bulk subscription or write reply."""

    server_handle: int
    item_handle: int
    reference: str = ""
    ok: bool = True
    error: str = ""
    hresult: int = 0
    statuses: tuple[MxStatus, ...] = ()

    def fail(self, exc: MxAccessError) -> None:
        """Record an MXAccess failure on this row."""
        self.ok = False
        self.error = exc.message
        self.hresult = exc.hresult
        self.statuses = exc.statuses


async def _attempt(row: BulkRow, call: Awaitable[object]) -> bool:
    try:
        await call
    except MxAccessError as exc:
        row.fail(exc)
        return False
    return True


async def add_items(rt: MxAccessRuntime, sh: int, references: Sequence[str]) -> list[BulkRow]:
    """AddItemBulk."""
    rows = []
    for ref in references:
        row = BulkRow(sh, 0, ref)
        try:
            row.item_handle = await rt.add_item(sh, ref)
        except MxAccessError as exc:
            row.fail(exc)
        rows.append(row)
    return rows


async def advise_items(
    rt: MxAccessRuntime, sh: int, handles: Sequence[int], *, supervisory: bool
) -> list[BulkRow]:
    """AdviseItemBulk."""
    rows = []
    for ih in handles:
        row = BulkRow(sh, ih)
        await _attempt(row, rt.advise(sh, ih, supervisory=supervisory))
        rows.append(row)
    return rows


async def unadvise_items(rt: MxAccessRuntime, sh: int, handles: Sequence[int]) -> list[BulkRow]:
    """UnAdviseItemBulk."""
    rows = []
    for ih in handles:
        row = BulkRow(sh, ih)
        await _attempt(row, rt.unadvise(sh, ih))
        rows.append(row)
    return rows


async def remove_items(rt: MxAccessRuntime, sh: int, handles: Sequence[int]) -> list[BulkRow]:
    """RemoveItemBulk."""
    rows = []
    for ih in handles:
        row = BulkRow(sh, ih)
        await _attempt(row, rt.remove_item(sh, ih))
        rows.append(row)
    return rows


async def subscribe(
    rt: MxAccessRuntime,
    sh: int,
    references: Sequence[str],
    *,
    buffered_interval_ms: int,
    supervisory: bool,
) -> list[BulkRow]:
    """SubscribeBulk: AddItem (or AddBufferedItem) then Advise, per reference."""
    buffered = buffered_interval_ms > 0
    rows: list[BulkRow] = []
    if buffered:
        try:
            await rt.set_buffered_update_interval(sh, buffered_interval_ms)
        except MxAccessError as exc:
            for ref in references:
                row = BulkRow(sh, 0, ref)
                row.fail(exc)
                rows.append(row)
            return rows
    for ref in references:
        row = BulkRow(sh, 0, ref)
        try:
            row.item_handle = await rt.add_item(sh, ref, buffered=buffered)
            await rt.advise(sh, row.item_handle, supervisory=supervisory)
        except MxAccessError as exc:
            row.fail(exc)
        rows.append(row)
    return rows


async def unsubscribe(rt: MxAccessRuntime, sh: int, handles: Sequence[int]) -> list[BulkRow]:
    """UnsubscribeBulk: UnAdvise then RemoveItem, per item."""
    rows = []
    for ih in handles:
        row = BulkRow(sh, ih)
        if await _attempt(row, rt.unadvise(sh, ih)):
            await _attempt(row, rt.remove_item(sh, ih))
        rows.append(row)
    return rows


def _held_events(rt: MxAccessRuntime) -> contextlib.AbstractContextManager[None]:
    """The runtime's ``hold_events()`` if it has one (one event list per bulk call)."""
    hold: Callable[[], contextlib.AbstractContextManager[None]] | None = getattr(
        rt, "hold_events", None
    )
    return hold() if hold is not None else contextlib.nullcontext()


async def write_items(
    rt: MxAccessRuntime, sh: int, entries: Sequence[tuple[int, WriteRequest]]
) -> list[BulkRow]:
    """The Write*Bulk family (the OnWriteComplete events go to the sink as one list)."""
    rows = []
    with _held_events(rt):
        for ih, request in entries:
            row = BulkRow(sh, ih)
            await _attempt(row, rt.write(sh, ih, request))
            rows.append(row)
    return rows
