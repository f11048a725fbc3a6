"""Value conversion, driven by the shared fixtures in ``fixtures/values``."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import json_format

from fixtureio import FIXTURES, decode
from mxgateway import _values, from_mx_value, to_mx_value
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.values import VALUE_TYPES

CASES: list[dict[str, Any]] = json.loads(
    (FIXTURES / "values" / "value-conversion-cases.json").read_text(encoding="utf-8")
)["cases"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_value_case(case: dict[str, Any]) -> None:
    value = decode(case["input"])
    if "error" in case:
        with pytest.raises(ValueError, match=case["error"]):
            to_mx_value(value, case.get("type"))
        return
    mx = to_mx_value(value, case.get("type"))
    assert json_format.MessageToDict(mx) == case["expect"]
    # The wire form survives serialisation unchanged.
    assert pb.MxValue.FromString(mx.SerializeToString()) == mx
    expected = decode(case["roundTrip"]) if "roundTrip" in case else value
    if isinstance(expected, datetime):
        expected = expected.astimezone(timezone.utc)
    assert _same(from_mx_value(mx), expected)


def test_every_scalar_kind_is_covered_by_a_fixture() -> None:
    kinds = set()
    for case in CASES:
        if "expect" in case:
            mx = json_format.ParseDict(case["expect"], pb.MxValue())
            kinds.add(mx.WhichOneof("kind") or "null")
    expected = {f.name for f in pb.MxValue.DESCRIPTOR.oneofs_by_name["kind"].fields} | {"null"}
    assert kinds == expected


def test_times_come_back_aware_utc() -> None:
    local = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=-5)))
    back = from_mx_value(to_mx_value(local))
    assert isinstance(back, datetime)
    assert back.tzinfo is timezone.utc
    assert back == local


def test_error_names_offending_array_element() -> None:
    with pytest.raises(ValueError, match=r"element 2: str 'x'"):
        to_mx_value([1, 2, "x"])


_SAMPLES: dict[str, Any] = {
    "bool": True,
    "int32": 5,
    "int64": 5,
    "float": 1.5,
    "double": 1.5,
    "string": "s",
    "datetime": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    "elapsed": timedelta(seconds=1.5),
    "bytes": b"x",
}


def test_the_field_table_agrees_with_the_contract_and_the_type_tags() -> None:
    # One table (_values._FIELDS) names the MxValue and MxArray field of each value type
    # for the scalar and the array setter: it covers the type tags' value types, and a
    # field set by copying is a message field.
    assert set(_values._FIELDS) == set(VALUE_TYPES) == set(_values._TYPE_TAGS) == set(_SAMPLES)
    scalars = pb.MxValue.DESCRIPTOR.fields_by_name
    arrays = pb.MxArray.DESCRIPTOR.fields_by_name
    for kind, (field, array_field) in _values._FIELDS.items():
        assert (scalars[field].message_type is not None) == (kind in _values._MESSAGE_KINDS)
        assert array_field is None or array_field in arrays


@pytest.mark.parametrize("kind", VALUE_TYPES)
def test_each_value_type_sets_its_own_field_as_scalar_and_array(kind: Any) -> None:
    sample = _SAMPLES[kind]
    mx = to_mx_value(sample, kind)
    assert mx.WhichOneof("kind") == _values._FIELDS[kind][0]
    assert from_mx_value(mx) == sample
    if kind == "bytes":
        with pytest.raises(ValueError, match="arrays of bytes are not supported"):
            to_mx_value([sample], kind)
        return
    mx = to_mx_value([sample, sample], kind)
    assert len(getattr(mx.array_value, str(_values._FIELDS[kind][1]))) == 2
    assert from_mx_value(mx) == [sample, sample]


_CONTRACT_FIELDS: dict[str, tuple[str, str | None]] = {
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
"""The MxValue and MxArray field each explicit value type travels in, written out here (not
read from ``_values._FIELDS``): a gateway reads an Integer from ``int32_value``, a Float
from ``float_value``; a value in a neighbouring field of its kind would decode to the same
Python value, so only the field names tell them apart."""


@pytest.mark.parametrize("kind", VALUE_TYPES)
def test_each_value_type_travels_in_the_contracts_field(kind: Any) -> None:
    field, array_field = _CONTRACT_FIELDS[kind]
    sample = _SAMPLES[kind]
    assert to_mx_value(sample, kind).WhichOneof("kind") == field
    if array_field is not None:
        array = to_mx_value([sample, sample], kind).array_value
        filled = [f.name for f, _ in array.ListFields() if f.name.endswith("_values")]
        assert filled == [array_field]
