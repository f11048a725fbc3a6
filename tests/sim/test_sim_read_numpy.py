"""The numpy path of a read plan (``mxgateway_sim._readvec``): every value it computes is
bit for bit what the generator gives, and the switch that turns it off.

The plans' rows on both paths are compared with the row-by-row path by the plan tests
(``test_sim_bulk_fast_paths``, ``test_sim_read_plan_sizes``: parametrised by ``numpy_path``).
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import types
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_sim_bulk_fast_paths import _model_catalog

from mxgateway_sim import _readplan, _readvec
from mxgateway_sim._plant import (
    BATCHED,
    Plant,
    _cycle,
    _float_walk,
    _int_counter,
    _int_ramp,
    _int_walk,
    _ramp,
    _sine,
    _toggle,
    round3,
)
from mxgateway_sim._wire import varint

np = pytest.importorskip("numpy")


def _bits(values: list[object]) -> list[object]:
    """Values with each float as its bits (``0.0`` and ``-0.0`` differ, NaN equals NaN)."""
    return [struct.pack("<d", v) if type(v) is float else (type(v), v) for v in values]


def _params(rng: random.Random, count: int) -> dict[object, list[object]]:
    """Parameters of each generator the arrays compute: the model's and any others of the
    kinds its parameters are (fractions of any size, hashes of all 64 bits)."""
    hashes = [0, 1, (1 << 64) - 1, 1 << 63] + [rng.getrandbits(64) for _ in range(count)]
    return {
        _sine: [
            (rng.uniform(0.001, 1e4), rng.randint(1, 5000), rng.uniform(-10.0, 10.0))
            for _ in range(count)
        ],
        _ramp: [(rng.uniform(0.001, 1e3), rng.uniform(0.01, 1e5)) for _ in range(count)],
        _float_walk: [(h, rng.uniform(0.001, 1e6)) for h in hashes],
        _int_walk: [(h,) for h in hashes],
        _toggle: [(rng.randint(1, 50), rng.randint(0, 1)) for _ in range(count)],
        _int_counter: [(rng.randint(0, 2**31),) for _ in range(count)],
        _int_ramp: [(rng.randint(0, 999),) for _ in range(count)],
        _cycle: [(rng.randint(1, 50), rng.randint(0, 20)) for _ in range(count)],
    }


def test_arrays_give_each_generators_values_bit_for_bit() -> None:
    """``vector(f, params)(n)`` is ``[f(p, n) for p in params]`` (and ``BATCHED[f]``),
    type and bits, over ~2 million values: random parameters of each generator, the model
    catalog's, at ticks near and far (a sine's angle of every size, a random walk's
    lattice point of every 64-bit pattern). Nothing here depends on the CPU's vector
    unit: a sine is ``math.sin``'s, the rest correctly rounded operations."""
    rng = random.Random(2026)
    params = _params(rng, 2_000)
    plant = Plant(_model_catalog(200), scan_interval_ms=1, flaky_one_in=0)
    for info in plant.catalog.all_tags():
        state = plant.state(info.full_tag_reference)
        assert state is not None
        if state.gen_function in params:
            params[state.gen_function].append(state.gen_args)
    # A plan's group has one period: toggles of one period are made ahead, by turn.
    uniform: list[object] = [(7, p[1]) for p in params[_toggle]]  # type: ignore[index]
    ticks = [0, 1, 7, 8, 9, 10, 11, 12_345, 10**9 + 7, 2**40 + 3, 2**53 - 1]
    ticks += [rng.randrange(0, 2**53) for _ in range(40)]
    cases: list[tuple[object, list[object]]] = [*params.items(), (_toggle, uniform)]
    for function, some in cases:
        values = _readvec.vector(function, some)  # type: ignore[arg-type]
        assert values is not None, function
        batch = BATCHED[function]  # type: ignore[index]
        for n in ticks:
            array = values(n)
            assert array is not None
            want = [function(p, n) for p in some]  # type: ignore[operator]
            got = array.tolist()
            assert _bits(got) == _bits(want), (function, n)
            assert _bits(batch(some, n)) == _bits(want), (function, n)
    # Ticks the arrays do not hold exactly: left to the Python batch.
    sines = _readvec.vector(_sine, params[_sine])
    assert sines is not None and sines(2**53) is None and sines(-1) is None


def test_arrays_round_as_round3() -> None:
    """``_round3`` of an array gives ``round(x, 3)``'s bits for each element: random
    values of every magnitude, at and next to halves of a thousandth, zeros of both signs,
    huge values, infinities and NaN (with no range known, and within a range known)."""
    rng = random.Random(11)
    values = [rng.uniform(-200.0, 200.0) for _ in range(50_000)]
    values += [rng.uniform(-1.0, 1.0) * 10.0 ** rng.randint(-9, 14) for _ in range(50_000)]
    for k in range(-1500, 1500):
        for d in (0.0, 0.0005, -0.0005, 0.00049999999, 0.0005000001, 5e-13, -5e-13):
            values.append(k / 1000 + d)
    values += [0.0, -0.0, 0.0625, -0.0625, 2.675, 1e-300, -1e-300, 1e300, float("inf")]
    values += [-float("inf"), 99_999_999.9995, -99_999_999.9995, 1e8 + 0.0005, float("nan")]
    values += [4.5e12 + 0.5, 1e11 / 1000, 1e11 / 1000 - 0.0005, 2.0**52 / 1000]
    want = _bits([round(x, 3) for x in values])
    assert _bits([round3(x) for x in values]) == want
    assert _bits(_readvec._round3(np.array(values), False).tolist()) == want
    small = [x for x in values if abs(x) < _readvec._BOUND]
    got = _readvec._round3(np.array(small), True).tolist()
    assert _bits(got) == _bits([round(x, 3) for x in small])


def test_templates_splice_rows_as_struct_does() -> None:
    """``FixedRows`` (rows right-aligned in a template, cut out by one ``struct`` call)
    gives each row's head, payload and tail as ``struct`` packs them one by one, for
    Doubles, Floats and Booleans, heads of several lengths, tails of several sizes."""
    rng = random.Random(5)
    heads = [bytes(rng.getrandbits(8) for _ in range(rng.randint(3, 60))) for _ in range(300)]
    cases = [
        ("d", 8, np.array([rng.uniform(-1e6, 1e6) for _ in heads])),
        ("f", 4, np.array([rng.uniform(-1e6, 1e6) for _ in heads])),
        ("?", 1, np.array([rng.random() < 0.5 for _ in heads])),
    ]
    for code, width, values in cases:
        for tail in (b"", b"\x22\x07abcdefg", bytes(range(19)), bytes(range(21))):
            rows = _readvec.FixedRows(heads, code, width, len(tail))
            for again in (values, values[::-1].copy()):
                want = [
                    head + struct.pack(f"<{code}", value) + tail
                    for head, value in zip(heads, again.tolist(), strict=True)
                ]
                assert list(rows.rows(again, tail)) == want


@pytest.mark.parametrize(("setting", "enabled"), [("0", False), ("1", True), (None, True)])
def test_the_numpy_path_is_switched_off_by_the_environment(
    setting: str | None, enabled: bool
) -> None:
    """``MXGW_SIM_NUMPY=0`` turns the numpy path off (the operator's switch); unset or
    anything else leaves it on where numpy is installed."""
    env = {k: v for k, v in os.environ.items() if k != "MXGW_SIM_NUMPY"}
    if setting is not None:
        env["MXGW_SIM_NUMPY"] = setting
    out = subprocess.run(
        [sys.executable, "-c", "from mxgateway_sim import _readvec; print(_readvec.ENABLED)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == str(enabled)


def test_varints_encode_as_the_wire_does() -> None:
    """``varints`` (an Integer's varint, a row of bytes each, all as long) gives
    ``varint``'s bytes for values of every length up to 35 bits, at the edges of each
    length, and ``varint_width`` their length."""
    rng = random.Random(3)
    values = [0, 1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**31 - 1]
    values += [2**35 - 1] + [rng.randrange(0, 2 ** rng.randint(1, 35)) for _ in range(20_000)]
    by_width: dict[int, list[int]] = {}
    for v in values:
        assert _readvec.varint_width(v) == len(varint(v)), v
        by_width.setdefault(len(varint(v)), []).append(v)
    assert sorted(by_width) == [1, 2, 3, 4, 5]
    for width, some in by_width.items():
        got = _readvec.varints(np.array(some, dtype=np.int64), width)
        assert [bytes(row) for row in got] == [varint(v) for v in some]


def test_a_sine_is_the_one_python_takes_whatever_numpys_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The arrays' sine is ``math.sin``'s, the one the generator calls, not ``np.sin``
    (which a numpy build may take from another implementation, e.g. SVML: on this
    machine's build the two agree, so a sine that is not ``math.sin``'s stands in for
    such a platform here): the values stay the generator's bit for bit."""
    import math

    sin = math.sin
    monkeypatch.setattr(math, "sin", lambda x: sin(x) * 0.999)  # another libm's sine
    rng = random.Random(7)
    params = _params(rng, 500)[_sine]
    values = _readvec.vector(_sine, params)
    assert values is not None
    for n in (0, 1, 13, 12_345, 10**9 + 7):
        array = values(n)
        assert array is not None
        assert _bits(array.tolist()) == _bits([_sine(p, n) for p in params]), n


_STEPS = [(0, 0.5), (0, 0.5), (1, 0.25), (17, 0.0005), (17, 0.5), (3, 0.5), (250, 0.75)]
_STEPS += [(10_000, 0.125), (1, 0.5), (0, 0.5), (5, 0.0625), (40, 0.5)]
"""Ticks between reads and the fraction of a second of each read's time (its timestamp's
nanoseconds take 4 or 5 bytes)."""


async def test_planned_reads_answer_the_same_wire_bytes_on_both_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two simulators of one catalog, one reading with the numpy path and one without,
    answer a poller's planned reads with the same bytes on the wire (not only the same
    decoded messages: a varint written longer than it must decodes the same), read after
    read at the same ticks and times, and a later read of single attributes (another
    call, row by row) then finds the same values in both. The ticks step by 1 to 10,000,
    so Integers cross varint lengths within a group and a read recomputes, re-encodes or
    keeps its groups."""
    from mxgateway_sim import Plant, SimulatedRuntime
    from mxgateway_sim import _plant as plant_module
    from mxgateway_sim import _simruntime as simruntime
    from mxgateway_sim._slicing import chunks
    from mxgateway_sim._svc_common import READ_CHUNK_ROWS

    names = ("Flag", "Count", "Gauge", "Level", "State", "Setpoint", "Mode", "Stamp")
    tags = [f"Obj{i:03d}.{name}" for i in range(300) for name in names]
    singles = tags[::7]
    now = [1_764_000_000.5]
    clock = types.SimpleNamespace(time=lambda: now[0])
    monkeypatch.setattr(simruntime, "time", clock)
    monkeypatch.setattr(plant_module, "time", clock)  # the row-by-row path's samples

    async def runtime() -> tuple[SimulatedRuntime, Plant, int]:
        plant = Plant(_model_catalog(300), scan_interval_ms=1, flaky_one_in=0)
        sim = SimulatedRuntime(plant)
        await sim.start(lambda events: None)
        return sim, plant, await sim.register("paths")

    def read(sim: SimulatedRuntime, hlmx: int, key: bytes, refs: list[str]) -> bytes:
        memo = sim.read_memo(key)
        assert memo is not None
        wires: list[bytes | None] = []
        if memo.rows is None:
            for chunk in chunks(refs, READ_CHUNK_ROWS):
                wires.append(sim.read_wire(hlmx, chunk, 1 << 24, memo=memo))
        else:
            for part, rows in enumerate(memo.rows):
                wires.append(sim.read_wire(hlmx, None, 1 << 24, memo=memo, rows=rows, part=part))
        memo.done()
        assert None not in wires
        return b"".join(w for w in wires if w is not None)

    sides = {True: await runtime(), False: await runtime()}
    templated: list[bool] = []  # an Integer group's rows spliced by templates, or not
    splice_ints = _readplan._Group._splice_ints

    def counted(group: _readplan._Group, *args: Any) -> Any:
        rows = splice_ints(group, *args)
        templated.append(rows is not None)
        return rows

    monkeypatch.setattr(_readplan._Group, "_splice_ints", counted)
    try:
        # Two reads more where the largest Integer counter is 1,023, then 1,024: the last
        # of the pieces kept for 0 to 1,023 (INT_PIECES) and the first one past them.
        first = sides[True][1]
        counters = [first.state(ref) for ref in tags]
        bases = [st.gen_args[0] for st in counters if st and st.gen_function is _int_counter]
        top = max(base for base in bases if isinstance(base, int))
        steps = [*_STEPS[:3], (1023 - top - 1, 0.5), (1, 0.25), *_STEPS[3:]]
        for step, (ticks, fraction) in enumerate(steps):
            now[0] = 1_764_000_000 + step + fraction
            wires = {}
            for on, (sim, plant, hlmx) in sides.items():
                monkeypatch.setattr(_readvec, "ENABLED", on)
                plant.tick += ticks
                wires[on] = (read(sim, hlmx, b"poll", tags), read(sim, hlmx, b"one", singles))
            assert wires[True] == wires[False], step
        # Both ways of an Integer group's rows on the numpy path were taken: by templates
        # (varints all as long) and by pieces (a group's values straddling a length).
        assert set(templated) == {True, False}
    finally:
        for sim, _, _ in sides.values():
            await sim.close()


async def test_array_values_a_row_cannot_hold_go_row_by_row() -> None:
    """A Float's value beyond float32, or a Double's or Float's NaN or infinity, does not
    fit a group's templates (``numpy`` would write an infinity or a NaN's bits where the
    row-by-row path encodes what the generated classes do): the group's array splice says
    so (None) and the rows go row by row, as the pure-Python splice does for such values.
    No catalog's generator makes such values today; a new one could."""
    from mxgateway_sim import Plant, SimulatedRuntime
    from mxgateway_sim._slicing import chunks
    from mxgateway_sim._svc_common import READ_CHUNK_ROWS
    from mxgateway_sim._wire import FIXED_DOUBLE, FIXED_FLOAT

    plant = Plant(_model_catalog(100), scan_interval_ms=1, flaky_one_in=0)
    runtime = SimulatedRuntime(plant)
    await runtime.start(lambda events: None)
    try:
        hlmx = await runtime.register("fit")
        tags = [f"Obj{i:03d}.{name}" for i in range(100) for name in ("Gauge", "Level")]
        for _ in range(3):  # remembered, then planned, then computed by the plans
            plant.tick += 5
            memo = runtime.read_memo(b"poll")
            assert memo is not None
            if memo.rows is None:
                for chunk in chunks(tags, READ_CHUNK_ROWS):
                    runtime.read_wire(hlmx, chunk, 1 << 24, memo=memo)
            else:
                for part, rows in enumerate(memo.rows):
                    runtime.read_wire(hlmx, None, 1 << 24, memo=memo, rows=rows, part=part)
            memo.done()
        cache = runtime._read_rows
        assert cache is not None
        groups = [g for _, p in cache.plans.values() if p is not None for g in p.groups]
        groups = [g for g in groups if g.fixed and g.kind in (FIXED_DOUBLE, FIXED_FLOAT)]
        assert {g.kind for g in groups} == {FIXED_DOUBLE, FIXED_FLOAT}
        for group in groups:
            assert group.fixed is not None
            tail = bytes(19)
            misfits = [float("nan"), float("inf"), -float("inf")]
            if group.kind == FIXED_FLOAT:
                misfits += [1e39, -3.5e38]
            for misfit in misfits:
                values = [1.5] * len(group.parts)
                values[-1] = misfit
                assert group._splice_array(np.array(values), group.fixed, tail) is None
                assert group._splice(values, tail) is None  # the pure-Python splice
            fits = np.array([1.5] * len(group.parts))
            assert group._splice_array(fits, group.fixed, tail) is not None
    finally:
        await runtime.close()


_ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
_ANY_INT = st.integers(-(2**64), 2**64)
_ANY_PARAMS = {
    _sine: st.tuples(_ANY_FLOAT, st.one_of(_ANY_INT, _ANY_FLOAT), _ANY_FLOAT),
    _ramp: st.tuples(_ANY_FLOAT, _ANY_FLOAT),
    _float_walk: st.tuples(st.integers(0, 2**64 - 1), _ANY_FLOAT),
    _int_walk: st.tuples(st.integers(0, 2**64 - 1)),
    _toggle: st.tuples(_ANY_INT, _ANY_INT),
    _int_counter: st.tuples(_ANY_INT),
    _int_ramp: st.tuples(_ANY_INT),
    _cycle: st.tuples(_ANY_INT, _ANY_INT),
}


class _Given:
    """Drawn values given in turn (the function, its parameters, the tick): an explicit
    example of the property test below."""

    def __init__(self, *values: object) -> None:
        self.values = list(values)

    def draw(self, strategy: object) -> Any:
        return self.values.pop(0)


@settings(max_examples=400, deadline=None)
@given(st.data())
@example(data=_Given(_int_ramp, [(2**63 - 1,)], 5))  # 64-bit wrap-around: 96, not 12
@example(data=_Given(_cycle, [(1, 2**63 - 3)], 5))
@example(data=_Given(_ramp, [(0.0, -1.0), (1.0, -1.0)], 3))
def test_arrays_give_any_parameters_generators_values_or_leave_them(data: Any) -> None:
    """Parameters no catalog makes today (negative, zero, huge, infinite amplitudes and
    periods, integers past 64 bits): the arrays give the generator's values bit for bit, or
    leave them to the Python batch (``vector`` or its tick answers None), never other
    values. (Found: an integer ramp's or a cycle's base near 2**63 wrapped around in 64-bit
    integers.)"""
    function = data.draw(st.sampled_from(sorted(_ANY_PARAMS, key=lambda f: f.__name__)))
    params = data.draw(st.lists(_ANY_PARAMS[function], min_size=1, max_size=5))
    n = data.draw(st.one_of(st.integers(0, 200), st.integers(0, 2**53 + 2)))
    try:
        want = [function(p, n) for p in params]  # type: ignore[operator]
    except (ArithmeticError, ValueError):
        return  # the generator itself refuses them
    with np.errstate(all="ignore"):
        values = _readvec.vector(function, params)  # type: ignore[arg-type]
        array = None if values is None else values(n)
    if array is not None:
        assert _bits(array.tolist()) == _bits(want), (params, n)
