"""VARIANT conversion between pywin32 and the gateway, over the project's value tables.

pywin32 hands event arguments over as Python objects (``VT_I2``/``VT_I4``/``VT_UI1``... as
``int``, ``VT_R4``/``VT_R8`` as ``float``, ``VT_DATE`` as a ``datetime``, a SAFEARRAY as a
``tuple``, a SAFEARRAY of ``VT_UI1`` as ``bytes``, ``VT_CY``/``VT_DECIMAL`` as ``Decimal``),
so the VARIANT tag itself is gone by the time the runtime sees a value. The rules, as
upstream describes them:

* the Python kind of a value decides its MX data type and VARIANT type through
  :data:`mxgateway.values.TYPE_TAGS` (the one table the library, CLI and simulator use):
  ``bool`` -> Boolean, 8-32-bit integers -> Integer, 64-bit -> Int64 (data type Unknown),
  ``float`` -> Double, ``str`` -> String, ``datetime`` -> Time, ``bytes`` -> raw passthrough;
* an optional expected-type hint (the attribute's ``mx_data_type``) refines it through the
  simulator's MX-type table (:func:`mxgateway_sim._coerce.wire_type`): Float instead of
  Double, BigString/Reference instead of String, a 64-bit FILETIME or an OLE date as Time,
  100-ns ticks or seconds as ElapsedTime;
* arrays stay arrays (one value per element), never one flag.

Times. A ``VT_DATE`` (an OLE date: days since 1899-12-30) is a wall clock with no zone, and
pywin32 hands it over as a ``pywintypes.datetime`` labelled UTC *without converting it*
(``PyWinObject_FromDATE`` -> ``PyWinObject_FromSYSTEMTIME`` in pywin32's PyTime.cpp, which
attaches ``win32timezone.TimeZoneInfo.utc()`` to any SYSTEMTIME; pywin32 issue #1760 shows
local wall clocks arriving labelled UTC). So the rule, :func:`as_utc`:

* a naive ``datetime``, a ``pywintypes.datetime`` (pywin32's label is not a zone) and an
  OLE date ``float`` are wall clocks in the *date zone*: the gateway host's local zone
  (``None``, the default: MXAccess is an in-process COM server on this host, and OLE dates
  are local by convention; a vendor example writes ``Write2`` times from ``GetLocalTime``,
  domain reference 1.3) or the zone the runtime is given (``timezone.utc`` for a node whose
  MXAccess reports UTC); the public sources do not settle which MXAccess uses (domain
  reference 4.6, open question 2);
* any other aware ``datetime`` is the instant it says;
* a 64-bit ``int`` with a Time hint is a FILETIME, UTC by definition.

Writing, the reverse: the instant becomes its wall clock in the date zone, handed to
pywin32 labelled UTC, because pywin32 puts the UTC fields of ``astimezone(UTC)`` into the
``VT_DATE`` (``PyWinObject_AsSYSTEMTIME``; a naive value would be taken as local there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Final

from mxgateway.values import (
    INT64_MAX,
    INT64_MIN,
    TYPE_TAGS,
    MxPythonValue,
    ValueType,
    array_value_type,
    infer_value_type,
    to_mx_value,
)
from mxgateway_sim._coerce import wire_type
from mxgateway_sim._domain import (
    COM_TO_PROTO,
    MX_DOUBLE,
    MX_ELAPSED_TIME,
    MX_FLOAT,
    MX_NO_DATA,
    MX_STRING,
    MX_TIME,
    invalid_arg,
)

__all__ = [
    "VT_ARRAY",
    "VT_EMPTY",
    "DateZone",
    "as_utc",
    "from_variant",
    "time_from_variant",
    "time_to_variant",
    "to_variant",
]

VT_EMPTY: Final = 0
VT_DATE: Final = 7
VT_ARRAY: Final = 0x2000
MX_UNKNOWN: Final = -1

_DATA_TYPE_OF: dict[ValueType, int] = {k: t[0] - COM_TO_PROTO for k, t in TYPE_TAGS.items()}
"""COM MxDataType per value kind, from the shared table (int64/bytes: -1 Unknown)."""
_VT_OF: dict[ValueType, int] = {k: t[1] for k, t in TYPE_TAGS.items()}
"""Windows VARTYPE per value kind (the proto's VariantType numbers are the VARTYPEs)."""

_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)
_OLE_EPOCH = datetime(1899, 12, 30)  # a wall clock, like every OLE date
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

DateZone = tzinfo | None
"""The zone of ``VT_DATE`` wall clocks: None = the gateway host's local zone (the default),
else that zone (``timezone.utc`` for a node whose MXAccess reports UTC)."""


def _is_wall_clock(value: datetime) -> bool:
    """True for a datetime that carries no real zone: naive, or pywin32's (it labels every
    VT_DATE UTC without converting it)."""
    return value.tzinfo is None or type(value).__module__ == "pywintypes"


def _wall_to_utc(wall: datetime, zone: DateZone) -> datetime:
    """A wall clock in ``zone`` (None: this host's) -> an aware UTC instant.

    An ambiguous wall clock (the hour repeated when daylight saving time ends) is taken as
    its first occurrence; one the local zone cannot convert (before 1970 on Windows) is
    taken as UTC rather than breaking the event.
    """
    naive = wall.replace(tzinfo=None)
    try:
        if zone is None:
            return naive.astimezone(timezone.utc)  # naive: the process's local zone (TZ)
        return naive.replace(tzinfo=zone).astimezone(timezone.utc)
    except (OverflowError, OSError, ValueError):
        return naive.replace(tzinfo=timezone.utc)


def as_utc(value: datetime, zone: DateZone = None) -> datetime:
    """A datetime pywin32 handed over -> the aware UTC instant it stands for (module rule)."""
    if _is_wall_clock(value):
        return _wall_to_utc(value, zone)
    return value.astimezone(timezone.utc)


def time_from_variant(value: object, zone: DateZone = None) -> float:
    """A timestamp VARIANT (``pftItemTimeStamp``) -> seconds since the Unix epoch, UTC.

    ``datetime`` (VT_DATE through pywin32), an OLE date ``float`` (both wall clocks in
    ``zone``) or a FILETIME ``int`` (UTC); anything else (VT_EMPTY) means "no timestamp":
    0.0.
    """
    if isinstance(value, datetime):
        return (as_utc(value, zone) - _EPOCH).total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    if isinstance(value, int):
        instant = _FILETIME_EPOCH + timedelta(microseconds=value // 10)
    else:
        instant = _wall_to_utc(_OLE_EPOCH + timedelta(days=value), zone)
    return (instant - _EPOCH).total_seconds()


def _hinted(value: object, hint: int, zone: DateZone) -> object | None:
    """``value`` as the hinted MX type, or None when the hint does not apply to it."""
    try:
        if hint == MX_TIME and not isinstance(value, (bool, datetime)):
            if isinstance(value, (int, float)):
                return _EPOCH + timedelta(seconds=time_from_variant(value, zone))
            return None
        if hint == MX_ELAPSED_TIME and not isinstance(value, bool):
            if isinstance(value, int):
                return timedelta(microseconds=value // 10)  # 100-ns ticks (LARGE_INTEGER)
            if isinstance(value, float):
                return timedelta(seconds=value)
            return value if isinstance(value, timedelta) else None
    except (OverflowError, ValueError):
        return None  # outside datetime's range: the value stays what it is
    return value


_KNOWN = (bool, int, float, str, bytes, bytearray, memoryview, datetime, timedelta, Decimal)


def _scalar(value: object, zone: DateZone) -> object:
    """A pywin32 scalar -> a value of the shared table (or ``str`` for anything else)."""
    if isinstance(value, datetime):
        return as_utc(value, zone)
    if isinstance(value, Decimal):
        return float(value)  # VT_CY / VT_DECIMAL
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if value is None or isinstance(value, (bool, int, float, str, bytes, timedelta)):
        return value
    return str(value)  # an interface pointer or record: its text, never dropped


def _kind_type(kind: ValueType, hint: int | None) -> int:
    """The MX data type of a value of ``kind``: the hint when it carries that kind."""
    if hint is not None and hint > MX_NO_DATA:
        wanted = wire_type(hint)
        if wanted == kind or (kind == "double" and wanted == "float"):
            return hint
    return _DATA_TYPE_OF[kind]


def from_variant(
    value: object, hint: int | None = None, *, zone: DateZone = None
) -> tuple[MxPythonValue, int]:
    """A value pywin32 handed over -> ``(python value, COM MxDataType)``."""
    if value is None:
        return None, MX_NO_DATA
    if isinstance(value, (tuple, list)):
        return _array(value, hint, zone)
    if not isinstance(value, _KNOWN):
        return str(value), MX_UNKNOWN  # an interface pointer or record: its text
    if _unrepresentable(value):
        return str(value), MX_UNKNOWN
    scalar = _scalar(value, zone)
    if hint is not None:
        hinted = _hinted(scalar, hint, zone)
        if hinted is not None:
            scalar = hinted
    return scalar, _kind_type(infer_value_type(scalar, ""), hint)  # type: ignore[return-value]


def _unrepresentable(value: object) -> bool:
    """A value the gateway's value table refuses (NaN/inf, integers beyond 64 bits): MXAccess
    can report them (a failed sensor, VT_UI8), so they travel as their text, never dropped
    and never breaking the event stream."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return not INT64_MIN <= value <= INT64_MAX
    return False


def _array(
    items: tuple[object, ...] | list[object], hint: int | None, zone: DateZone
) -> tuple[MxPythonValue, int]:
    if any(_unrepresentable(item) for item in items):
        return [str(item) for item in items], MX_STRING
    values: list[object] = []
    for item in items:
        scalar = _scalar(item, zone)
        if hint is not None and scalar is not None:
            hinted = _hinted(scalar, hint, zone)
            scalar = scalar if hinted is None else hinted
        values.append(scalar)
    if not values:
        return [], hint if hint is not None else MX_UNKNOWN
    try:
        kind = array_value_type(values)
    except ValueError:
        # A mixed SAFEARRAY of VARIANTs: kept whole, element by element, as text.
        return [str(v) for v in values], MX_STRING
    if kind == "double":
        values = [float(v) for v in values]  # type: ignore[arg-type]
        return values, (MX_FLOAT if hint == MX_FLOAT else MX_DOUBLE)  # type: ignore[return-value]
    return values, _kind_type(kind, hint)  # type: ignore[return-value]


def _to_com_scalar(value: object, kind: ValueType, zone: DateZone) -> object:
    if kind == "datetime":
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            raise invalid_arg(
                f"datetime {value.isoformat()} is naive; attach a timezone so the instant "
                "is unambiguous"
            )
        utc = value.astimezone(timezone.utc)
        try:
            wall = utc.astimezone(zone) if zone is not None else utc.astimezone()
        except (OverflowError, OSError):  # the local zone cannot place it (Windows, pre-1970)
            wall = utc
        # pywin32 puts the UTC fields of the value into the VT_DATE: label the wall clock
        # UTC so they are its fields (a naive value would be taken as local there).
        return wall.replace(tzinfo=timezone.utc)
    if kind == "elapsed":
        assert isinstance(value, timedelta)
        return value.total_seconds()
    if kind == "bytes":
        raise invalid_arg("a raw (VT_RECORD) value cannot be written through MXAccess")
    return value


def to_variant(
    value: MxPythonValue,
    make_variant: Callable[[int, object], object],
    *,
    zone: DateZone = None,
) -> object:
    """A written value -> the VARIANT MXAccess gets (the value's own type; MXAccess converts
    it to the attribute's type, as it does for every client).

    Raises:
        MxAccessError: E_INVALIDARG for values MXAccess cannot take (raw bytes, naive
            datetimes, out-of-range numbers, mixed arrays).
    """
    try:
        if value is None:
            return make_variant(VT_EMPTY, None)
        to_mx_value(value)  # the library's checks: ranges, finiteness, zones, homogeneity
        if isinstance(value, (list, tuple)):
            kind = array_value_type(value)
            items = [_to_com_scalar(v, kind, zone) for v in value]
            if kind == "double":
                items = [float(v) for v in items]  # type: ignore[arg-type]
            return make_variant(VT_ARRAY | _VT_OF[kind], items)
        kind = infer_value_type(value, "")
        return make_variant(_VT_OF[kind], _to_com_scalar(value, kind, zone))
    except ValueError as exc:
        raise invalid_arg(str(exc)) from None


def time_to_variant(
    value: datetime, make_variant: Callable[[int, object], object], *, zone: DateZone = None
) -> object:
    """Write2's ``pItemTime``: a VT_DATE."""
    return make_variant(VT_DATE, _to_com_scalar(value, "datetime", zone))
