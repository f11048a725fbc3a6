"""Bulk commands composed from single MXAccess calls (any runtime gets them for free).

Each entry runs in input order and yields one row; an MXAccess failure of an entry becomes
that row's ``ok=False`` with the HRESULT and statuses, never an exception for the call.

Entries run in slices that give the event loop back (:mod:`mxgateway_sim._slicing`), and the
rows go to a :data:`RowSink` a chunk at a time. A command timeout or a client cancel stops a
bulk between two entries: the entries before the stop took effect, except for AddItemBulk
and SubscribeBulk, whose items are removed again (as when their reply would not fit), so no
item outlives a call whose caller never saw its handle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mxgateway_sim._domain import MxAccessError, MxStatus, WriteRequest
from mxgateway_sim._limits import LimitError, reply_too_large
from mxgateway_sim._runtime import MxAccessRuntime
from mxgateway_sim._slicing import Slicer, chunks


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


RowSink = Callable[[list[BulkRow]], None]
"""Receives a bulk call's rows a chunk at a time, in input order (the servicer encodes each
chunk at once, so a 100k-row call never holds 100k row objects)."""


async def _undo_adds(
    rt: MxAccessRuntime, sh: int, handles: Sequence[int], *, advised: bool
) -> None:
    """Remove (unadvising first) every item this call created, newest first and in slices:
    a bulk add that cannot be answered, or was stopped, leaves nothing behind."""
    slicer = Slicer()
    for chunk in chunks(handles[::-1]):
        for ih in chunk:
            with contextlib.suppress(MxAccessError):
                if advised:
                    await rt.unadvise(sh, ih)
                await rt.remove_item(sh, ih)
        await slicer.checkpoint()


async def _attempt(row: BulkRow, call: Awaitable[object]) -> bool:
    try:
        await call
    except MxAccessError as exc:
        row.fail(exc)
        return False
    return True


CreatedItem = tuple[int, MxAccessError | None]
"""An item a batch created (its handle, 0 if AddItem failed) and the failure of its row."""


class ItemBatch(Protocol):
    """A runtime that can AddItem (and Advise) a chunk of references in one call: a worker
    process, where each call is a round trip (``WorkerRuntime.create_items``)."""

    async def __call__(
        self, server_handle: int, references: Sequence[str], *, advise: bool, supervisory: bool
    ) -> tuple[list[CreatedItem], LimitError | None]:
        """One result per reference handled, in order, and the limit that stopped the chunk
        early (None when every reference was handled)."""
        ...


async def _create(
    rt: MxAccessRuntime,
    sh: int,
    references: Sequence[str],
    out: RowSink,
    budget: ReplyBudget | None,
    *,
    buffered: bool = False,
    advise: bool = False,
    supervisory: bool = False,
) -> None:
    """AddItem (then Advise) per reference; on a limit or a stop the items made so far are
    removed again."""
    created: list[int] = []
    slicer = Slicer()
    batch: ItemBatch | None = None if buffered else getattr(rt, "create_items", None)
    try:
        for chunk in chunks(references):
            if batch is not None:  # a worker process: one round trip per chunk
                results, limit = await batch(sh, chunk, advise=advise, supervisory=supervisory)
                created.extend(handle for handle, _ in results if handle)
                rows = []
                for ref, (handle, error) in zip(chunk, results, strict=False):
                    row = BulkRow(sh, handle, ref)
                    if error is not None:
                        row.fail(error)
                    rows.append(row)
                    if budget is not None:
                        budget.charge(row)
                if limit is not None:
                    raise limit
                out(rows)
                await slicer.checkpoint()
                continue
            rows = []
            for ref in chunk:
                row = BulkRow(sh, 0, ref)
                try:
                    row.item_handle = await rt.add_item(sh, ref, buffered=buffered)
                    created.append(row.item_handle)
                    if advise:
                        await rt.advise(sh, row.item_handle, supervisory=supervisory)
                except MxAccessError as exc:
                    row.fail(exc)
                rows.append(row)
                if budget is not None:
                    budget.charge(row)
            out(rows)
            await slicer.checkpoint()
    except (LimitError, asyncio.CancelledError):
        await _undo_adds(rt, sh, created, advised=advise)
        raise


async def add_items(
    rt: MxAccessRuntime,
    sh: int,
    references: Sequence[str],
    out: RowSink,
    budget: ReplyBudget | None = None,
) -> None:
    """AddItemBulk; creates nothing when the reply would not fit ``budget``, an item limit
    is reached or the call is stopped (the items made so far are removed again).

    Raises:
        LimitError: the reply would be too large, or the session's item limit was reached.
    """
    if budget is not None:
        budget.precheck(len(references), sum(map(len, references)))
    await _create(rt, sh, references, out, budget)


async def _each(
    sh: int, handles: Sequence[int], step: Callable[[BulkRow], Awaitable[object]], out: RowSink
) -> None:
    """One row per item handle, ``step`` run on each, in slices."""
    slicer = Slicer()
    for chunk in chunks(handles):
        rows = []
        for ih in chunk:
            row = BulkRow(sh, ih)
            await step(row)
            rows.append(row)
        out(rows)
        await slicer.checkpoint()


async def advise_items(
    rt: MxAccessRuntime, sh: int, handles: Sequence[int], out: RowSink, *, supervisory: bool
) -> None:
    """AdviseItemBulk."""

    def step(row: BulkRow) -> Awaitable[bool]:
        return _attempt(row, rt.advise(sh, row.item_handle, supervisory=supervisory))

    await _each(sh, handles, step, out)


async def unadvise_items(
    rt: MxAccessRuntime, sh: int, handles: Sequence[int], out: RowSink
) -> None:
    """UnAdviseItemBulk."""
    await _each(sh, handles, lambda row: _attempt(row, rt.unadvise(sh, row.item_handle)), out)


async def remove_items(rt: MxAccessRuntime, sh: int, handles: Sequence[int], out: RowSink) -> None:
    """RemoveItemBulk."""
    await _each(sh, handles, lambda row: _attempt(row, rt.remove_item(sh, row.item_handle)), out)


async def subscribe(
    rt: MxAccessRuntime,
    sh: int,
    references: Sequence[str],
    out: RowSink,
    *,
    buffered_interval_ms: int,
    supervisory: bool,
    budget: ReplyBudget | None = None,
) -> None:
    """SubscribeBulk: AddItem (or AddBufferedItem) then Advise, per reference; creates
    nothing when the reply would not fit ``budget``, an item limit is reached or the call
    is stopped.

    Raises:
        LimitError: the reply would be too large, or the session's item limit was reached.
    """
    if budget is not None:
        budget.precheck(len(references), sum(map(len, references)))
    buffered = buffered_interval_ms > 0
    slicer = Slicer()
    if buffered:
        try:
            await rt.set_buffered_update_interval(sh, buffered_interval_ms)
        except MxAccessError as exc:
            for chunk in chunks(references):
                rows = []
                for ref in chunk:
                    row = BulkRow(sh, 0, ref)
                    row.fail(exc)
                    rows.append(row)
                out(rows)
                await slicer.checkpoint()
            return
    await _create(
        rt, sh, references, out, budget, buffered=buffered, advise=True, supervisory=supervisory
    )


async def unsubscribe(rt: MxAccessRuntime, sh: int, handles: Sequence[int], out: RowSink) -> None:
    """UnsubscribeBulk: UnAdvise then RemoveItem, per item."""

    async def step(row: BulkRow) -> None:
        if await _attempt(row, rt.unadvise(sh, row.item_handle)):
            await _attempt(row, rt.remove_item(sh, row.item_handle))

    await _each(sh, handles, step, out)


def _held_events(rt: MxAccessRuntime) -> contextlib.AbstractContextManager[None]:
    """The runtime's ``hold_events()`` if it has one (one event list per bulk call)."""
    hold: Callable[[], contextlib.AbstractContextManager[None]] | None = getattr(
        rt, "hold_events", None
    )
    return hold() if hold is not None else contextlib.nullcontext()


async def write_items(
    rt: MxAccessRuntime,
    sh: int,
    entries: Sequence[tuple[int, WriteRequest]],
    out: RowSink,
) -> None:
    """The Write*Bulk family (the OnWriteComplete events of each chunk go to the sink as
    one list, handed on before the loop gets its turn: 100k held events would be encoded in
    one piece at the end, and walked by the garbage collector until then)."""
    slicer = Slicer()
    for chunk in chunks(entries):
        rows = []
        with _held_events(rt):
            for ih, request in chunk:
                row = BulkRow(sh, ih)
                await _attempt(row, rt.write(sh, ih, request))
                rows.append(row)
        out(rows)
        await slicer.checkpoint()
