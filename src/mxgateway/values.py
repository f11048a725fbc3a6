"""Value conversion between Python and ``MxValue``: the public face of the one value table.

The library, the CLI, the simulator and the MXAccess COM runtime all convert through these
functions, so a value means the same thing everywhere (the table is in the docstring of
:mod:`mxgateway._values`, where it is implemented). The simulator and the COM runtime import
this module, never ``mxgateway._values``: what is here is the stable surface they may rely on.

``to_mx_value``/``from_mx_value`` (and ``VALUE_TYPES``/``ValueType``) are also exported from
the package root; the rest is for code that builds or reads values below the client (servers,
runtimes, tools).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mxgateway._values import (
    _TYPE_TAGS,
    FLOAT32_MAX,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    VALUE_TYPES,
    MxPythonValue,
    ValueType,
    _array_kind,
    _infer,
    datetime_to_timestamp,
    fill_mx_value,
    from_mx_value,
    timestamp_to_datetime,
    to_mx_value,
)

__all__ = [
    "FLOAT32_MAX",
    "INT32_MAX",
    "INT32_MIN",
    "INT64_MAX",
    "INT64_MIN",
    "TYPE_TAGS",
    "VALUE_TYPES",
    "MxPythonValue",
    "ValueType",
    "array_value_type",
    "datetime_to_timestamp",
    "fill_mx_value",
    "from_mx_value",
    "infer_value_type",
    "timestamp_to_datetime",
    "to_mx_value",
]

TYPE_TAGS: Mapping[ValueType, tuple[int, int]] = _TYPE_TAGS
"""``(MxDataType, VARTYPE)`` of the proto enums for each explicit value type."""


def infer_value_type(value: object, where: str = "") -> ValueType:
    """The value type :func:`to_mx_value` gives a scalar ``value`` when none is named.

    Raises:
        ValueError: ``value`` has no MxValue form (the message starts with ``where``).
    """
    return _infer(value, where)


def array_value_type(items: Sequence[object]) -> ValueType:
    """The element type of a non-empty 1-D array (ints widen to int64 or double as needed).

    Raises:
        ValueError: nested, mixed-type or unconvertible elements (naming the element).
    """
    return _array_kind(items)
