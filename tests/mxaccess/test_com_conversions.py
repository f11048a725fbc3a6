"""The COM runtime's tables: VARIANT conversion, HRESULT unwrapping, start-up checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from fake_lmx import E_INVALIDARG, NOT_IN_RANGE, FakeComError, Record, Variant, server_error

from mxgateway.values import TYPE_TAGS
from mxgateway_mxaccess._startup import start_problem
from mxgateway_mxaccess._status import (
    DISP_E_EXCEPTION,
    com_error_to_mx,
    hresult_of,
    status_from_record,
    statuses_from_records,
)
from mxgateway_mxaccess._variant import (
    from_variant,
    time_from_variant,
    time_to_variant,
    to_variant,
)
from mxgateway_sim._domain import MxAccessError

UTC = timezone.utc


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        (None, None, (None, 0)),
        (True, None, (True, 1)),
        (7, None, (7, 2)),  # VT_I2/VT_I4/VT_UI1... all arrive as int: Integer
        (2**40, None, (2**40, -1)),  # 64-bit: Int64 on the wire, data type Unknown
        (1.5, None, (1.5, 4)),  # VT_R4 and VT_R8 both arrive as float: Double...
        (1.5, 3, (1.5, 3)),  # ...unless the attribute is known to be Float
        ("x", None, ("x", 5)),
        ("x", 16, ("x", 16)),  # BigString
        ("Tank01", 8, ("Tank01", 8)),  # Reference
        (Decimal("1.25"), None, (1.25, 4)),  # VT_CY / VT_DECIMAL
        (b"\x01\x02", None, (b"\x01\x02", -1)),  # SAFEARRAY(VT_UI1): raw passthrough
        ((1, 2, 3), None, ([1, 2, 3], 2)),  # arrays stay arrays
        ((1, 2.5), None, ([1.0, 2.5], 4)),
        ((1.0, 2.0), 3, ([1.0, 2.0], 3)),
        (("a", 1), None, (["a", "1"], 5)),  # a mixed SAFEARRAY of VARIANTs: kept as text
        ((), 2, ([], 2)),
        (7, 5, (7, 2)),  # a hint that does not fit the value is ignored
        (float("nan"), 4, ("nan", -1)),  # a failed sensor: kept as text, not a broken stream
        (float("-inf"), None, ("-inf", -1)),
        (2**64 - 1, None, (str(2**64 - 1), -1)),  # VT_UI8 beyond Int64
        ((1.0, float("inf")), None, (["1.0", "inf"], 5)),
        (2**62, 6, (2**62, -1)),  # a FILETIME beyond datetime's range stays an Int64
    ],
)
def test_from_variant(value: object, hint: int | None, expected: tuple[object, int]) -> None:
    assert from_variant(value, hint) == expected


def test_from_variant_times() -> None:
    when = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert from_variant(when) == (when, 6)
    naive = datetime(2026, 3, 1, 12, 0)
    assert from_variant(naive, zone=UTC) == (when, 6)  # a VT_DATE wall clock, zone UTC
    filetime = int((when - datetime(1601, 1, 1, tzinfo=UTC)).total_seconds() * 10**7)
    assert from_variant(filetime, 6) == (when, 6)  # a 64-bit FILETIME with a Time hint
    assert from_variant(filetime) == (filetime, -1)  # without the hint: just an Int64
    assert from_variant(2.5, 7) == (timedelta(seconds=2.5), 7)  # ElapsedTime in seconds
    assert from_variant(25_000_000, 7) == (timedelta(seconds=2.5), 7)  # 100-ns ticks
    ole = (when - datetime(1899, 12, 30, tzinfo=UTC)).total_seconds() / 86400
    assert time_from_variant(ole, UTC) == pytest.approx(when.timestamp())
    assert time_from_variant(when) == when.timestamp()
    assert time_from_variant(None) == 0.0


def test_from_variant_unknown_objects_keep_their_text() -> None:
    class Dispatch:
        def __str__(self) -> str:
            return "<PyIDispatch>"

    assert from_variant(Dispatch()) == ("<PyIDispatch>", -1)


def test_data_types_come_from_the_shared_table() -> None:
    # One table: the data type of each kind is the library's, minus the proto offset.
    for kind, value in [("bool", True), ("int32", 1), ("double", 1.0), ("string", "s")]:
        assert from_variant(value)[1] == TYPE_TAGS[kind][0] - 2  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "vt", "carried"),
    [
        (None, 0, None),
        (True, 11, True),
        (5, 3, 5),
        (2**40, 20, 2**40),
        (1.5, 5, 1.5),
        ("s", 8, "s"),
        (
            datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1))),
            7,
            datetime(2026, 3, 1, 12, 0, tzinfo=UTC),  # its UTC wall clock, labelled UTC
        ),
        (timedelta(seconds=3), 5, 3.0),
        ([1, 2], 0x2000 | 3, [1, 2]),
        ([1, 2.5], 0x2000 | 5, [1.0, 2.5]),
    ],
)
def test_to_variant(value: object, vt: int, carried: object) -> None:
    variant = to_variant(value, Variant, zone=UTC)  # type: ignore[arg-type]
    assert isinstance(variant, Variant)
    assert (variant.vt, variant.value) == (vt, carried)


@pytest.mark.parametrize("value", [b"raw", datetime(2026, 1, 1), [1, "a"], 2**70, float("nan")])
def test_to_variant_refuses_what_mxaccess_cannot_take(value: object) -> None:
    with pytest.raises(MxAccessError) as caught:
        to_variant(value, Variant)  # type: ignore[arg-type]
    assert caught.value.hresult == E_INVALIDARG


def test_time_to_variant_is_a_vt_date() -> None:
    v = time_to_variant(datetime(2026, 3, 1, 12, 0, tzinfo=UTC), Variant, zone=UTC)
    assert isinstance(v, Variant) and v.vt == 7
    assert v.value == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_hresult_unwraps_disp_e_exception() -> None:
    hresult, message = hresult_of(server_error(E_INVALIDARG, NOT_IN_RANGE))
    assert hresult == E_INVALIDARG and message.startswith(NOT_IN_RANGE)  # the server's text
    bare = FakeComError(DISP_E_EXCEPTION, "Exception occurred.", None)
    assert hresult_of(bare) == (DISP_E_EXCEPTION, "Exception occurred.")
    # An unsigned HRESULT (as some callers report it) is made signed like the wire's int32.
    hresult, message = hresult_of(FakeComError(0x80070005, ""))
    assert hresult == -2147024891 and "license" in message
    err = com_error_to_mx(FakeComError(-2147221164, "Class not registered"), "Register")
    assert err.hresult == -2147221164 and "32-bit" in err.message


def test_status_records() -> None:
    status = status_from_record(Record(0, 6, 1, 1012))
    assert (status.success, status.category, status.detected_by, status.detail) == (0, 6, 1, 1012)
    assert not status.ok
    assert status_from_record(Record(-1, 0, 1, 0)).ok  # success's raw number decides nothing
    assert statuses_from_records((Record(1, 0, 1, 0), Record(0, 5, 3, 902)))[1].detail == 902
    assert statuses_from_records(None) == ()
    assert len(statuses_from_records(Record(1, 0, 1, 0))) == 1


def test_start_problems() -> None:
    assert "needs Windows" in (start_problem(platform="linux") or "")
    missing = start_problem(platform="win32", pywin32_present=lambda: False)
    assert missing is not None and "[mxaccess]" in missing
    none = start_problem(
        platform="win32", pywin32_present=lambda: True, registration=lambda: "none"
    )
    assert none is not None and "not installed" in none
    wow = start_problem(
        platform="win32",
        pointer_bits=64,
        pywin32_present=lambda: True,
        registration=lambda: "32-bit only",
    )
    assert wow is not None and "32-bit (x86) Python" in wow
    for bits, where in [(32, "32-bit only"), (32, "native"), (64, "native")]:
        assert (
            start_problem(
                platform="win32",
                pointer_bits=bits,
                pywin32_present=lambda: True,
                registration=lambda where=where: where,  # type: ignore[misc]
            )
            is None
        )
