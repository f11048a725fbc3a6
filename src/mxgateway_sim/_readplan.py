"""A remembered ReadBulk's rows, a generator's group at a time: a poller's repeat costs little
per row.

A poller repeats the same ReadBulk (:class:`~mxgateway_sim._readrows.ReadMemo` remembers its
rows). Most of its tags are attributes only their models drive (nobody advises them, no write
pins them, not flaky, read whole): a read computes their values as ``Plant.current`` would.
Row by row that is a dozen checks and an object per row. A :class:`ReadPlan` of a chunk of
the remembered rows groups those rows by generator (function and period) and encoding. Per
read it decides for each group at once whether its attributes changed since the samples they
hold (their ``computed_at`` ticks, all in the current period or all before it), computes a
changed group's values together (``Plant.BATCHED``), keeps them as the attributes' samples
(``TagState.compute`` for that case) and splices its rows, a Double's, Float's or
Boolean's each by one ``struct`` call in C (:func:`_layout`); where numpy is installed a
group's values are computed as arrays and a Double's, Float's or Boolean's rows spliced by
array writes (:mod:`mxgateway_sim._readvec`, the same bytes). A group it
cannot decide at once (another read or session computed some of its attributes in the
current period) sends the chunk to the row-by-row path (``SimulatedRuntime.read_wire``),
which answers the same bytes. The chunk's other rows (advised, pinned, flaky, array
elements, a second name of an attribute) are read row by row, after the groups.

A plan is valid while the attributes stay driven by their models alone
(:attr:`Plant.pins <mxgateway_sim._plant.Plant.pins>`) and the session's advised items stay
as they were (``SimulatedRuntime._advised_generation``); it is built again otherwise. It
holds the rows it last encoded; its bytes count in the read cache's bound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import repeat
from operator import add, is_, itemgetter
from struct import Struct
from typing import Any

from mxgateway.values import MxPythonValue
from mxgateway_sim import _readvec
from mxgateway_sim._domain import MX_INTEGER, TagSample
from mxgateway_sim._plant import BATCHED, GenFunction, TagState
from mxgateway_sim._readrows import ReadRow
from mxgateway_sim._readvec import (
    FixedRows,
    SharedValues,
    Values,
    varint_width,
    varints,
    vector,
)
from mxgateway_sim._wire import (
    FIXED_BOOL,
    FIXED_DOUBLE,
    FIXED_FLOAT,
    FIXED_WIDTH,
    FLOAT32_MAX,
    INT_PIECES,
    ROW_HEADS,
    VARIABLE,
    good_read_row,
    good_read_row_with_tail,
    int_prelude,
    row_head,
    value_piece,
)

__all__ = ["PLAN_ROW_BYTES", "VECTOR_ROW_BYTES", "ReadPlan", "plan_rows"]

PLAN_ROW_BYTES = 512
"""Estimated bytes a plan holds per grouped row beyond four times the reference's constant
part: its places in the plan's lists, the row it last encoded with its sample, and the heads
and row layouts it keeps for two sizes of tail (each head repeating the constant part)."""

VECTOR_ROW_BYTES = 448
""":data:`PLAN_ROW_BYTES` of a row whose group's rows are spliced by arrays
(``_Group.fixed``): instead of its heads and layouts, its line in the templates of two
sizes of tail (head, payload, tail and :data:`FIXED_SPREAD` of padding at most: ~190) and
its code in each of their rows' layouts (~64; padding takes none), besides what every
grouped row holds (its places in the plan's lists, the row it encoded last: ~170)."""
INT_ROW_BYTES = 160
"""What a row of Integers spliced by arrays holds besides :data:`VECTOR_ROW_BYTES`: its
sizes for two lengths of tail, for a read whose varints are not all as long."""
VECTOR_GROUP_BYTES = 1024
"""Estimated bytes a group computed by arrays holds beyond 32 a row: its parameters'
arrays (a few, each a header and a buffer) and the function that computes them."""
PIECES_KEPT = 16
"""Pieces of up to 64 bytes a group of a VARIABLE kind keeps by value (a cycle's words, a
ramp's first values; ``_Group.pieces``, :data:`PIECES_GROUP_BYTES` in a plan's cost)."""
PIECES_GROUP_BYTES = 4096
"""Estimated bytes of a group's :data:`PIECES_KEPT` pieces: the dictionary, the pieces and
their values."""
FIXED_SPREAD = 64
"""A group's rows are spliced by arrays when the lengths of their constant parts differ by
at most this: its templates are as wide as the longest row (``_readvec.FixedRows``)."""

_FLOAT = frozenset({float})
_INT = frozenset({int})
_NO_PIECES: dict[MxPythonValue, bytes] = {}
"""``_Group.pieces`` of a group whose values are too many to keep (never filled)."""
_BOOL = frozenset({bool})
_KEEP, _ENCODE, _COMPUTE = 0, 1, 2

_CODE = {FIXED_DOUBLE: "d", FIXED_FLOAT: "f", FIXED_BOOL: "?"}
"""The ``struct`` code of a ``FIXED_`` kind's payload (little-endian, as ``pack_d``,
``pack_f`` and a Boolean's one byte)."""
_PACK = Struct.pack
"""``_PACK(layout, head, value, tail)``: one row of a ``FIXED_`` kind (:func:`_layout`)."""
_LAYOUTS: dict[tuple[int, str, int], Struct] = {}
"""Row layouts by (head bytes, payload code, tail bytes): shared by every plan; a few
hundred at most (heads are up to a few hundred bytes, tails of two sizes), bounded anyway."""
_LAYOUTS_KEPT = 4096


def _layout(head: int, code: str, tail: int) -> Struct:
    """A row of a ``FIXED_`` kind in one ``struct`` call: its head and constant part
    (``head`` bytes), the value's payload (``code``) and the read's tail (``tail`` bytes),
    one new object a row instead of three (``head + pack_d(value) + tail``)."""
    key = (head, code, tail)
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = Struct(f"<{head}s{code}{tail}s")
        if len(_LAYOUTS) < _LAYOUTS_KEPT:
            _LAYOUTS[key] = layout
    return layout


class _Group:
    """Rows of one chunk whose attributes share a generator (function and period) and how
    their rows are encoded."""

    __slots__ = (
        "args",
        "at",
        "batch",
        "data_type",
        "fields",
        "fixed",
        "function",
        "heads",
        "kind",
        "layouts",
        "longest",
        "parts",
        "period",
        "pieces",
        "positions",
        "samples",
        "sizes",
        "spread",
        "states",
        "vector",
        "wires",
    )

    def __init__(self, function: GenFunction, period: int, kind: int, data_type: int) -> None:
        self.function = function
        batch = BATCHED.get(function)
        self.batch: Callable[[Sequence[Any], int], list[MxPythonValue]] = (
            batch
            if batch is not None
            else lambda params, n: [function(p, n) for p in params]  # one at a time
        )
        self.period = period
        self.kind = kind
        self.data_type = data_type
        self.positions: list[int] = []
        self.states: list[TagState] = []
        self.args: list[Any] = []
        self.fields: list[bytes] = []
        self.parts: list[bytes] = []
        self.sizes: dict[int, list[int]] = {}
        """The length of each row's constant part and a tail of each size (two kept)."""
        self.longest = 0
        """The longest constant part of the group's rows."""
        self.pieces: dict[MxPythonValue, bytes] = {}
        """A VARIABLE kind's values' pieces (``value_piece``), up to :data:`PIECES_KEPT`:
        the group's values are of one type (its generator's), so the value is the key."""
        self.heads: dict[int, list[bytes]] = {}
        """The rows' heads for a tail of each size (two sizes kept: a read's time takes 4
        or 5 bytes of nanoseconds)."""
        self.layouts: dict[int, list[Struct]] = {}
        """Each row's :func:`_layout` for a tail of each size (with :attr:`heads`)."""
        self.wires: Sequence[bytes] = []
        """The rows the plan encoded last: of the values it computed at :attr:`at`, or of
        :attr:`samples`."""
        self.vector: Values | None = None
        """The group's values as an array (:mod:`mxgateway_sim._readvec`; None: the
        pure-Python path), set once its rows are in (:meth:`prepare`)."""
        self.fixed: dict[int, FixedRows] | None = None
        """A ``FIXED_`` kind's rows spliced by arrays, by tail size (two kept, as
        :attr:`heads`), or Integers' by varint length and tail size (two kept); None:
        spliced a row at a time (:meth:`_splice`)."""
        self.at: float | None = None
        self.samples: list[TagSample] = []

    def decide(self, tick: int) -> int | None:
        """How the group's rows are answered at ``tick``: :data:`_KEEP` (no attribute
        changed since the samples this plan encoded), :data:`_ENCODE` (none changed, but
        some sample is not one the plan encoded: another read computed it), :data:`_COMPUTE`
        (every attribute changed), or None (some did: decide row by row).
        ``TagState.changed_since`` for attributes only their model drives, a group at a
        time."""
        states = self.states
        computed = [state.computed_at for state in states]
        period = self.period
        # Unchanged: computed in the current period (tick itself for a period of 1), or
        # ever for a static attribute; changed otherwise (never computed, or after
        # ``tick``: a clock that went back).
        start = tick - tick % period if period else 0
        high = max(computed)
        if high < start:  # the common case of a poller at a fast scan: no min() then
            return _COMPUTE
        low = min(computed)
        if low >= start and high <= tick:
            at = self.at
            if at is not None:  # the rows of values this plan computed at ``at``
                if all(map(is_, [state.read_at for state in states], repeat(at))):
                    return _KEEP
            elif self.samples and all(map(is_, [state._sample for state in states], self.samples)):
                return _KEEP
            return _ENCODE
        if low > tick:
            return _COMPUTE
        return None

    def prepare(self, shared: SharedValues | None = None, part: int = 0) -> None:
        """Its rows are all in: take the numpy path if it computes the group's generator
        (:attr:`fixed`: its rows too, for a ``FIXED_`` kind or Integers whose constant
        parts are of about the same length: their template is as wide as the longest);
        ``shared``: its values computed with those of the same generator in the call's
        other chunks (this is chunk ``part``)."""
        if shared is None:
            self.vector = vector(self.function, self.args)
        else:
            self.vector = shared.join(part, self.args)
        if self.vector is not None and (self.kind in _CODE or self.data_type == MX_INTEGER):
            lengths = [*map(len, self.parts)]
            if max(lengths) - min(lengths) <= FIXED_SPREAD:
                self.fixed = {}

    def answer(self, decision: int, tick: int, now: float, tail: bytes) -> Sequence[bytes]:
        """The group's rows by ``decision`` (:meth:`decide`): the kept rows, the rows of the
        attributes' samples, or the values at ``tick``, kept as their samples (good, OK,
        at ``now``, as ``TagState.compute``) and their rows spliced with ``tail``."""
        if decision == _KEEP:
            return self.wires
        states = self.states
        if decision == _ENCODE:
            samples = [state.sample for state in states]
            self.wires = [
                good_read_row(field, sample, False)
                for field, sample in zip(self.fields, samples, strict=True)
            ]
            self.samples, self.at = samples, None
            return self.wires
        array = None if self.vector is None else self.vector(tick)
        values = self.batch(self.args, tick) if array is None else array.tolist()
        for state, value in zip(states, values, strict=True):
            # TagState.compute of a good, OK value at ``now``, its sample made when first
            # asked for (TagState.sample): no object per row.
            state._sample = None
            state.read_value = value
            state.read_at = now
            state.computed_at = tick
        spliced: Sequence[bytes] | None = None
        if array is not None and self.fixed is not None:
            if self.kind == VARIABLE:  # Integers, whose varints may all be as long
                spliced = self._splice_ints(array, self.fixed, tail)
                if spliced is None:
                    spliced = self._splice(values, tail)
            else:
                spliced = self._splice_array(array, self.fixed, tail)
        else:
            spliced = self._splice(values, tail)
        if spliced is None:  # a value the splice does not fit (NaN, another type)
            spliced = [
                good_read_row_with_tail(field, state.sample, tail)
                for field, state in zip(self.fields, states, strict=True)
            ]
        self.wires, self.samples, self.at = spliced, [], now
        return spliced

    def _splice(self, values: list[MxPythonValue], tail: bytes) -> list[bytes] | None:
        """The rows of ``values``: the reference's constant part, the value's bytes and
        ``tail`` (exactly ``good_read_row``'s bytes), or None when a value does not fit
        the group's kind."""
        kind = self.kind
        if not values:
            return []
        if kind in (FIXED_DOUBLE, FIXED_FLOAT):
            if {*map(type, values)} != _FLOAT:
                return None
            total = sum(values)  # type: ignore[arg-type]
            if total - total != 0.0:  # a NaN or an infinity (or a sum past the range)
                return None
            floats: list[float] = values  # type: ignore[assignment]
            if kind == FIXED_FLOAT and max(map(abs, floats)) > FLOAT32_MAX:
                return None
            heads, layouts = self._heads(len(tail))
            return list(map(_PACK, layouts, heads, floats, repeat(tail)))
        if kind == FIXED_BOOL:
            if {*map(type, values)} != _BOOL:
                return None
            heads, layouts = self._heads(len(tail))
            return list(map(_PACK, layouts, heads, values, repeat(tail)))
        # VARIABLE: the value's whole length-prefixed MxValue between part and tail, each
        # step a map in C (no Python step a row).
        data_type = self.data_type
        widest = 64  # the longest piece, when known without looking (what is kept)
        ints: list[int] = values  # type: ignore[assignment]  # if so (checked next)
        if (
            data_type == MX_INTEGER
            and {*map(type, values)} == _INT
            and min(ints) >= 0
            and max(ints) < len(INT_PIECES)
        ):
            pieces = list(map(INT_PIECES.__getitem__, ints))
        else:
            kept = self.pieces
            found = list(map(kept.get, values))
            if None not in found:
                pieces = found  # type: ignore[assignment]
            else:
                pieces = list(map(value_piece, values, repeat(data_type)))
                widest = max(map(len, pieces))
                if kept is not _NO_PIECES and widest <= 64:
                    # A cycle's few words are kept; values too many to keep never are.
                    new = dict(zip(values, pieces, strict=True))
                    if len(kept) + len(new) <= PIECES_KEPT:
                        kept.update(new)
                    else:
                        self.pieces = _NO_PIECES
        parts = self.parts
        extra = len(tail)
        sizes = self.sizes.get(extra)  # each row's constant part and tail's length
        if sizes is None:
            sizes = [len(part) + extra for part in parts]
            if len(self.sizes) >= 2:
                self.sizes.pop(next(iter(self.sizes)))
            self.sizes[extra] = sizes
        lengths = list(map(len, pieces))
        if self.longest + widest + extra >= len(ROW_HEADS):
            heads = list(map(row_head, map(add, sizes, lengths)))
        else:
            heads = list(map(ROW_HEADS.__getitem__, map(add, sizes, lengths)))
        return list(map(b"".join, zip(heads, parts, pieces, repeat(tail))))

    def _splice_ints(
        self, values: Any, kept: dict[int, FixedRows], tail: bytes
    ) -> Sequence[bytes] | None:
        """:meth:`_splice` of Integers as an array whose varints are all as long (values
        of a few thousand apart seldom straddle a length), by the rows' templates ``kept``
        by tail size and varint length; None: some value is not such (then the rows are
        spliced a piece each)."""
        if values.dtype.kind != "i" or not len(values):
            return None
        low, high = int(values.min()), int(values.max())
        width = varint_width(high)
        if low < 0 or high >= 1 << 35 or varint_width(low) != width:
            return None
        key = (width << 8) | len(tail)
        fixed = kept.get(key)
        if fixed is None:
            prelude = int_prelude(width)  # the piece up to the varint
            size = len(prelude) + width + len(tail)
            heads = [row_head(len(part) + size) + part + prelude for part in self.parts]
            fixed = FixedRows(heads, "", width, len(tail))
            if len(kept) >= 2:
                kept.pop(next(iter(kept)))
            kept[key] = fixed
        return fixed.rows(varints(values, width), tail)

    def _splice_array(
        self, values: Any, kept: dict[int, FixedRows], tail: bytes
    ) -> Sequence[bytes] | None:
        """:meth:`_splice` of a ``FIXED_`` kind's values as an array (``_readvec``), by the
        rows' templates ``kept`` by tail size."""
        kind = self.kind
        if kind == FIXED_BOOL:
            if values.dtype != bool:
                return None
        else:
            total = float(values.sum())
            if total - total != 0.0:  # a NaN or an infinity (or a sum past the range)
                return None
            if kind == FIXED_FLOAT and float(abs(values).max()) > FLOAT32_MAX:
                return None
        fixed = kept.get(len(tail))
        if fixed is None:
            width = FIXED_WIDTH[kind]
            size = width + len(tail)
            heads = [row_head(len(part) + size) + part for part in self.parts]
            fixed = FixedRows(heads, _CODE[kind], width, len(tail))
            if len(kept) >= 2:
                kept.pop(next(iter(kept)))
            kept[len(tail)] = fixed
        return fixed.rows(values, tail)

    def _heads(self, tail_size: int) -> tuple[list[bytes], list[Struct]]:
        """The rows' heads and constant parts for tails of ``tail_size`` bytes (a ``FIXED_``
        kind), with each row's :func:`_layout`."""
        heads = self.heads.get(tail_size)
        if heads is None:
            kind = self.kind
            width = FIXED_WIDTH[kind] + tail_size
            heads = [row_head(len(part) + width) + part for part in self.parts]
            code = _CODE[kind]
            layouts = [_layout(len(head), code, tail_size) for head in heads]
            if len(self.heads) >= 2:
                self.heads.pop(next(iter(self.heads)))
                self.layouts.pop(next(iter(self.layouts)))
            self.heads[tail_size] = heads
            self.layouts[tail_size] = layouts
        return heads, self.layouts[tail_size]


class ReadPlan:
    """One remembered chunk's rows, grouped (see the module); valid for ``key``."""

    __slots__ = (
        "cost",
        "groups",
        "key",
        "length",
        "loose",
        "loose_positions",
        "order",
        "pick",
        "template",
    )

    def __init__(self, key: object) -> None:
        self.key = key
        """What the plan was built for (the plant's pins, the session's advised items)."""
        self.template: list[bytes] = []
        """The chunk's rows with the failure rows (those of references that did not
        resolve) in place; every other place is filled by a group or a loose row."""
        self.groups: list[_Group] = []
        self.loose: list[ReadRow] = []
        """Rows read row by row (``SimulatedRuntime.read_wire``'s way): advised ones, those
        of attributes advised elsewhere, pinned by a write or flaky, array elements, an
        attribute a row before names too."""
        self.loose_positions: list[int] = []
        self.order: tuple[int, ...] = ()
        """Where each row of the chunk is in a read's run of rows (:attr:`template`, then
        each group's rows, then the loose rows)."""
        self.pick: Callable[[list[bytes]], Sequence[bytes]] = tuple
        self.length = 0
        """How many rows a read's run holds (:attr:`order` points into it)."""
        """The chunk's rows, in order, of a read's run (:attr:`order`): one call, in C."""
        self.cost = 0
        """Bytes the plan holds, estimated (charged to the read cache)."""

    def read(
        self,
        tick: int,
        now: float,
        tail: bytes,
        loose: Callable[[Sequence[ReadRow]], list[bytes] | None],
    ) -> tuple[bool, Sequence[bytes] | None]:
        """(planned, rows): the chunk's rows at ``tick`` (those computed stamped ``now``,
        ending in ``tail``; the loose rows by ``loose``, None: they passed the reply's
        room); planned False when some group must be decided row by row (nothing was
        computed then)."""
        groups = self.groups
        decisions = [group.decide(tick) for group in groups]
        if None in decisions:
            return False, None
        # The template, each group's rows and the loose rows one after the other, put in
        # the chunk's order by one call (no Python step per row).
        run = self.template.copy()
        for group, decision in zip(groups, decisions, strict=True):
            run += group.answer(decision, tick, now, tail)  # type: ignore[arg-type]
        if self.loose:  # after the groups: a repeat of a group's attribute finds its sample
            rows = loose(self.loose)
            if rows is None:
                return True, None
            run += rows
        if len(run) != self.length:
            # A miscount would put rows under other tags' names: fail the read instead.
            raise RuntimeError(f"a read plan's run holds {len(run)} rows, not {self.length}")
        return True, self.pick(run)


def plan_rows(
    rows: Sequence[ReadRow],
    key: object,
    shared: dict[object, Any] | None = None,
    part: int = 0,
) -> ReadPlan:
    """The plan of ``rows`` (their ``item`` up to date) for ``key``: the rows of
    attributes only their models drive in groups, the others loose (see
    :attr:`ReadPlan.loose`). ``shared``: where the groups of a remembered call's chunks
    (this one is ``part``) find the :class:`~mxgateway_sim._readvec.SharedValues` of their
    generator, by group (the call's ``RememberedCall.shared``); None: each group's
    values are its own."""
    plan = ReadPlan(key)
    template = plan.template
    groups: dict[tuple[Any, ...], _Group] = {}
    seen: set[int] = set()
    cost = 64 * len(rows)
    for position, row in enumerate(rows):
        state = row.state
        template.append(row.wire if state is None else b"")
        if row.item is None and state is None and row.sample is None:
            continue  # did not resolve: its failure row
        if (
            row.item is not None
            or state is None
            or not row.plain
            or state.subs
            or state.dirty
            or state.override_ts is not None
            or id(state) in seen
        ):
            plan.loose.append(row)
            plan.loose_positions.append(position)
            continue
        seen.add(id(state))
        group_key = (state.gen_function, state.period, row.kind, row.data_type)
        group = groups.get(group_key)
        if group is None:
            groups[group_key] = group = _Group(*group_key)
        group.positions.append(position)
        group.states.append(state)
        group.args.append(state.gen_args)
        group.fields.append(row.field)
        group.parts.append(row.part)
        group.longest = max(group.longest, len(row.part))
    plan.groups = list(groups.values())
    for group_key, group in groups.items():
        together = None
        if shared is not None and _readvec.ENABLED:
            together = shared.get(group_key)
            if together is None:
                shared[group_key] = together = SharedValues(group.function)
        group.prepare(together, part)
        each = PLAN_ROW_BYTES if group.fixed is None else VECTOR_ROW_BYTES
        cost += sum(4 * len(piece) + each for piece in group.parts)
        if group.fixed is not None and group.kind == VARIABLE:
            # Integers: their rows' sizes besides the templates, for rows by piece.
            cost += INT_ROW_BYTES * len(group.parts)
        if group.kind == VARIABLE:
            cost += PIECES_GROUP_BYTES
        if group.vector is not None:  # its parameters' arrays
            cost += VECTOR_GROUP_BYTES + 32 * len(group.parts)
    order = list(range(len(template)))  # a place no group or loose row fills: its template
    at = len(template)
    for places in [group.positions for group in plan.groups] + [plan.loose_positions]:
        for i, position in enumerate(places, at):
            order[position] = i
        at += len(places)
    plan.order = tuple(order)
    plan.length = at
    if len(order) > 1:  # itemgetter of one index gives the row, not a tuple of it
        plan.pick = itemgetter(*order)
    else:
        plan.pick = lambda run: [run[i] for i in order]
    plan.cost = cost + 48 * len(rows)  # order: a place and an int a row
    return plan
