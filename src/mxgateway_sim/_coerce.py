"""Write-value conversion to an attribute's MX data type, the way MXAccess converts VARIANTs.

Clients often write strings or ints to typed attributes; MXAccess converts them. Failures
map to MxStatusDetail codes: 18 ConversionNotSupported, 19 UnableToConvertString,
20 Overflow, 1005 IncorrectDataType (scalar vs array). The final range and finiteness checks
are those of :func:`mxgateway.values.to_mx_value`, so the simulator accepts exactly the
values the wire can carry.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from mxgateway.values import MxPythonValue, ValueType, to_mx_value
from mxgateway_sim._domain import (
    DETAIL_CONVERSION_NOT_SUPPORTED,
    DETAIL_INCORRECT_DATA_TYPE,
    DETAIL_OVERFLOW,
    DETAIL_UNABLE_TO_CONVERT_STRING,
    MX_BOOLEAN,
    MX_DATA_QUALITY,
    MX_DOUBLE,
    MX_ELAPSED_TIME,
    MX_ENUM,
    MX_FLOAT,
    MX_INTEGER,
    MX_QUALIFIED_ENUM,
    MX_SECURITY_CLASSIFICATION_ENUM,
    MX_TIME,
)
from mxgateway_sim._plant import STRING_TYPES
from mxgateway_sim.galaxy._schema import DATA_TYPE_NAMES

_INT_TYPES = frozenset(
    {MX_INTEGER, MX_ENUM, MX_SECURITY_CLASSIFICATION_ENUM, MX_DATA_QUALITY, MX_QUALIFIED_ENUM}
)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_TRUE = frozenset({"true", "1", "on", "yes"})
_FALSE = frozenset({"false", "0", "off", "no"})


class ConversionError(ValueError):
    """The value cannot be converted; ``detail`` is the MxStatusDetail code."""

    def __init__(self, detail: int, message: str) -> None:
        super().__init__(message)
        self.detail = detail


def wire_type(mx_data_type: int) -> ValueType:
    """The :mod:`mxgateway.values` type that carries values of a COM MxDataType."""
    if mx_data_type == MX_BOOLEAN:
        return "bool"
    if mx_data_type in _INT_TYPES:
        return "int32"
    if mx_data_type == MX_FLOAT:
        return "float"
    if mx_data_type == MX_DOUBLE:
        return "double"
    if mx_data_type == MX_TIME:
        return "datetime"
    if mx_data_type == MX_ELAPSED_TIME:
        return "elapsed"
    return "string"


def _type_name(mx_data_type: int) -> str:
    """``Double (MX data type 4)``: the name people know, the number MXAccess uses."""
    name = DATA_TYPE_NAMES.get(mx_data_type, "an unknown type")
    return f"{name} (MX data type {mx_data_type})"


def _not_supported(value: object, mx_data_type: int) -> ConversionError:
    return ConversionError(
        DETAIL_CONVERSION_NOT_SUPPORTED,
        f"cannot convert a {type(value).__name__} to {_type_name(mx_data_type)}",
    )


def _from_string(text: str, mx_data_type: int) -> object:
    s = text.strip()
    try:
        if mx_data_type == MX_BOOLEAN:
            if s.lower() in _TRUE:
                return True
            if s.lower() in _FALSE:
                return False
            raise ValueError(s)
        if mx_data_type in _INT_TYPES:
            try:
                return int(s)
            except ValueError:
                return _scalar(float(s), mx_data_type)
        if mx_data_type in (MX_FLOAT, MX_DOUBLE):
            return float(s)
        if mx_data_type == MX_TIME:
            parsed = datetime.fromisoformat(s.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        if mx_data_type == MX_ELAPSED_TIME:
            return timedelta(seconds=float(s))
    except (ValueError, OverflowError):
        pass
    raise ConversionError(
        DETAIL_UNABLE_TO_CONVERT_STRING,
        f"the string cannot be converted to {_type_name(mx_data_type)}",
    )


def _scalar(value: object, mx_data_type: int) -> object:
    if isinstance(value, str) and mx_data_type not in STRING_TYPES:
        return _from_string(value, mx_data_type)
    if mx_data_type == MX_BOOLEAN:
        if isinstance(value, (bool, int, float)):
            return bool(value)
    elif mx_data_type in _INT_TYPES:
        if isinstance(value, (bool, int)):
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ConversionError(DETAIL_OVERFLOW, "a non-finite float has no integer value")
            return round(value)
    elif mx_data_type in (MX_FLOAT, MX_DOUBLE):
        if isinstance(value, (bool, int, float)):
            return float(value)
    elif mx_data_type in STRING_TYPES:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
    elif mx_data_type == MX_TIME:
        if isinstance(value, datetime):
            return value
    elif mx_data_type == MX_ELAPSED_TIME:
        if isinstance(value, timedelta):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return timedelta(seconds=value)
    raise _not_supported(value, mx_data_type)


def coerce(value: MxPythonValue, mx_data_type: int, *, array: bool) -> MxPythonValue:
    """Convert a written value to the attribute's type (a list for whole-array targets).

    Raises:
        ConversionError: with the MxStatusDetail code of the failure.
    """
    if not array:  # fast path: a scalar of the attribute's own type (what bulk writes send)
        if type(value) is float:
            if mx_data_type == MX_DOUBLE and math.isfinite(value):
                return value
        elif type(value) is int:
            if mx_data_type in _INT_TYPES and _INT32_MIN <= value <= _INT32_MAX:
                return value
        elif type(value) is bool:
            if mx_data_type == MX_BOOLEAN:
                return value
        elif type(value) is str and mx_data_type in STRING_TYPES:
            return value
    if value is None or isinstance(value, bytes):
        raise _not_supported(value, mx_data_type)
    if array != isinstance(value, list):
        raise ConversionError(
            DETAIL_INCORRECT_DATA_TYPE,
            "an array attribute needs an array value"
            if array
            else "a scalar attribute cannot take an array value",
        )
    kind = wire_type(mx_data_type)
    if isinstance(value, list):
        items = [_scalar(v, mx_data_type) for v in value]
        _check(items, kind)
        return items  # type: ignore[return-value]
    result = _scalar(value, mx_data_type)
    _check(result, kind)
    return result  # type: ignore[return-value]


def _check(value: object, kind: ValueType) -> None:
    try:
        to_mx_value(value, kind)
    except ValueError as exc:
        raise ConversionError(DETAIL_OVERFLOW, str(exc)) from None
