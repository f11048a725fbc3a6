"""Bulk commands composed from single MXAccess calls (any runtime gets them for free).

Each entry runs in input order and yields one row; an MXAccess failure of an entry becomes
that row's ``ok=False`` with the HRESULT and statuses, never an exception for the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mxgateway_sim._domain import MxAccessError, MxStatus, WriteRequest
from mxgateway_sim._limits import LimitError, reply_too_large
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


ROW_FIXED_BYTES = 48
"""Most bytes a ``SubscribeResult`` row takes beyond its strings and statuses (framing,
handles, flag, a negative HRESULT)."""
STATUS_FIXED_BYTES = 80
"""Most bytes an ``MxStatusProxy`` takes beyond its diagnostic text."""
MIN_ROW_BYTES = 6
"""Fewest bytes any bulk reply row takes (framing, a handle, the success flag)."""


def row_bytes(row: BulkRow) -> int:
    """An upper bound of the encoded size of ``row`` in a bulk reply."""
    size = ROW_FIXED_BYTES + len(row.reference.encode()) + len(row.error.encode())
    for status in row.statuses:
        size += STATUS_FIXED_BYTES + len(status.text.encode())
    return size


class ReplyBudget:
    """The bytes a bulk reply may take, charged row by row as the rows are made, so a reply
    too large to send is known before it is built (and before more work is done)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def precheck(self, rows: int, floor: int = 0) -> None:
        """Refuse at once when ``rows`` rows (plus ``floor`` bytes) cannot fit.

        Raises:
            LimitError: even the smallest rows would not fit.
        """
        least = rows * MIN_ROW_BYTES + floor
        if least > self.limit:
            raise reply_too_large(least, self.limit, "nothing was done; send fewer entries")

    def charge(self, row: BulkRow) -> None:
        """Count ``row``.

        Raises:
            LimitError: the reply no longer fits (the caller undoes what it created).
        """
        self.used += row_bytes(row)
        if self.used > self.limit:
            raise reply_too_large(
                self.used, self.limit, "nothing was created; send fewer references per call"
            )


async def _undo_adds(
    rt: MxAccessRuntime, sh: int, rows: Sequence[BulkRow], *, advised: bool
) -> None:
    """Remove (unadvising first) every item this call created: a bulk add that cannot be
    answered leaves nothing behind."""
    for row in reversed(rows):
        if row.item_handle:
            with contextlib.suppress(MxAccessError):
                if advised:
                    await rt.unadvise(sh, row.item_handle)
                await rt.remove_item(sh, row.item_handle)


async def _attempt(row: BulkRow, call: Awaitable[object]) -> bool:
    try:
        await call
    except MxAccessError as exc:
        row.fail(exc)
        return False
    return True


async def add_items(
    rt: MxAccessRuntime, sh: int, references: Sequence[str], budget: ReplyBudget | None = None
) -> list[BulkRow]:
    """AddItemBulk; creates nothing when the reply would not fit ``budget`` or an item
    limit is reached (the items made so far are removed again).

    Raises:
        LimitError: the reply would be too large, or the session's item limit was reached.
    """
    if budget is not None:
        budget.precheck(len(references), sum(map(len, references)))
    rows: list[BulkRow] = []
    try:
        for ref in references:
            row = BulkRow(sh, 0, ref)
            try:
                row.item_handle = await rt.add_item(sh, ref)
            except MxAccessError as exc:
                row.fail(exc)
            rows.append(row)
            if budget is not None:
                budget.charge(row)
    except LimitError:
        await _undo_adds(rt, sh, rows, advised=False)
        raise
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
    budget: ReplyBudget | None = None,
) -> list[BulkRow]:
    """SubscribeBulk: AddItem (or AddBufferedItem) then Advise, per reference; creates
    nothing when the reply would not fit ``budget`` or an item limit is reached.

    Raises:
        LimitError: the reply would be too large, or the session's item limit was reached.
    """
    if budget is not None:
        budget.precheck(len(references), sum(map(len, references)))
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
    try:
        for ref in references:
            row = BulkRow(sh, 0, ref)
            try:
                row.item_handle = await rt.add_item(sh, ref, buffered=buffered)
                await rt.advise(sh, row.item_handle, supervisory=supervisory)
            except MxAccessError as exc:
                row.fail(exc)
            rows.append(row)
            if budget is not None:
                budget.charge(row)
    except LimitError:
        await _undo_adds(rt, sh, rows, advised=True)
        raise
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
