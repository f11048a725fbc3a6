"""Conversion between Python values and ``MxValue`` (the one place this rule lives).

The library, the CLI and the simulator all convert through this module, so a value means
the same thing everywhere. The table is closed:

==================  ==========================  ==========================
Python              MxValue member              MxDataType / VARTYPE
==================  ==========================  ==========================
``None``            ``is_null``                 NO_DATA / VT_EMPTY
``bool``            ``bool_value``              BOOLEAN / VT_BOOL
``int`` (32-bit)    ``int32_value``             INTEGER / VT_I4
``int`` (64-bit)    ``int64_value``             UNKNOWN / VT_I8
``float``           ``double_value``            DOUBLE / VT_R8 (``float_value`` with type "float")
``str``             ``string_value``            STRING / VT_BSTR
aware ``datetime``  ``time_value`` (UTC)        TIME / VT_DATE
``timedelta``       ``elapsed_time_value``      ELAPSED_TIME / VT_R8
``bytes``           ``raw_value``               UNKNOWN / VT_RECORD (opaque, never interpreted)
``list``/``tuple``  ``array_value`` (1-D)       element type as above / VT_ARRAY
==================  ==========================  ==========================

Non-finite floats, naive datetimes, out-of-range integers, mixed-type and nested arrays
raise ``ValueError`` with a message naming the offending value or element.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Literal, cast

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = [
    "VALUE_TYPES",
    "MxPythonValue",
    "ValueType",
    "datetime_to_timestamp",
    "fill_mx_value",
    "from_mx_value",
    "timestamp_to_datetime",
    "to_mx_value",
]

ValueType = Literal[
    "bool", "int32", "int64", "float", "double", "string", "datetime", "elapsed", "bytes"
]
"""Explicit value types accepted by :func:`to_mx_value` (and the CLI's ``--type``)."""

VALUE_TYPES: tuple[ValueType, ...] = (
    "bool",
    "int32",
    "int64",
    "float",
    "double",
    "string",
    "datetime",
    "elapsed",
    "bytes",
)

_Scalar = bool | int | float | str | datetime | timedelta | bytes
MxPythonValue = _Scalar | list[_Scalar] | None
"""What :func:`from_mx_value` returns."""

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# (data type, variant type) per explicit value type.
_TYPE_TAGS: dict[ValueType, tuple[int, int]] = {
    "bool": (pb.MX_DATA_TYPE_BOOLEAN, pb.VT_BOOL),
    "int32": (pb.MX_DATA_TYPE_INTEGER, pb.VT_I4),
    "int64": (pb.MX_DATA_TYPE_UNKNOWN, pb.VT_I8),
    "float": (pb.MX_DATA_TYPE_FLOAT, pb.VT_R4),
    "double": (pb.MX_DATA_TYPE_DOUBLE, pb.VT_R8),
    "string": (pb.MX_DATA_TYPE_STRING, pb.VT_BSTR),
    "datetime": (pb.MX_DATA_TYPE_TIME, pb.VT_DATE),
    "elapsed": (pb.MX_DATA_TYPE_ELAPSED_TIME, pb.VT_R8),
    "bytes": (pb.MX_DATA_TYPE_UNKNOWN, pb.VT_RECORD),
}

# (MxValue field, MxArray field) per explicit value type; None: no arrays of it.
_FIELDS: dict[ValueType, tuple[str, str | None]] = {
    "bool": ("bool_value", "bool_values"),
    "int32": ("int32_value", "int32_values"),
    "int64": ("int64_value", "int64_values"),
    "float": ("float_value", "float_values"),
    "double": ("double_value", "double_values"),
    "string": ("string_value", "string_values"),
    "datetime": ("time_value", "time_values"),
    "elapsed": ("elapsed_time_value", "elapsed_time_values"),
    "bytes": ("raw_value", None),
}

# The value types whose MxValue field is a message (set by copying, not assigning).
_MESSAGE_KINDS: frozenset[ValueType] = frozenset({"datetime", "elapsed"})

# COM MxDataType value per proto enum value (proto = COM + 2 for these enums).
_COM_OFFSET = 2


def datetime_to_timestamp(value: datetime, *, what: str = "datetime") -> Timestamp:
    """Convert an aware ``datetime`` to a UTC ``Timestamp``; naive values are rejected."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(
            f"{what} {value.isoformat()} is naive; attach a timezone (for example "
            "tzinfo=timezone.utc) so the instant is unambiguous"
        )
    delta = value - _EPOCH
    ts = Timestamp()
    seconds = delta.days * 86400 + delta.seconds
    ts.seconds = seconds
    ts.nanos = delta.microseconds * 1000
    return ts


def timestamp_to_datetime(ts: Timestamp) -> datetime:
    """Convert a ``Timestamp`` to an aware UTC ``datetime`` (microsecond precision)."""
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def _duration(value: timedelta) -> Duration:
    d = Duration()
    d.FromTimedelta(value)
    return d


def _check_int(value: int, kind: ValueType, where: str) -> int:
    lo, hi = (INT32_MIN, INT32_MAX) if kind == "int32" else (INT64_MIN, INT64_MAX)
    if not lo <= value <= hi:
        raise ValueError(f"{where}{value} is out of range for {kind} [{lo}, {hi}]")
    return value


def _check_float(value: float, kind: ValueType, where: str) -> float:
    if not math.isfinite(value):
        raise ValueError(
            f"{where}{value!r} is not finite; MXAccess has no representation for nan/inf"
        )
    if kind == "float" and abs(value) > FLOAT32_MAX:
        raise ValueError(f"{where}{value!r} overflows a 32-bit float")
    return value


def _infer(value: object, where: str) -> ValueType:
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int32" if INT32_MIN <= value <= INT32_MAX else "int64"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, timedelta):
        return "elapsed"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    raise ValueError(
        f"{where}cannot convert {type(value).__name__} {value!r} to an MxValue; use bool, int, "
        "float, str, datetime, timedelta, bytes or a list of one of them"
    )


def _coerce(value: object, kind: ValueType, where: str) -> object:
    """Check ``value`` against ``kind`` and return it in the form the proto field takes."""
    bad = ValueError(f"{where}{type(value).__name__} {value!r} is not a valid {kind} value")
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind in ("int32", "int64"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return _check_int(value, kind, where)
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return _check_float(float(value), kind, where)
    if kind == "string":
        if not isinstance(value, str):
            raise bad
        return value
    if kind == "datetime":
        if not isinstance(value, datetime):
            raise bad
        return datetime_to_timestamp(value, what=f"{where}datetime")
    if kind == "elapsed":
        if not isinstance(value, timedelta):
            raise bad
        return _duration(value)
    if kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise bad
        return bytes(value)
    raise ValueError(f"unknown value type {kind!r}; expected one of {', '.join(VALUE_TYPES)}")


def _array_kind(items: Sequence[object]) -> ValueType:
    if any(isinstance(item, (list, tuple)) for item in items):
        raise ValueError("nested lists are not supported; MXAccess arrays are one-dimensional")
    kinds = [_infer(item, f"element {i}: ") for i, item in enumerate(items)]
    first = kinds[0]
    numeric = {"int32", "int64", "double"}
    if first in numeric:
        for i, k in enumerate(kinds):
            if k not in numeric:
                raise ValueError(
                    f"element {i}: {type(items[i]).__name__} {items[i]!r} does not match the "
                    f"array's {first} elements; arrays must be homogeneous"
                )
        if "double" in kinds:
            return "double"
        return "int64" if "int64" in kinds else "int32"
    for i, k in enumerate(kinds):
        if k != first:
            raise ValueError(
                f"element {i}: {type(items[i]).__name__} {items[i]!r} does not match the "
                f"array's {first} elements; arrays must be homogeneous"
            )
    return first


def _fill_array(arr: pb.MxArray, kind: ValueType, items: Sequence[object]) -> None:
    values = [_coerce(item, kind, f"element {i}: ") for i, item in enumerate(items)]
    data_type, variant = _TYPE_TAGS[kind]
    arr.element_data_type = data_type  # type: ignore[assignment]
    arr.element_variant_type = variant  # type: ignore[assignment]
    field = _FIELDS[kind][1]
    if field is None:
        raise ValueError("arrays of bytes are not supported; VT_RECORD values are scalars")
    getattr(arr, field).extend(values)


def to_mx_value(value: object, type: ValueType | None = None) -> pb.MxValue:
    """Convert a Python value to an ``MxValue``.

    Args:
        value: ``None``, ``bool``, ``int``, ``float``, ``str``, aware ``datetime``,
            ``timedelta``, ``bytes``, or a homogeneous ``list``/``tuple`` of one of them.
        type: Force a value type (for arrays: the element type) instead of inferring it,
            for example ``"int64"`` for a small int or ``"float"`` for a 32-bit float.

    Raises:
        ValueError: The value cannot be represented (non-finite float, naive datetime,
            out-of-range int, mixed-type array...); the message names the culprit.
    """
    mx = pb.MxValue()
    fill_mx_value(mx, value, type)
    return mx


def fill_mx_value(mx: pb.MxValue, value: object, type: ValueType | None = None) -> None:
    """Like :func:`to_mx_value`, but fills an empty ``MxValue`` in place (for example a row
    of a bulk command), which saves copying the value into its parent message."""
    if type is None:
        # Fast path for the common scalars (bulk writes convert one value per row); anything
        # unusual, including non-finite floats and 64-bit ints, takes the general path below.
        cls = value.__class__
        if cls is float:
            number = cast(float, value)
            if number - number == 0.0:  # false for nan and +/-inf
                mx.data_type = pb.MX_DATA_TYPE_DOUBLE
                mx.variant_type = pb.VT_R8
                mx.raw_data_type = pb.MX_DATA_TYPE_DOUBLE - _COM_OFFSET
                mx.double_value = number
                return
        elif cls is int:
            integer = cast(int, value)
            if INT32_MIN <= integer <= INT32_MAX:
                mx.data_type = pb.MX_DATA_TYPE_INTEGER
                mx.variant_type = pb.VT_I4
                mx.raw_data_type = pb.MX_DATA_TYPE_INTEGER - _COM_OFFSET
                mx.int32_value = integer
                return
        elif cls is bool:
            mx.data_type = pb.MX_DATA_TYPE_BOOLEAN
            mx.variant_type = pb.VT_BOOL
            mx.raw_data_type = pb.MX_DATA_TYPE_BOOLEAN - _COM_OFFSET
            mx.bool_value = cast(bool, value)
            return
        elif cls is str:
            mx.data_type = pb.MX_DATA_TYPE_STRING
            mx.variant_type = pb.VT_BSTR
            mx.raw_data_type = pb.MX_DATA_TYPE_STRING - _COM_OFFSET
            mx.string_value = cast(str, value)
            return
    if value is None:
        mx.is_null = True
        mx.data_type = pb.MX_DATA_TYPE_NO_DATA
        mx.variant_type = pb.VT_EMPTY
        mx.raw_data_type = pb.MX_DATA_TYPE_NO_DATA - _COM_OFFSET
        return
    if type is not None and type not in _TYPE_TAGS:
        raise ValueError(f"unknown value type {type!r}; expected one of {', '.join(VALUE_TYPES)}")
    if isinstance(value, (list, tuple)):
        arr = mx.array_value
        if value:
            kind = type or _array_kind(value)
            _fill_array(arr, kind, value)
        elif type is not None:
            _fill_array(arr, type, value)
        else:
            arr.element_data_type = pb.MX_DATA_TYPE_UNKNOWN
            arr.element_variant_type = pb.VT_EMPTY
        mx.data_type = arr.element_data_type
        mx.variant_type = pb.VT_ARRAY
        mx.raw_data_type = arr.element_data_type - _COM_OFFSET
        return
    kind = type or _infer(value, "")
    coerced = _coerce(value, kind, "")
    data_type, variant = _TYPE_TAGS[kind]
    mx.data_type = data_type  # type: ignore[assignment]
    mx.variant_type = variant  # type: ignore[assignment]
    mx.raw_data_type = data_type - _COM_OFFSET
    field = _FIELDS[kind][0]
    if kind in _MESSAGE_KINDS:
        getattr(mx, field).CopyFrom(coerced)
    else:
        setattr(mx, field, coerced)


def _array_from(arr: pb.MxArray) -> list[_Scalar]:
    vt = arr.element_variant_type
    if vt == pb.VT_BOOL:
        return list(arr.bool_values)
    if vt == pb.VT_I4:
        return list(arr.int32_values)
    if vt == pb.VT_I8:
        return list(arr.int64_values)
    if vt == pb.VT_R4:
        # float32 values come back widened to double (0.1 -> 0.10000000149011612).
        return list(arr.float_values)
    if vt == pb.VT_BSTR:
        return list(arr.string_values)
    if vt == pb.VT_DATE:
        return [timestamp_to_datetime(t) for t in arr.time_values]
    if arr.element_data_type == pb.MX_DATA_TYPE_ELAPSED_TIME or arr.elapsed_time_values:
        return [d.ToTimedelta() for d in arr.elapsed_time_values]
    if vt == pb.VT_R8:
        return list(arr.double_values)
    # Unknown element type: return whichever list is populated.
    for values in (
        arr.bool_values,
        arr.int32_values,
        arr.int64_values,
        arr.float_values,
        arr.double_values,
        arr.string_values,
    ):
        if values:
            return list(values)
    return []


def from_mx_value(mx: pb.MxValue) -> MxPythonValue:
    """Convert an ``MxValue`` to the Python value of the table above.

    Null/empty values give ``None``; times give aware UTC datetimes; arrays give lists.
    """
    which = mx.WhichOneof("kind")
    if which is None:
        return None
    if which == "int32_value":
        return mx.int32_value
    if which == "double_value":
        return mx.double_value
    if which == "bool_value":
        return mx.bool_value
    if which == "string_value":
        return mx.string_value
    if which == "float_value":
        return mx.float_value
    if which == "int64_value":
        return mx.int64_value
    if which == "time_value":
        return timestamp_to_datetime(mx.time_value)
    if which == "elapsed_time_value":
        return mx.elapsed_time_value.ToTimedelta()
    if which == "raw_value":
        return mx.raw_value
    return _array_from(mx.array_value)
