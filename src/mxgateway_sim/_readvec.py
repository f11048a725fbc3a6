"""A read plan's groups with numpy, when it is installed: a generator's values as arrays and a
Double's, Float's or Boolean's rows spliced by one array write.

A read of 10,000 attributes nobody advises at a 1 ms scan computes and encodes most of its
rows anew (:mod:`mxgateway_sim._readplan`). Row by row in Python that is a few hundred
interpreter steps a row (a sine and its rounding, a random walk's hash, a ``struct`` call);
here a group's values are a few array operations over all its rows (:func:`vector`) and its
rows one write into a template of them (:class:`FixedRows`). Every value is bit for bit what
the generator gives (``Plant.BATCHED`` and each generator's own function, which the tests
compare over many values): only IEEE 754 operations that are correctly rounded alike in
numpy and Python are done in arrays (``+ - * /``, ``%`` of floats, integer arithmetic and
the conversion of a 64-bit integer to a double); a sine is ``math.sin``'s (a numpy build may
take another implementation, e.g. SVML), and a rounding :func:`~mxgateway_sim._plant.round3`
cannot settle in floats is ``round``'s, row by row.

Without numpy (it comes with the ``sim`` extra), or with ``MXGW_SIM_NUMPY=0`` in the
environment, :data:`ENABLED` is False and the plans take their pure-Python path, which
answers the same bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from struct import Struct
from typing import Any

from mxgateway_sim._plant import (
    _WORDS,
    GenFunction,
    _cycle,
    _float_walk,
    _int_counter,
    _int_ramp,
    _int_walk,
    _ramp,
    _sine,
    _toggle,
    _walk_weight,
)

try:
    import numpy as np
    from numpy.typing import NDArray
except ImportError:  # the pure-Python path
    np = None  # type: ignore[assignment]

__all__ = ["ENABLED", "FixedRows", "SharedValues", "Values", "varint_width", "varints", "vector"]

ENABLED = np is not None and os.environ.get("MXGW_SIM_NUMPY", "1").strip() != "0"
"""Whether read plans take the numpy path (numpy importable, ``MXGW_SIM_NUMPY`` not 0)."""

Values = Callable[[int], "NDArray[Any] | None"]
"""A group's values at tick n as an array (floats, integers or Booleans), or None when n is
out of the range the arrays compute exactly (then the group's Python batch does)."""

_TICKS = 2**53
"""Ticks below this are exact as doubles and as 64-bit integers (the arrays' range)."""
_MASK64 = (1 << 64) - 1


_BOUND = 1e7
"""Values of magnitude below this (their thousandths below 1e10) need no range check in
:func:`_round3`: a group whose parameters bound its values so skips one."""


def _round3(x: NDArray[np.float64], bounded: bool) -> NDArray[np.float64]:
    """:func:`~mxgateway_sim._plant.round3` of each element (``bounded``: every element's
    magnitude is below :data:`_BOUND`): ``rint`` rounds half to even as round3's float
    steps do, and keeps the sign of a zero as ``round`` does (where round3 asks ``round``
    itself); ``round(x, 3)`` for an element whose thousandths lie too close to a half (or
    out of range)."""
    if bounded:
        y = x * 1000.0
        k = np.rint(y)
        d = np.abs(y - k)
    else:
        with np.errstate(all="ignore"):  # infinities and NaN go to round() below
            y = x * 1000.0
            k = np.rint(y)
            d = np.abs(y - k)
            np.maximum(d, np.abs(y) * 5e-12, out=d)  # 0.5 or more from |y| = 1e11 on
    out = k / 1000.0
    ok = d < 0.4999  # False for NaN
    if np.count_nonzero(ok) != len(ok):
        for i in np.flatnonzero(~ok).tolist():
            out[i] = round(float(x[i]), 3)
    return out


_SPLITMIX: tuple[Any, ...] = (
    0x9E3779B97F4A7C15,
    0xBF58476D1CE4E5B9,
    0x94D049BB133111EB,
    30,
    27,
    31,
)
"""``_mix``'s constants (as ``np.uint64`` where numpy is installed)."""
if np is not None:
    _SPLITMIX = tuple(map(np.uint64, _SPLITMIX))


def _units(hashes: NDArray[np.uint64], i: int) -> NDArray[np.float64]:
    """``_unit(h, i)`` and ``_unit(h, i + 1)`` of each hash (two rows): splitmix64 in
    64-bit unsigned arithmetic (wrapping as ``_mix``'s masks do), then the integer over
    2**64 (correctly rounded, as Python's ``int / float``)."""
    add, mul1, mul2, s30, s27, s31 = _SPLITMIX
    points = np.array([[i & _MASK64], [(i + 1) & _MASK64]], dtype=np.uint64)
    x = hashes ^ points
    x += add
    x ^= x >> s30
    x *= mul1
    x ^= x >> s27
    x *= mul2
    x ^= x >> s31
    units: NDArray[np.float64] = x.astype(np.float64)
    units /= 2.0**64
    return units


def _walks(params: Sequence[Any], stride: int, amps: NDArray[np.float64] | None) -> Values:
    hashes = np.array([p[0] for p in params], dtype=np.uint64)[None, :]
    bounded = amps is None or bool(np.abs(amps).max() < _BOUND)

    def at(n: int) -> NDArray[Any] | None:
        if not 0 <= n < _TICKS:
            return None
        i, t = _walk_weight(stride, n)
        a, b = _units(hashes, i)
        b -= a
        b *= t
        b += a
        if amps is None:  # _int_walks: 0 + 1000 * (...), truncated by int()
            b *= 1000.0
            b += 0.0
            return _round3(b, True).astype(np.int64)
        b *= amps
        b += 0.0
        return _round3(b, bounded)

    return at


def _float_walks(params: Sequence[Any]) -> Values:
    return _walks(params, 8, np.array([float(p[1]) for p in params]))


def _int_walks(params: Sequence[Any]) -> Values:
    return _walks(params, 10, None)


def _sines(params: Sequence[Any]) -> Values:
    amps = np.array([float(p[0]) for p in params])
    periods = _nonzero(np.array([float(p[1]) for p in params]))
    phases = np.array([float(p[2]) for p in params])
    bounded = bool(np.abs(amps).max() * 2 < _BOUND)
    count = len(params)
    sin = math.sin

    def at(n: int) -> NDArray[Any] | None:
        if not 0 <= n < _TICKS:
            return None
        angles = (2 * math.pi * n) / periods + phases
        sines = np.fromiter(map(sin, angles.tolist()), np.float64, count)
        sines += 1.0
        sines *= amps
        return _round3(sines, bounded)

    return at


def _ramps(params: Sequence[Any]) -> Values:
    steps = np.array([float(p[0]) for p in params])
    amps = _nonzero(np.array([float(p[1]) for p in params]))
    bounded = bool(np.abs(amps).max() < _BOUND)

    def at(n: int) -> NDArray[Any] | None:
        if not 0 <= n < _TICKS:
            return None
        ramps = float(n) * steps
        np.remainder(ramps, amps, out=ramps)
        return _round3(ramps, bounded)

    return at


_INT_BOUND = 2**62
"""Integer parameters the arrays hold: below this in magnitude, a base or phase plus a tick
(below :data:`_TICKS`) stays inside 64 bits (past them the sum would wrap around, and its
remainder by 100 or the words' count differ from Python's)."""


def _integers(params: Sequence[Any], column: int) -> NDArray[np.int64]:
    integers = [int(p[column]) for p in params]
    if max(map(abs, integers)) >= _INT_BOUND:
        raise OverflowError("an integer parameter the arrays cannot add a tick to")
    return np.array(integers, dtype=np.int64)


def _nonzero(divisors: NDArray[Any]) -> NDArray[Any]:
    """``divisors``, none of them zero (Python's batch would raise: it is left to it)."""
    if np.count_nonzero(divisors) != len(divisors):
        raise ValueError("a zero divisor")
    return divisors


def _by_turn(periods: NDArray[np.int64], count: int, at_turn: Values) -> Values | None:
    """When every period is the same (a plan's group has one period): the values at each
    turn (``n // period``) modulo ``count``, made once by ``at_turn`` (``count`` arrays
    of the group's rows, never written to), one picked by tick; else None."""
    if len(set(periods.tolist())) != 1:
        return None
    period = int(periods[0])
    made = [at_turn(turn) for turn in range(count)]

    def at(n: int) -> NDArray[Any] | None:
        if not 0 <= n < _TICKS:
            return None
        return made[(n // period) % count]

    return at


def _toggles(params: Sequence[Any]) -> Values:
    periods, phases = _nonzero(_integers(params, 0)), _integers(params, 1)

    def at(n: int) -> NDArray[Any] | None:
        if not 0 <= n < _TICKS:
            return None
        return np.asarray((n // periods + phases) % 2 == 1)

    def at_turn(turn: int) -> NDArray[Any] | None:
        return np.asarray((turn + phases) % 2 == 1)

    return _by_turn(periods, 2, at_turn) or at


def _modulo(modulus: int) -> Callable[[Sequence[Any]], Values]:
    def prepare(params: Sequence[Any]) -> Values:
        bases = _integers(params, 0)

        def at(n: int) -> NDArray[Any] | None:
            if not 0 <= n < _TICKS:
                return None
            return np.asarray((bases + n) % modulus)

        return at

    return prepare


def _cycles(params: Sequence[Any]) -> Values:
    periods, offsets = _nonzero(_integers(params, 0)), _integers(params, 1)
    words = np.array(_WORDS, dtype=object)

    def at(n: int) -> NDArray[Any] | None:
        if not 0 <= n < _TICKS:
            return None
        return np.asarray(words[(n // periods + offsets) % len(_WORDS)])

    return at


_VECTORS: dict[GenFunction, Callable[[Sequence[Any]], Values]] = {
    _sine: _sines,
    _ramp: _ramps,
    _float_walk: _float_walks,
    _int_walk: _int_walks,
    _toggle: _toggles,
    _int_counter: _modulo(2**31),
    _int_ramp: _modulo(100),
    _cycle: _cycles,
}
"""The generators whose values the arrays compute: ``vector(f, params)(n).tolist() ==
[f(p, n) for p in params]``, bit for bit (the constant's are never computed anew)."""


def vector(function: GenFunction, params: Sequence[Any]) -> Values | None:
    """The values of ``function`` over ``params`` as arrays, or None when the arrays do not
    compute this generator (or the numpy path is off: :data:`ENABLED`)."""
    prepare = _VECTORS.get(function) if ENABLED else None
    if prepare is None or not params:
        return None
    try:
        return prepare(params)
    except (OverflowError, ValueError, TypeError):  # parameters the arrays cannot hold
        return None


class SharedValues:
    """The values of one generator's groups (function, period, encoding) across the chunks
    of a remembered call, computed by one array call a read instead of one a chunk: a
    chunk's group holds ~70 rows, too few for arrays to pay their fixed cost per call.

    Each chunk's group joins (:meth:`join`) with its parameters and gets its own :data:`Values`:
    its slice of the whole array, computed at most once per tick. A chunk planned again
    replaces its own parameters (no growth); the values of the generators are elementwise,
    so a slice is bit for bit what the group's own parameters give.
    """

    __slots__ = ("array", "function", "offsets", "params", "tick", "values")

    def __init__(self, function: GenFunction) -> None:
        self.function = function
        self.params: dict[int, Sequence[Any]] = {}
        """Each chunk's group's parameters, by the chunk's number."""
        self.offsets: dict[int, tuple[int, int]] = {}
        """Where each chunk's rows are in :attr:`array`: (start, end)."""
        self.values: Values | None = None
        self.tick: int | None = None
        self.array: NDArray[Any] | None = None
        """The values at :attr:`tick` (None: out of the arrays' range)."""

    def join(self, part: int, params: Sequence[Any]) -> Values | None:
        """The values of chunk ``part``'s group of ``params``; None when the arrays do not
        compute them (as :func:`vector`)."""
        if vector(self.function, params) is None:  # this group's own parameters
            self.leave(part)
            return None
        self.params[part] = params
        self._rebuild()
        offsets = self.offsets

        def at(n: int) -> NDArray[Any] | None:
            if self.tick != n:
                values = self.values
                self.array = None if values is None else values(n)
                self.tick = n
            array = self.array
            if array is None:
                return None
            start, end = offsets[part]
            return array[start:end]

        return at

    def leave(self, part: int) -> None:
        """Chunk ``part``'s group is gone (its plan made again, or not kept)."""
        if self.params.pop(part, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        whole: list[Any] = []
        self.offsets.clear()
        for key in sorted(self.params):
            start = len(whole)
            whole += self.params[key]
            self.offsets[key] = (start, len(whole))
        self.values = vector(self.function, whole) if whole else None
        self.tick = self.array = None


_DTYPE = {"d": "<f8", "f": "<f4", "?": "u1", "": "u1"}
"""The payload's type by ``struct`` code ("": bytes made by the caller, :func:`varints`)."""


def varint_width(n: int) -> int:
    """How many bytes the protobuf varint of ``0 <= n`` takes."""
    return max(1, -(-n.bit_length() // 7))


def varints(values: NDArray[Any], width: int) -> NDArray[np.uint8]:
    """The protobuf varints of ``values`` (each ``0 <= v``, each taking ``width`` bytes),
    a row of bytes each: seven bits a byte, low bits first, the high bit set on all but
    the last."""
    out = np.empty((len(values), width), dtype=np.uint8)
    for j in range(width):
        byte = (values >> (7 * j)) & 0x7F
        out[:, j] = byte | 0x80 if j < width - 1 else byte
    return out


class FixedRows:
    """A group's Double, Float or Boolean rows (or Integer rows whose varints are all as
    long, ``code`` "") for tails of one size, spliced by array writes. The rows are kept
    right-aligned in a template of one line a row, as long as the longest: each line is
    padding, the row's head and constant part, its payload and the tail, so every payload
    and every tail is in the same columns and two slice writes put a read's in place; one
    ``struct`` call (padding skipped) cuts out the rows, a ``bytes`` a row, as the
    pure-Python splice makes."""

    __slots__ = ("dtype", "layout", "template", "width")

    def __init__(self, heads: Sequence[bytes], code: str, width: int, tail_size: int) -> None:
        span = width + tail_size
        line = max(map(len, heads)) + span
        self.template = np.frombuffer(
            b"".join(bytes(line - span - len(head)) + head + bytes(span) for head in heads),
            dtype=np.uint8,
        ).reshape(len(heads), line)
        self.template = self.template.copy()  # writable
        self.layout = Struct(
            "".join(f"{line - span - len(head)}x{len(head) + span}s" for head in heads)
        )
        self.dtype = np.dtype(_DTYPE[code])
        self.width = width

    def cost(self) -> int:
        """Bytes this holds (the rows' template and layout)."""
        return self.template.nbytes + self.layout.__sizeof__() + 600

    def rows(self, values: NDArray[Any], tail: bytes) -> tuple[bytes, ...]:
        """The rows of ``values`` (one per row, checked to fit by the caller) ending in
        ``tail``: byte for byte the pure-Python splice's."""
        template = self.template
        span = self.width + len(tail)
        if values.dtype == np.uint8 and values.ndim == 2:  # payloads made by the caller
            payloads = values
        else:
            if values.dtype == np.bool_:  # a byte of 0 or 1 each, as struct's "?"
                values = values.view(np.uint8)
            elif values.dtype != self.dtype:  # a Float's doubles, as struct's "f" rounds them
                values = values.astype(self.dtype)
            payloads = values.view(np.uint8).reshape(len(values), self.width)
        template[:, -span : len(template[0]) - len(tail)] = payloads
        template[:, len(template[0]) - len(tail) :] = np.frombuffer(tail, dtype=np.uint8)
        # (a numpy array is a buffer to the type checker from Python 3.12 only: PEP 688)
        rows: tuple[bytes, ...] = self.layout.unpack(
            memoryview(template)  # type: ignore[arg-type, unused-ignore]
        )
        return rows
