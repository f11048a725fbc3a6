"""ReadBulk rows a session keeps ready: a repeated read of the same tags costs a lookup a row.

A client that polls reads the same references again and again (a 10,000-tag ReadBulk every
second). For each reference this cache keeps what the read needs and what it produced last:
the parsed reference, what it resolved to in the plant (or the failure row when it did not
resolve), its ``tag_address`` field, and the last encoded row with the sample and the
``was_cached`` flag it was built from. A later read of the reference reuses the row as long
as the sample (and the flag) is the same object, and otherwise encodes only the new row.
What a row answers is still decided on every read exactly as the uncached path decides it
(an advised item's last value, else the plant's current value); the cache only skips work
whose result it already holds. Resolutions are dropped when the plant's deployed namespace
changes (:meth:`Plant.resolve_epoch`).

A repeat of the session's last ReadBulk (the same command, byte for byte: a poller) also
skips finding its rows: the cache remembers that call's rows in order (:class:`ReadMemo`)
for as long as none of them was dropped, so the repeat neither decodes, hashes nor looks up
its 10,000 references; each row is then answered exactly as on a lookup.

The cache is bounded in bytes (``--read-cache-bytes``, counting every string and encoded row
it holds plus an estimate of the objects around them); past the bound the oldest entries
go first. It belongs to the session and goes with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mxgateway.values import MxPythonValue
from mxgateway_sim._domain import QUALITY_GOOD, STATUS_OK, TagSample
from mxgateway_sim._plant import BATCHED, BatchFunction, TagState
from mxgateway_sim._references import ParsedReference
from mxgateway_sim._wire import (
    FIXED_BOOL,
    FIXED_DOUBLE,
    FIXED_FLOAT,
    FIXED_WIDTH,
    FLOAT32_MAX,
    ROW_HEADS,
    VARIABLE,
    good_read_row_with_tail,
    good_row_tail,
    pack_d,
    pack_f,
    row_head,
    row_part,
    value_piece,
)

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "MEMO_CALLS",
    "MEMO_CHUNK_ROWS",
    "ReadMemo",
    "ReadRow",
    "ReadRowCache",
    "RememberedCall",
    "fresh_rows",
]

ENTRY_OVERHEAD_BYTES = 480
"""Estimated bytes of one entry beyond its strings and encoded bytes (the entry and the
parsed reference objects, their string headers, the dictionary slot)."""
MEMO_CALLS = 16
"""ReadBulk calls a session's cache remembers at most (their rows, bytes and plans are
counted in its bound too): a client reading a long list in several requests repeats
several calls."""
MEMO_CHUNK_ROWS = 1024
"""Rows of a remembered call read together (between two turns of the loop): a repeat costs
little per row (see :mod:`mxgateway_sim._readplan`), so larger chunks than a first read's
spread the cost of a chunk over more rows."""


class ReadRow:
    """One reference's cached read: how it resolves and its last encoded row."""

    __slots__ = (
        "batch",
        "cached",
        "cost",
        "data_type",
        "failed",
        "field",
        "generation",
        "head",
        "head_for",
        "index",
        "item",
        "key",
        "kind",
        "other_head",
        "other_head_for",
        "part",
        "plain",
        "sample",
        "state",
        "text",
        "wire",
    )

    def __init__(
        self,
        text: str,
        ref: ParsedReference | None,
        field: bytes,
        state: TagState | None,
        wire: bytes,
    ) -> None:
        self.text = text
        """The reference as read (the cache's key)."""
        # The parts of the reference a read needs, not the reference object (one object
        # less per row for the garbage collector to walk), unless it did not resolve.
        self.key = "" if ref is None else ref.key
        self.index = None if ref is None else ref.index
        self.failed = ref if state is None else None
        """The reference, kept for a row that did not resolve (its failure is rebuilt)."""
        self.field = field
        """The row's ``tag_address`` field, encoded."""
        self.state = state
        """What the reference resolved to; None: it did not, ``wire`` is its failure row."""
        self.wire = wire
        """The last encoded row (``results`` tag and length included)."""
        self.sample: TagSample | None = None
        """The sample ``wire`` was built from (None for a failure row)."""
        self.cached = False
        """The ``was_cached`` flag ``wire`` was built with."""
        self.cost = 0
        self.item: Any = None
        """The session's item that answers cached reads of the reference (None: none),
        as it was at ``generation`` of the runtime's advised items."""
        self.generation = -1
        self.data_type = 0 if state is None else state.info.mx_data_type
        """The attribute's data type (what a sample computed for a read carries)."""
        kind, part = (0, b"") if state is None else row_part(field, self.data_type)
        self.kind = kind
        """How a row this read computes is encoded (0: it is not, the reference does not
        resolve): ``row_head(...) + part + value piece + tail`` (:func:`fresh_rows`)."""
        self.part = part
        self.head = b""
        """``row_head`` of a row of a ``FIXED_`` kind and ``part``, for tails of
        ``head_for`` bytes (:meth:`make_head`)."""
        self.head_for = -1
        self.other_head = b""
        """The head for the other size of tail seen last (a read's tail has one of two
        sizes, as its time's nanoseconds take 4 or 5 bytes)."""
        self.other_head_for = -1
        self.batch: BatchFunction | None = (
            None if state is None or self.index is not None else BATCHED.get(state.gen_function)
        )
        """How a read computes the attribute's value together with others of its kind
        (None: one at a time)."""
        self.plain = state is not None and self.index is None and not state.flaky
        """The reference reads a whole attribute that is never flaky: while nobody
        advises it and no write pins it, a read computes its value from its model."""

    def make_head(self, tail_size: int) -> bytes:
        """:attr:`head` for tails of ``tail_size`` bytes (a row of a ``FIXED_`` kind has
        one size for each): the other head kept, or a new one (the current one kept as
        the other)."""
        if self.other_head_for == tail_size:
            head = self.other_head
        else:
            part = self.part
            head = row_head(len(part) + FIXED_WIDTH[self.kind] + tail_size) + part
        self.other_head, self.other_head_for = self.head, self.head_for
        self.head, self.head_for = head, tail_size
        return head

    @classmethod
    def malformed(cls, text: str, wire: bytes, generation: int) -> ReadRow:
        """A reference that does not parse: its failure row, for one call (never kept)."""
        row = cls(text, None, b"", None, wire)
        row.generation = generation  # answered by no item
        return row


class RememberedCall:
    """One ReadBulk call a cache remembers: its rows in order, a chunk at a time, and the
    :class:`~mxgateway_sim._readplan.ReadPlan` of each chunk (or None: the chunk cannot be
    planned) with what it was made for. A call's plans belong to it: a read of another
    remembered call never finds them."""

    __slots__ = ("cost", "plans", "rows", "shared")

    def __init__(self, rows: list[list[ReadRow]], cost: int) -> None:
        self.rows = rows
        self.cost = cost
        self.plans: dict[int, tuple[object, Any]] = {}
        self.shared: dict[object, Any] = {}
        """The plans' groups' values computed across chunks, by group
        (``_readvec.SharedValues``; counted in the plans' costs)."""


class ReadRowCache:
    """The rows of one session, oldest first out, bounded in bytes."""

    __slots__ = ("bytes", "calls", "epoch", "max_bytes", "rows", "version")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.rows: dict[str, ReadRow] = {}
        self.epoch: object = None
        self.version = 0
        """Counts every drop of a row (and a row not kept): remembered rows are valid only
        while it stays what it was when they were remembered."""
        self.calls: dict[bytes, RememberedCall] = {}
        """The remembered ReadBulk calls by their payload's bytes, the one used last at
        the end (at most :data:`MEMO_CALLS`): a client that reads a long list in several
        requests (``mxgateway``'s pipelined ``read_bulk``) repeats each of them."""

    @property
    def memo_key(self) -> bytes:
        """The key of the call remembered or recalled last (b"": none)."""
        return next(reversed(self.calls), b"")

    @property
    def memo(self) -> list[list[ReadRow]] | None:
        """The rows of the call remembered or recalled last, a chunk at a time."""
        call = self.calls.get(self.memo_key)
        return None if call is None else call.rows

    @property
    def plans(self) -> dict[int, tuple[object, Any]]:
        """The plans of the call remembered or recalled last."""
        call = self.calls.get(self.memo_key)
        return {} if call is None else call.plans

    def __len__(self) -> int:
        return len(self.rows)

    def held_objects(self) -> list[object]:
        """The kept rows and their container (a snapshot; see
        ``SimulatedRuntime.held_objects``)."""
        return [self.rows, *self.rows.values()]

    def check_epoch(self, epoch: object) -> None:
        """Forget every row when ``epoch`` (what resolutions depend on) changed."""
        if epoch != self.epoch:
            self.clear()
            self.epoch = epoch

    def add(self, text: str, row: ReadRow, ref: ParsedReference) -> None:
        """Keep ``row`` (of ``ref``) for reads of ``text`` (not kept if it alone is over
        the bound)."""
        row.cost = _cost(text, row, ref)
        if row.cost > self.max_bytes:
            self.version += 1  # a call that reads it cannot be remembered
            return
        old = self.rows.pop(text, None)
        if old is not None:
            self.bytes -= old.cost
        self.rows[text] = row
        self.bytes += row.cost
        self._trim()

    def set_wire(self, text: str, row: ReadRow, wire: bytes) -> None:
        """Replace ``row``'s encoded row (its size counted anew)."""
        change = len(wire) - len(row.wire)
        row.wire = wire
        if change and self.rows.get(text) is row:
            row.cost += change
            self.bytes += change
            self._trim()

    def _trim(self) -> None:
        rows = self.rows
        if self.bytes > self.max_bytes:
            self.forget()
        while self.bytes > self.max_bytes and rows:
            oldest = next(iter(rows))
            self.bytes -= rows.pop(oldest).cost
            self.version += 1

    def clear(self) -> None:
        """Forget everything."""
        self.rows.clear()
        self.bytes = 0
        self.calls.clear()
        self.version += 1

    def recall(self, key: bytes) -> RememberedCall | None:
        """The call ``key``, if it is remembered (then the one used last)."""
        calls = self.calls
        call = calls.get(key)
        if call is not None and next(reversed(calls)) != key:
            del calls[key]
            calls[key] = call
        return call

    def remember(self, key: bytes, rows: list[list[ReadRow]], version: int) -> None:
        """Remember ``rows`` for the call ``key`` if no row was dropped since ``version``
        (not if that would pass the bound: a memo never pushes rows out; the call used
        longest ago goes first when :data:`MEMO_CALLS` are remembered, or to make room)."""
        if version != self.version:
            return
        self._drop(key)
        flat = [row for chunk in rows for row in chunk]
        rows = [flat[i : i + MEMO_CHUNK_ROWS] for i in range(0, len(flat), MEMO_CHUNK_ROWS)]
        cost = len(key) + 8 * len(flat) + 64 * len(rows) + ENTRY_OVERHEAD_BYTES
        calls = self.calls
        while calls and (len(calls) >= MEMO_CALLS or self.bytes + cost > self.max_bytes):
            self._drop(next(iter(calls)))
        if self.bytes + cost <= self.max_bytes:
            calls[key] = RememberedCall(rows, cost)
            self.bytes += cost

    def plan(self, call: RememberedCall, part: int, key: object) -> tuple[bool, Any]:
        """(known, plan): the plan of ``call``'s chunk ``part`` made for ``key``; known is
        False when none was made for it (make one: :meth:`keep_plan`)."""
        kept = call.plans.get(part)
        if kept is None or kept[0] != key:
            return False, None
        return True, kept[1]

    def keep_plan(self, call: RememberedCall, part: int, key: object, plan: Any, cost: int) -> Any:
        """Keep ``plan`` (of ``cost`` bytes, None: the chunk cannot be planned) for
        ``call``'s chunk ``part`` and ``key``; not kept past the bound (no row is pushed
        out for it), nor counted once the cache forgot ``call``. Returns the plan kept."""
        plans = call.plans
        held = any(c is call for c in self.calls.values())
        old = plans.pop(part, None)
        if held and old is not None and old[1] is not None:
            self.bytes -= old[1].cost
        if plan is not None and (not held or self.bytes + cost > self.max_bytes):
            plan = None
        plans[part] = (key, plan)
        if plan is not None:
            self.bytes += cost
        return plan

    def forget(self) -> None:
        """Drop every remembered call (and its plans)."""
        for key in list(self.calls):
            self._drop(key)

    def _drop(self, key: bytes) -> None:
        call = self.calls.pop(key, None)
        if call is None:
            return
        self.bytes -= call.cost
        for _, plan in call.plans.values():
            if plan is not None:
                self.bytes -= plan.cost
        call.plans.clear()
        call.shared.clear()


class ReadMemo:
    """One ReadBulk call against the cache's remembered calls: the rows to answer with
    (``rows``, a chunk at a time) when the call is one of them, else what this call
    collects to be remembered (:meth:`done`)."""

    __slots__ = ("cache", "call", "collected", "key", "rows", "spoiled", "version")

    def __init__(self, cache: ReadRowCache, key: bytes) -> None:
        self.cache = cache
        self.key = key
        self.call = cache.recall(key)
        """The remembered call (its rows and plans), None: not remembered."""
        self.rows = None if self.call is None else self.call.rows
        self.version = cache.version
        self.collected: list[list[ReadRow]] = []
        self.spoiled = False
        """Set when the call had rows it cannot remember (one did not parse, one took
        another path)."""

    @property
    def valid(self) -> bool:
        """True while no row was dropped since the call began."""
        return self.cache.version == self.version

    def done(self) -> None:
        """The call answered every row: remember them for its repeat."""
        if self.rows is None and not self.spoiled:
            self.cache.remember(self.key, self.collected, self.version)


def fresh_rows(
    rows: Sequence[ReadRow],
    values: Sequence[MxPythonValue],
    positions: Sequence[int],
    out: list[bytes],
    tick: int,
    now: float,
) -> int:
    """Keep ``values`` (each of ``rows``' attribute at ``tick``, computed by the read at
    ``now``) as their attributes' samples, good and OK (``TagState.compute`` for an
    attribute only its model drives), and put each one's encoded row at its position in
    ``out``; the bytes added. An attribute the read names more than once gets one sample
    (the first row's), as from ``Plant.current``.

    Each row is exactly ``good_read_row(row.field, sample, False)``: the value's bytes
    spliced between the reference's constant part and the tail every row of the read
    shares (quality, timestamp, status: :func:`~mxgateway_sim._wire.good_row_tail`). A
    row is kept for the next read when it has the size of the one kept (a read computes
    most rows anew, and a kept row's size is counted in the cache's bound); otherwise it
    is marked as not kept, and encoded again if read unchanged.
    """
    tail = good_row_tail(QUALITY_GOOD, now)
    tail_size = len(tail)
    made = 0
    for row, value, position in zip(rows, values, positions, strict=True):
        state = row.state
        if state.computed_at == tick:  # type: ignore[union-attr]
            # A reference the read names again (or another spelling of it): the sample
            # an earlier row of the read made, and the row if it is this one's.
            sample = state.sample  # type: ignore[union-attr]
            if row.sample is sample and not row.cached:
                out[position] = row.wire
                made += len(row.wire)
                continue
        else:
            sample = TagSample(value, row.data_type, QUALITY_GOOD, now, STATUS_OK)
            state.sample = sample  # type: ignore[union-attr]
            state.computed_at = tick  # type: ignore[union-attr]
        kind = row.kind
        # value - value == 0.0: finite (NaN and infinities give NaN).
        if kind == FIXED_DOUBLE and type(value) is float and value - value == 0.0:
            head = row.head if row.head_for == tail_size else row.make_head(tail_size)
            wire = head + pack_d(value) + tail
        elif kind == FIXED_BOOL and type(value) is bool:
            head = row.head if row.head_for == tail_size else row.make_head(tail_size)
            wire = head + (b"\x01" if value else b"\x00") + tail
        elif kind == VARIABLE:
            piece = value_piece(value, row.data_type)
            size = len(row.part) + len(piece) + tail_size
            wire = (ROW_HEADS[size] if size < 4096 else row_head(size)) + row.part + piece + tail
        elif kind == FIXED_FLOAT and type(value) is float and abs(value) <= FLOAT32_MAX:
            head = row.head if row.head_for == tail_size else row.make_head(tail_size)
            wire = head + pack_f(value) + tail
        else:  # a value the splice does not fit (NaN, a value of another type)
            wire = good_read_row_with_tail(row.field, sample, tail)
        if len(wire) == len(row.wire):
            row.wire = wire
            row.sample = sample
            row.cached = False
        else:
            row.sample = None
        out[position] = wire
        made += len(wire)
    return made


def _cost(text: str, row: ReadRow, ref: ParsedReference) -> int:
    path = 0 if ref.path is text else _chars(ref.path)
    return (
        _chars(text)
        + path
        + _chars(ref.key)
        + len(row.field)
        + 3 * len(row.part)
        + 10  # the part, and the two heads that repeat it
        + len(row.wire)
        + ENTRY_OVERHEAD_BYTES
    )


def _chars(text: str) -> int:
    """Bytes a string's characters take at most (CPython stores up to 4 bytes each)."""
    return len(text) if text.isascii() else 4 * len(text)
