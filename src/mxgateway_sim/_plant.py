"""The simulated plant: one value model per deployed attribute, shared by every session.

Each attribute gets a generator chosen deterministically from its reference, its data type
and the seed (sine, ramp, random walk, counter, toggling bool, cycling strings, clock,
static). Values are closed-form functions of the scan tick number, so the same seed gives the
same value sequence. Some attributes are "flaky": now and then their quality goes Uncertain
or Bad for a window of ticks. A write pins the attribute to the written value.

Only attributes that some item advises are computed on a tick, and a tick's changes are
fanned out to every advising item across all sessions in one pass, so the per-event cost is
a few attribute reads and one list append. Any other attribute is computed when it is read,
if a tick since its last sample changed it; a bulk read computes the values of the costly
generators (:data:`BATCHED`) many at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import math
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from mxgateway._logsafe import get_logger
from mxgateway.values import MxPythonValue
from mxgateway_sim import _gcpolicy
from mxgateway_sim._catalog import TagCatalog, TagInfo
from mxgateway_sim._domain import (
    CAT_COMMUNICATION_ERROR,
    CAT_CONFIGURATION_ERROR,
    DETAIL_PLATFORM_COMMUNICATION_ERROR,
    DETAIL_RESOLVING_OBJECT,
    MX_BIG_STRING,
    MX_BOOLEAN,
    MX_DOUBLE,
    MX_ELAPSED_TIME,
    MX_FLOAT,
    MX_INTEGER,
    MX_INTERNATIONALIZED_STRING,
    MX_NO_DATA,
    MX_REFERENCE,
    MX_STRING,
    MX_TIME,
    QUALITY_BAD_COMM_FAILURE,
    QUALITY_BAD_CONFIG_ERROR,
    QUALITY_GOOD,
    QUALITY_UNCERTAIN,
    SRC_RESPONDING_NMX,
    STATUS_OK,
    MxStatus,
    TagSample,
    failure,
)
from mxgateway_sim._gcpolicy import replaced
from mxgateway_sim._slicing import Slicer, chunks

log = get_logger("mxgateway_sim.plant")


LATE_SCAN_LOG_INTERVAL_S = 10.0
"""At most one "cannot keep its scan" warning per this many seconds (with the counts since
the previous one), so a plant that is behind for hours logs a line every few seconds, not
one per scan."""

TICK_SLICE_DELIVERIES = 256
"""Deliveries (OnDataChange events, each encoded when handed over) per slice of a tick (a
few ms of work: the slice runs to its end before the clock is checked)."""
TICK_SLICE_UNCHANGED = 2048
"""... or attributes found unchanged by the tick (a check each), whichever comes first."""
PARK_BELOW_S = 0.05
"""A scan shorter than this parks while nothing needs its ticks (see :meth:`Plant.parked`):
waking the loop every millisecond costs about as much CPU as the ticks themselves, ~50 us
each, for ticks that change nothing anyone watches."""


class SampleSink(Protocol):
    """Something that watches an attribute (an advised item, an alarm)."""

    def deliver(self, sample: TagSample) -> None:
        """Take the attribute's new sample (called during a tick)."""
        ...


Subscribers = SampleSink | dict[SampleSink, None] | None
"""Who watches an attribute: nobody, the one sink (the common case, and no container for
the garbage collector to walk: 100k advised attributes had 100k such dicts), or an ordered
set of two or more (O(1) unsubscribe). A set is never turned back into one sink, only into
None once empty, so a tick that paused over a set can check who is still in it."""


def subscribers(subs: Subscribers) -> tuple[SampleSink, ...]:
    """The sinks of :attr:`TagState.subs`, in subscription order."""
    if subs is None:
        return ()
    if isinstance(subs, dict):
        return tuple(subs)
    return (subs,)


class TickListener(Protocol):
    """Something that wants a call after each tick (a runtime flushing its events)."""

    def flush(self, now: float) -> None:
        """The tick is complete."""
        ...

    def hand_over(self) -> None:
        """Pass on what the tick delivered so far (a long tick does this between slices)."""
        ...

    def needs_ticks(self) -> bool:
        """True while the listener has something a tick's flush must pass on even when no
        attribute is advised (buffered samples due later)."""
        ...


_MASK64 = (1 << 64) - 1
CLOCK_EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)
"""Time attributes driven by the "clock" generator count from here, one scan per tick."""
FLAKY_WINDOW_TICKS = 50
"""Length of a quality window of a flaky attribute, in ticks."""
_BAD_STATUS = failure(
    CAT_COMMUNICATION_ERROR,
    DETAIL_PLATFORM_COMMUNICATION_ERROR,
    "simulated communication failure",
    SRC_RESPONDING_NMX,
)
_UNDEPLOYED = failure(CAT_CONFIGURATION_ERROR, DETAIL_RESOLVING_OBJECT, "attribute undeployed")
_WORDS = ("Idle", "Starting", "Running", "Holding", "Stopping", "Cleaning", "Fault")
STRING_TYPES = frozenset({MX_STRING, MX_BIG_STRING, MX_INTERNATIONALIZED_STRING, MX_REFERENCE})
_STATIC_HINTS = ("setpoint", "limit", "desc", "name", "serial", "config", "recipe", "mode")


def _mix(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def tag_hash(seed: int, reference: str) -> int:
    """Stable 64-bit hash of (seed, reference) that does not depend on PYTHONHASHSEED."""
    digest = hashlib.blake2b(f"{seed}:{reference.lower()}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _unit(h: int, i: int) -> float:
    """Deterministic pseudo-random number in [0, 1) for lattice point ``i``."""
    return _mix(h ^ (i & _MASK64)) / 2.0**64


GenFunction = Callable[[Any, int], MxPythonValue]
"""Value at tick n from an attribute's parameters (a tuple): one shared function per kind
of generator, so an attribute's model is a function and a tuple of numbers and strings
(which the garbage collector stops tracking), not a closure of several tracked objects (a
session of 100k items over 40k+ attributes had ~170k of them for every collection to walk)."""


def _walk_value(h: int, lo: float, span: float, stride: int, n: int) -> float:
    """Smoothed value noise: looks like a bounded random walk, closed-form in n."""
    i, t = _walk_weight(stride, n)
    a, b = _unit(h, i), _unit(h, i + 1)
    return round(lo + span * (a + (b - a) * t), 3)


_LANES: dict[int, tuple[int, int, int]] = {}
"""(ones, mask, splitmix increment) of k 128-bit lanes, by k (see :func:`_units`): kept
for k up to :data:`_LANES_KEPT` (a read computes at most a chunk of rows at a time), so
at most ~1.6 MB."""
_LANES_KEPT = 256


def _lane_constants(k: int) -> tuple[int, int, int]:
    constants = _LANES.get(k)
    if constants is None:
        ones = int.from_bytes((b"\x01" + bytes(15)) * k, "little")  # 1 in every lane
        constants = (ones, ones * _MASK64, ones * 0x9E3779B97F4A7C15)
        if k <= _LANES_KEPT:
            _LANES[k] = constants
    return constants


def _units(hs: Sequence[int], i: int) -> list[float]:
    """``[_unit(h, i) for h in hs]``, computed together (:func:`_lattice`)."""
    return _lattice(hs, (i,))[0]


def _lattice(hs: Sequence[int], points: Sequence[int]) -> list[list[float]]:
    """``[_unit(h, i) for h in hs]`` for each ``i`` of ``points``, computed together: each
    ``h`` is a 128-bit lane of one big integer (made once for all the points) and
    :func:`_mix`'s dozen operations run once over all the lanes (in C), not once per ``h``
    (a Python operation on a 64-bit integer costs about as much as one on a thousand
    lanes). A lane holds a 64-bit value and room for its 128-bit products, and each product
    is masked back to 64 bits before the next step, so no lane spills into another: every
    lane's result is exactly :func:`_mix`'s."""
    k = len(hs)
    if not k:
        return [[] for _ in points]
    ones, mask, increment = _lane_constants(k)
    words = [0] * (2 * k)
    words[0::2] = hs
    layout = f"<{2 * k}Q"
    lanes = int.from_bytes(struct.pack(layout, *words), "little")
    scale = 2.0**64
    out = []
    for i in points:
        x = lanes ^ ones * (i & _MASK64)
        x = (x + increment) & mask
        x = ((x ^ (x >> 30)) & mask) * 0xBF58476D1CE4E5B9 & mask
        x = ((x ^ (x >> 27)) & mask) * 0x94D049BB133111EB & mask
        x = (x ^ (x >> 31)) & mask
        out.append(
            [lane / scale for lane in struct.unpack(layout, x.to_bytes(16 * k, "little"))[0::2]]
        )
    return out


_TO_INTEGER = 6_755_399_441_055_744.0
"""1.5 * 2**52: ``(y + _TO_INTEGER) - _TO_INTEGER`` is ``y`` rounded to an integer, half to
even, as ``round(y)`` (IEEE 754 doubles, |y| < 2**51: the sum's last bit is worth 1), but a
float: no integer object to make and turn back into a float."""


def round3(x: float) -> float:
    """``round(x, 3)``, to the same bits, for a fraction of its cost (it goes through a
    decimal string): ``k = round(1000 * x)`` is the integer round(x, 3) rounds to unless
    ``1000 * x`` lies too close to a half (the product's rounding error is under 1.2e-5
    below 1e11) or k is 0 (round keeps the sign of a zero); then round itself. ``k / 1000``
    is the double nearest to k/1000, as round's decimal string read back is (k is computed
    as a float, :data:`_TO_INTEGER`: the same value, exactly)."""
    y = x * 1000.0
    if -1e11 < y < 1e11:  # also False for NaN
        k = (y + _TO_INTEGER) - _TO_INTEGER
        if k and -0.4999 < y - k < 0.4999:
            return k / 1000.0
    return round(x, 3)


def _walk_weight(stride: int, n: int) -> tuple[int, float]:
    """The lattice point and the weight of its successor at tick ``n`` (of
    :func:`_walk_value`)."""
    i, frac = divmod(n, stride)
    return i, (1 - math.cos(math.pi * frac / stride)) / 2


def _constant(p: Any, n: int) -> MxPythonValue:
    value: MxPythonValue = p[0]
    return value


def _toggle(p: Any, n: int) -> MxPythonValue:
    period: int
    phase: int
    period, phase = p
    return (n // period + phase) % 2 == 1


def _int_counter(p: Any, n: int) -> MxPythonValue:
    base: int = p[0]
    return (base + n) % 2**31


def _int_ramp(p: Any, n: int) -> MxPythonValue:
    base: int = p[0]
    return (base + n) % 100


def _int_walk(p: Any, n: int) -> MxPythonValue:
    h: int = p[0]
    return int(_walk_value(h, 0, 1000, 10, n))


def _sine(p: Any, n: int) -> MxPythonValue:
    amp: float
    period_ticks: int
    phase: float
    amp, period_ticks, phase = p
    return round(amp * (1 + math.sin(2 * math.pi * n / period_ticks + phase)), 3)


def _ramp(p: Any, n: int) -> MxPythonValue:
    step: float
    amp: float
    step, amp = p
    return round((n * step) % amp, 3)


def _float_walk(p: Any, n: int) -> MxPythonValue:
    h: int
    amp: float
    h, amp = p
    return _walk_value(h, 0.0, amp, 8, n)


def _int_walks(params: Sequence[Any], n: int) -> list[MxPythonValue]:
    """``[_int_walk(p, n) for p in params]``, the lattice of all of them computed together."""
    hs = [p[0] for p in params]
    i, t = _walk_weight(10, n)
    pairs = zip(*_lattice(hs, (i, i + 1)), strict=True)
    return [int(round3(0 + 1000 * (a + (b - a) * t))) for a, b in pairs]


def _float_walks(params: Sequence[Any], n: int) -> list[MxPythonValue]:
    """``[_float_walk(p, n) for p in params]``, the lattice of all of them computed
    together."""
    hs = [p[0] for p in params]
    i, t = _walk_weight(8, n)
    triples = zip(params, *_lattice(hs, (i, i + 1)), strict=True)
    return [round3(0.0 + p[1] * (a + (b - a) * t)) for p, a, b in triples]


def _cycle(p: Any, n: int) -> MxPythonValue:
    period: int
    offset: int
    period, offset = p
    return _WORDS[(n // period + offset) % len(_WORDS)]


def _constants(params: Sequence[Any], n: int) -> list[MxPythonValue]:
    """``[_constant(p, n) for p in params]``."""
    return [p[0] for p in params]


def _toggles(params: Sequence[Any], n: int) -> list[MxPythonValue]:
    """``[_toggle(p, n) for p in params]``."""
    return [(n // period + phase) % 2 == 1 for period, phase in params]


def _int_counters(params: Sequence[Any], n: int) -> list[MxPythonValue]:
    """``[_int_counter(p, n) for p in params]``."""
    return [(base + n) % 2**31 for (base,) in params]


def _int_ramps(params: Sequence[Any], n: int) -> list[MxPythonValue]:
    """``[_int_ramp(p, n) for p in params]``."""
    return [(base + n) % 100 for (base,) in params]


def _sines(params: Sequence[Any], n: int) -> list[MxPythonValue]:
    """``[_sine(p, n) for p in params]`` (``2 * math.pi * n`` is where _sine's
    expression starts, so it is computed once, to the same bits)."""
    turn = 2 * math.pi * n
    sin = math.sin
    return [round3(amp * (1 + sin(turn / period + phase))) for amp, period, phase in params]


def _ramps(params: Sequence[Any], n: int) -> list[MxPythonValue]:
    """``[_ramp(p, n) for p in params]``."""
    return [round3((n * step) % amp) for step, amp in params]


def _cycles(params: Sequence[Any], n: int) -> list[MxPythonValue]:
    """``[_cycle(p, n) for p in params]``."""
    words, count = _WORDS, len(_WORDS)
    return [words[(n // period + offset) % count] for period, offset in params]


def _clock(p: Any, n: int) -> MxPythonValue:
    scan_s: float = p[0]
    return CLOCK_EPOCH + timedelta(seconds=n * scan_s)


def _elapsed(p: Any, n: int) -> MxPythonValue:
    scan_s: float = p[0]
    return timedelta(seconds=round(n * scan_s, 3))


def _bool_array(p: Any, n: int) -> MxPythonValue:
    size: int
    period: int
    size, period = p
    return [(i + n // period) % 2 == 0 for i in range(size)]


def _int_array(p: Any, n: int) -> MxPythonValue:
    size: int
    period: int
    size, period = p
    return [(i * 10 + n // period) % 1000 for i in range(size)]


def _float_array(p: Any, n: int) -> MxPythonValue:
    size: int
    period: int
    size, period = p
    return [round(i + (n // period % 100) / 10.0, 2) for i in range(size)]


def _string_array(p: Any, n: int) -> MxPythonValue:
    size: int
    name: str
    size, name = p
    return [f"{name}{i + 1}" for i in range(size)]


def _zero_array(p: Any, n: int) -> MxPythonValue:
    size: int = p[0]
    return [0] * size


BatchFunction = Callable[[Sequence[Any], int], list[MxPythonValue]]
"""Values at tick n of many attributes of one generator, from their parameters."""

BATCHED: dict[GenFunction, BatchFunction] = {
    _constant: _constants,
    _toggle: _toggles,
    _int_counter: _int_counters,
    _int_ramp: _int_ramps,
    _int_walk: _int_walks,
    _sine: _sines,
    _ramp: _ramps,
    _float_walk: _float_walks,
    _cycle: _cycles,
}
"""The generators whose values a bulk read computes many at a time (a comprehension
instead of a call per attribute; the random walks' lattice in one pass of big-integer
arithmetic): ``BATCHED[f](params, n) == [f(p, n) for p in params]``, bit for bit."""


GenSpec = tuple[str, GenFunction, tuple[object, ...], int]
"""(kind, function, parameters, period in ticks) of an attribute's value model."""


def choose_generator(info: TagInfo, seed: int, scan_s: float) -> GenSpec:
    """Pick (kind, function, parameters, period in ticks) for an attribute,
    deterministically; the value at tick n is ``function(parameters, n)``."""
    h = tag_hash(seed, info.full_tag_reference)
    t = info.mx_data_type
    name = info.attribute_name.lower()
    base = (h >> 16) % 1000
    if info.is_array:
        return _array_generator(info, h)
    static = any(hint in name for hint in _STATIC_HINTS)
    if t == MX_BOOLEAN:
        period = (5, 10, 25)[h % 3]
        phase = (h >> 8) & 1
        if static:
            return "static", _constant, (bool(phase),), 0
        return "toggle", _toggle, (period, phase), period
    if t == MX_INTEGER:
        kinds = ("counter", "ramp", "walk")
        kind = "static" if static else kinds[h % 3]
        if kind == "counter":
            return kind, _int_counter, (base,), 1
        if kind == "ramp":
            return kind, _int_ramp, (base,), 1
        if kind == "walk":
            return kind, _int_walk, (h,), 1
        return kind, _constant, (base,), 0
    if t in (MX_FLOAT, MX_DOUBLE):
        kinds_f = ("sine", "ramp", "walk")
        kind = "static" if static else kinds_f[h % 3]
        amp = 10.0 + (h >> 20) % 90
        if kind == "sine":
            period_ticks = 20 + (h >> 28) % 180
            phase_f = ((h >> 36) % 628) / 100.0
            return kind, _sine, (amp, period_ticks, phase_f), 1
        if kind == "ramp":
            step = 0.5 + (h >> 28) % 5
            return kind, _ramp, (step, amp), 1
        if kind == "walk":
            return kind, _float_walk, (h, amp), 1
        return kind, _constant, (round(base / 10.0, 1),), 0
    if t in STRING_TYPES:
        if static or t == MX_REFERENCE:
            return "static", _constant, (f"{info.tag_name} {info.attribute_name}",), 0
        period = (5, 10, 25)[h % 3]
        offset = (h >> 8) % len(_WORDS)
        return "cycle", _cycle, (period, offset), period
    if t == MX_TIME:
        if static or h % 2:
            return "static", _constant, (CLOCK_EPOCH + timedelta(seconds=base * 3600),), 0
        return "clock", _clock, (scan_s,), 5
    if t == MX_ELAPSED_TIME:
        return "elapsed", _elapsed, (scan_s,), 5
    return "static", _constant, (None,), 0


def _array_generator(info: TagInfo, h: int) -> GenSpec:
    size = max(info.array_dimension, 1)
    t = info.mx_data_type
    period = 10
    if t == MX_BOOLEAN:
        return "array", _bool_array, (size, period), period
    if t == MX_INTEGER:
        return "array", _int_array, (size, period), period
    if t in (MX_FLOAT, MX_DOUBLE):
        return "array", _float_array, (size, period), period
    if t in STRING_TYPES:
        return "static", _string_array, (size, info.attribute_name), 0
    return "static", _zero_array, (size,), 0


def _acyclic(obj: Any) -> None:
    """Out of the collector's walks while the GC policy tenures (``_gcpolicy.acyclic``):
    a sample or catalog record, which no reference cycle can pass through."""
    forget = _gcpolicy.acyclic
    if forget is not None and gc.is_tracked(obj):
        forget(obj)


class TagState:
    """The live value model of one deployed attribute."""

    __slots__ = (
        "_sample",
        "computed_at",
        "dirty",
        "flaky",
        "gen_args",
        "gen_function",
        "hash",
        "info",
        "key",
        "kind",
        "override",
        "override_ts",
        "period",
        "read_at",
        "read_value",
        "subs",
    )

    def __init__(self, info: TagInfo, seed: int, scan_s: float, flaky_one_in: int) -> None:
        self.info = info
        self.key = info.full_tag_reference.lower()
        self.kind, self.gen_function, self.gen_args, self.period = choose_generator(
            info, seed, scan_s
        )
        self.hash = tag_hash(seed ^ 0x5A5A, info.full_tag_reference)
        self.flaky = (
            flaky_one_in > 0 and self.kind != "static" and (self.hash >> 8) % flaky_one_in == 0
        )
        self.override: MxPythonValue = None
        self.override_ts: float | None = None
        self.dirty = False
        self.subs: Subscribers = None
        self._sample: TagSample | None = TagSample(None, info.mx_data_type, QUALITY_GOOD, 0.0)
        _acyclic(self._sample)
        _acyclic(info)
        self.read_value: MxPythonValue = None
        self.read_at: float | None = None
        """With :attr:`read_value`: the value a read computed at this time, good and OK,
        for :attr:`sample` to be made of when first asked for (a read of 10,000 attributes
        makes no object per row: :mod:`mxgateway_sim._readplan`). Any other sample
        replaces it."""
        self.computed_at = -1
        """The tick ``sample`` was computed for (-1: not yet)."""

    @property
    def sample(self) -> TagSample:
        """The attribute's current sample (as of :attr:`computed_at`)."""
        sample = self._sample
        if sample is None:  # a read's value (read_value, read_at): made now
            at = self.read_at
            assert at is not None
            sample = TagSample(self.read_value, self.info.mx_data_type, QUALITY_GOOD, at)
            _acyclic(sample)
            self._sample = sample
        return sample

    @sample.setter
    def sample(self, sample: TagSample) -> None:
        self._sample = sample
        self.read_at = None

    def gen(self, n: int) -> MxPythonValue:
        """The model's value at tick ``n`` (what a tick computes, before any write)."""
        return self.gen_function(self.gen_args, n)

    def quality_at(self, n: int) -> tuple[int, MxStatus]:
        """Quality and status of the attribute during tick ``n``."""
        if not self.flaky:
            return QUALITY_GOOD, STATUS_OK
        r = _mix(self.hash ^ (n // FLAKY_WINDOW_TICKS)) % 10
        if r == 0:
            return QUALITY_BAD_COMM_FAILURE, _BAD_STATUS
        if r == 1:
            return QUALITY_UNCERTAIN, STATUS_OK
        return QUALITY_GOOD, STATUS_OK

    def changes_at(self, n: int) -> bool:
        """True when tick ``n`` gives the attribute a new value or quality."""
        if self.dirty:
            return True
        if self.override_ts is not None:  # pinned by a write
            return False
        if self.period and n % self.period == 0:
            return True
        return self.flaky and n % FLAKY_WINDOW_TICKS == 0

    def changed_since(self, m: int, n: int) -> bool:
        """True when some tick after ``m`` up to ``n`` gives the attribute a new value or
        quality (:meth:`changes_at` of any of them). ``SimulatedRuntime.read_wire`` has
        this and :meth:`compute` inline for an attribute only its model drives: keep them
        in step."""
        if self.dirty or not 0 <= m <= n:  # never computed (or a clock that went back)
            return True
        if n == m or self.override_ts is not None:  # same tick, or pinned by a write
            return False
        if self.period and n // self.period != m // self.period:
            return True
        return self.flaky and n // FLAKY_WINDOW_TICKS != m // FLAKY_WINDOW_TICKS

    def compute(self, n: int, now: float) -> TagSample:
        """Build (and keep) the sample for tick ``n``."""
        # quality_at, without the call for the common attribute that is never flaky.
        quality, status = self.quality_at(n) if self.flaky else (QUALITY_GOOD, STATUS_OK)
        if self.override_ts is not None:
            value, ts = self.override, self.override_ts
            last = self.sample
            if (
                last.value is value
                and last.timestamp == ts
                and last.quality == quality
                and last.status is status
            ):
                # The sample the write made (Plant.write) says it all already: no second
                # object per written attribute for the garbage collector.
                self.dirty = False
                self.computed_at = n
                return last
        else:
            value, ts = self.gen_function(self.gen_args, n), now
        self.dirty = False
        sample = TagSample(value, self.info.mx_data_type, quality, ts, status)
        forget = _gcpolicy.acyclic  # _acyclic, inline: once per changed attribute a tick
        if forget is not None:
            forget(sample)
        self._sample = sample
        self.read_at = None
        self.computed_at = n
        return sample


class Plant:
    """All attribute models, the scan clock, and the fan-out of changes to advised items."""

    def __init__(
        self,
        catalog: TagCatalog,
        *,
        seed: int = 0,
        scan_interval_ms: int = 200,
        flaky_one_in: int = 8,
    ) -> None:
        if scan_interval_ms <= 0:
            raise ValueError("scan_interval_ms must be positive")
        self.catalog = catalog
        self.seed = seed
        self.scan_s = scan_interval_ms / 1000.0
        self.flaky_one_in = flaky_one_in
        self._tick_n = 0
        self._parked_at: float | None = None
        """When the scan clock parked (``time.monotonic``), None while it runs."""
        self._wake: asyncio.Future[None] | None = None
        self._states: dict[str, TagState] = {}
        self._active: dict[str, TagState] = {}
        self._runtimes: list[TickListener] = []
        self._task: asyncio.Task[None] | None = None
        self._objects: set[str] | None = None
        self._objects_version = -1
        self._version = catalog.version
        self._scans = 0
        self.late_scans = 0
        """Ticks that started after their due time: the plant could not keep its scan (too
        many advised attributes for the interval, or a busy machine). Each is followed by
        a fresh start, never a burst of catch-up ticks, so values change less often than
        the scan says instead of piling up; this counter (and a warning every
        :data:`LATE_SCAN_LOG_INTERVAL_S`) is how that is seen."""
        self.skipped_scans = 0
        """Whole scan intervals that passed without a tick because the plant was late."""
        self.max_behind_s = 0.0
        """The longest a tick started after its due time, in seconds."""
        self._late_reported = (0, 0, 0)  # (scans, late, skipped) at the last warning
        self._late_report_at = 0.0
        self._objects_per_state = 2
        """Tracked objects each attribute model holds alive (see :meth:`tracked_objects`)."""
        self.pins = 0
        """Changes whenever an attribute may stop (or start) being driven by its model
        alone: subscribed, unsubscribed, written, redeployed. What a read planned for such
        attributes (:mod:`mxgateway_sim._readplan`) holds while it stays the same."""

    @property
    def tick(self) -> int:
        """The scan tick number: values are functions of it. While the scan clock is parked
        (:meth:`parked`) it still counts a tick per scan interval, as the clock would."""
        parked = self._parked_at
        if parked is None:
            return self._tick_n
        return self._tick_n + int((time.monotonic() - parked) / self.scan_s)

    @tick.setter
    def tick(self, n: int) -> None:
        self._tick_n = n
        if self._parked_at is not None:  # counted from here on
            self._parked_at = time.monotonic()

    @property
    def scans(self) -> int:
        """Scan ticks run by the scan clock (those it skipped while parked included)."""
        return self._scans + self.tick - self._tick_n

    def parked(self) -> bool:
        """True when the scan clock may stop waking up: nothing is advised (no tick would
        compute or deliver anything) and no listener needs a tick's flush. Reads still see
        the tick advance with the clock (:attr:`tick`), a redeploy is taken when a read
        looks (:meth:`resolve_epoch`), and an advise wakes the clock."""
        return not self._active and not any(r.needs_ticks() for r in self._runtimes)

    # -- catalog -------------------------------------------------------------------------

    def state(self, reference: str) -> TagState | None:
        """The model of a deployed attribute (created on first use), or None if unknown."""
        if self._parked_at is not None and self.catalog.version != self._version:
            self._redeploy(time.time())  # what a tick would have done
        key = reference.lower()
        st = self._states.get(key)
        if st is None:
            info = self.catalog.lookup(reference)
            if info is None:
                return None
            st = TagState(info, self.seed, self.scan_s, self.flaky_one_in)
            st.compute(self.tick, time.time())
            if not self._states:
                # A catalog that makes its records per lookup (the Galaxy's) leaves each
                # model the only holder of its record: one more object per model.
                self._objects_per_state = 2 + (self.catalog.lookup(reference) is not info)
            self._states[key] = st
        return st

    def tracked_objects(self) -> int:
        """Tracked objects the attribute models hold alive (each model, its current sample,
        and its catalog record when nothing else holds it; while the GC policy tenures the
        samples and records are not tracked, ``_gcpolicy.acyclic``): live, not garbage,
        for the GC policy's valve (``mxgateway_sim._gcpolicy``)."""
        per_state = 1 if _gcpolicy.acyclic is not None else self._objects_per_state
        return len(self._states) * per_state

    def held_objects(self) -> list[object]:
        """What :meth:`tracked_objects` counts, the objects themselves, and the containers
        that hold them (a snapshot, Nones included): a sliced full collection does not walk
        them (``mxgateway_sim._gcpolicy``)."""
        return [self._states, self._active, *self._states.values()]

    def resolve_epoch(self) -> tuple[int, int]:
        """Changes whenever what :meth:`state` and :meth:`object_exists` answer may change
        (the catalog's version, and the plant's own view of it, which follows at the next
        tick): a cache of resolved references is valid while this stays the same."""
        if self._parked_at is not None and self.catalog.version != self._version:
            self._redeploy(time.time())  # what a tick would have done
        return self.catalog.version, self._version

    def object_exists(self, tag_name: str) -> bool:
        """True when some deployed attribute belongs to ``tag_name``."""
        if self._objects is None or self._objects_version != self.catalog.version:
            names = getattr(self.catalog, "object_tag_names", None)
            if callable(names):
                self._objects = {str(n).lower() for n in names()}
            else:
                self._objects = {t.tag_name.lower() for t in self.catalog.all_tags()}
            self._objects_version = self.catalog.version
        return tag_name.lower() in self._objects

    def _redeploy(self, now: float) -> None:
        """The deployed namespace changed: undeployed attributes go Bad, the rest re-resolve."""
        self._version = self.catalog.version
        self.pins += 1
        for key, state in list(self._states.items()):
            info = self.catalog.lookup(state.info.full_tag_reference)
            if info == state.info:
                continue
            del self._states[key]
            if self._active.get(key) is state:
                del self._active[key]
            if info is None and state.subs is not None:
                gone = TagSample(None, MX_NO_DATA, QUALITY_BAD_CONFIG_ERROR, now, _UNDEPLOYED)
                for item in subscribers(state.subs):
                    item.deliver(gone)

    # -- subscriptions -------------------------------------------------------------------

    def attach(self, runtime: TickListener) -> None:
        """Let ``runtime`` receive tick flushes."""
        self._runtimes.append(runtime)

    def detach(self, runtime: TickListener) -> None:
        """Stop tick flushes to ``runtime``."""
        with contextlib.suppress(ValueError):
            self._runtimes.remove(runtime)

    def subscribe(self, state: TagState, item: SampleSink) -> None:
        """Deliver the attribute's changes to ``item``."""
        subs = state.subs
        if subs is None:
            self.pins += 1
            state.subs = item
        elif isinstance(subs, dict):
            subs[item] = None
        elif subs is not item:
            state.subs = {subs: None, item: None}
        self._active[state.key] = state
        wake = self._wake
        if wake is not None and not wake.done():  # the scan clock parked: it has work now
            wake.set_result(None)

    def unsubscribe(self, state: TagState, item: SampleSink) -> None:
        """Stop delivering to ``item``."""
        subs = state.subs
        if subs is item:
            state.subs = None
        elif isinstance(subs, dict):
            subs.pop(item, None)
            if not subs:
                state.subs = None
        if state.subs is None:
            self.pins += 1
            if self._active.get(state.key) is state:
                del self._active[state.key]

    def write(self, state: TagState, value: MxPythonValue, timestamp: float | None) -> None:
        """Pin the attribute to a written value; subscribers see it on the next tick."""
        self.pins += 1
        state.override = value
        state.override_ts = timestamp if timestamp is not None else time.time()
        state.dirty = True
        # Reads see the write at once, even if the item is removed before the next tick.
        last = state.sample
        state.sample = TagSample(
            value, state.info.mx_data_type, last.quality, state.override_ts, last.status
        )
        _acyclic(state.sample)
        replaced(1, len(self._states))

    def current(self, state: TagState, now: float | None = None) -> TagSample:
        """The attribute's value now (advised attributes are kept current by the scan).

        An attribute nobody advises is computed when read, unless no tick since its last
        sample changed it (a static attribute, a toggle between two toggles): then that
        sample is its value, with the time it took it, as an advised item would have it.
        ``now``: the time of the read (default: the clock); a bulk read passes one time
        for the rows it computes together, as the scan does for one tick.
        """
        if not state.subs and state.changed_since(state.computed_at, self.tick):
            state.compute(self.tick, time.time() if now is None else now)
        return state.sample

    # -- clock ---------------------------------------------------------------------------

    def step(self, now: float | None = None) -> None:
        """Advance one scan tick: compute changed attributes and flush every runtime."""
        for _ in self._tick(time.time() if now is None else now):
            pass

    def _tick(self, now: float) -> Iterator[None]:
        """One tick, pausing (``yield``) after every :data:`TICK_SLICE_DELIVERIES` deliveries
        (or :data:`TICK_SLICE_UNCHANGED` attributes the tick leaves as they were).

        With 100k advised items a tick is 100k OnDataChange events: the scan task gives the
        loop back between slices (see :mod:`mxgateway_sim._slicing`), handing the events of
        each slice on first so none piles up. Subscribers may come and go during a pause;
        one that left is not delivered to.
        """
        n = self.tick = self.tick + 1
        if self.catalog.version != self._version:
            self._redeploy(now)
        done = unchanged = 0
        for state in list(self._active.values()):
            if not state.changes_at(n):
                # Attributes this tick leaves as they were (static ones, toggles between
                # two toggles) cost a check each: a long run of them is a slice too.
                unchanged += 1
                if unchanged >= TICK_SLICE_UNCHANGED:
                    unchanged = 0
                    for runtime in list(self._runtimes):
                        runtime.hand_over()
                    yield
                continue
            sample = state.compute(n, now)
            subs = state.subs
            if subs is None:  # its last subscriber left during a pause of this tick
                continue
            if not isinstance(subs, dict):
                # The common case (one advised item): what the loop below does for a
                # one-item chunk, without building the list and the chunk.
                subs.deliver(sample)
                done += 1
                if done >= TICK_SLICE_DELIVERIES:
                    done = 0
                    for runtime in list(self._runtimes):
                        runtime.hand_over()
                    replaced(TICK_SLICE_DELIVERIES, len(self._active))
                    yield
                continue
            for chunk in chunks(list(subs), TICK_SLICE_DELIVERIES):
                for item in chunk:
                    if item in subs:
                        item.deliver(sample)
                done += len(chunk)
                if done >= TICK_SLICE_DELIVERIES:
                    replaced(done, len(self._active))
                    done = 0
                    for runtime in list(self._runtimes):
                        runtime.hand_over()
                    yield
        for runtime in list(self._runtimes):
            runtime.flush(now)
        replaced(done, len(self._active))

    def _late(self, behind_s: float, now: float) -> None:
        """Count a tick that starts ``behind_s`` late; warn at most every few seconds."""
        self.late_scans += 1
        self.skipped_scans += int(behind_s / self.scan_s)
        self.max_behind_s = max(self.max_behind_s, behind_s)
        if now - self._late_report_at < LATE_SCAN_LOG_INTERVAL_S:
            return
        scans0, late0, skipped0 = self._late_reported
        log.warning(
            "plant cannot keep its %g ms scan: %d of the last %d ticks started late, %d "
            "scans skipped, up to %.1f ms behind (%d advised attributes); values change "
            "less often than the scan says",
            self.scan_s * 1000,
            self.late_scans - late0,
            self.scans - scans0 + 1,
            self.skipped_scans - skipped0,
            behind_s * 1000,
            len(self._active),
        )
        self._late_reported = (self.scans, self.late_scans, self.skipped_scans)
        self._late_report_at = now

    def scan_stats(self) -> dict[str, float]:
        """The scan clock's counters (what ``late_scans`` and friends say; for metrics)."""
        return {
            "scan_interval_ms": self.scan_s * 1000,
            "scans": self.scans,
            "late_scans": self.late_scans,
            "skipped_scans": self.skipped_scans,
            "max_behind_ms": round(self.max_behind_s * 1000, 3),
            "advised_attributes": len(self._active),
        }

    def start(self) -> None:
        """Start the scan clock on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mxgw-sim-scan")

    async def stop(self) -> None:
        """Stop the scan clock."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Waited for, not awaited: its CancelledError raised here would keep this frame
            # and, from Python 3.12 (a finished frame keeps its caller's), the stopping
            # server's frames with it, for as long as something holds the error.
            await asyncio.wait({task})
            if not task.cancelled():
                task.result()  # an error of the clock's own is raised, as before

    async def _park(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sleep until an advise (:meth:`subscribe`) wakes the clock; the ticks the clock
        would have run meanwhile are counted (:attr:`tick`, :attr:`scans`)."""
        self._parked_at = time.monotonic()
        self._wake = wake = loop.create_future()
        try:
            await wake
        finally:
            self._wake = None
            n = self.tick
            self._scans += n - self._tick_n
            self._tick_n = n
            self._parked_at = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            if self.scan_s < PARK_BELOW_S and self.parked():
                await self._park(loop)
                deadline = loop.time()
            deadline += self.scan_s
            now = loop.time()
            delay = deadline - now
            if delay < 0:  # fell behind: do not try to catch up with a burst
                self._late(-delay, now)
                deadline = now
                delay = 0
            await asyncio.sleep(delay)
            self._scans += 1
            try:
                slicer = Slicer()
                for _ in self._tick(time.time()):
                    await slicer.checkpoint()
            except Exception:  # one bad value must not stop the clock for every session
                log.exception("scan tick %d failed", self.tick)
