"""Plant terms: quality words, data type names, float precision, local times."""

from __future__ import annotations

import struct
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_cli import _plant
from mxgateway_sim import _domain


@pytest.mark.parametrize(
    ("quality", "text"),
    [
        (192, "Good"),
        (0, "Bad"),
        (4, "Bad (Config Error)"),
        (8, "Bad (Not Connected)"),
        (24, "Bad (Comm Failure)"),
        (32, "Bad (Waiting for Initial Data)"),
        (64, "Uncertain"),
        (68, "Uncertain (Last Usable)"),
        (69, "Uncertain (Last Usable, Low Limited)"),
        (216, "Good (Local Override)"),
        (195, "Good (Constant)"),
        (65544, "Bad (Not Connected, vendor 0x100)"),
        (128, "Unknown quality (128)"),
        (-1, "Unknown quality (-1)"),
    ],
)
def test_quality_words(quality: int, text: str) -> None:
    assert _plant.quality_text(quality) == text


def test_the_simulators_qualities_have_the_words_of_their_names() -> None:
    assert _plant.quality_text(_domain.QUALITY_GOOD) == "Good"
    assert _plant.quality_text(_domain.QUALITY_BAD) == "Bad"
    assert _plant.quality_text(_domain.QUALITY_BAD_CONFIG_ERROR) == "Bad (Config Error)"
    assert _plant.quality_text(_domain.QUALITY_BAD_COMM_FAILURE) == "Bad (Comm Failure)"
    assert _plant.quality_text(_domain.QUALITY_UNCERTAIN) == "Uncertain"
    assert _plant.quality_text(_domain.QUALITY_UNCERTAIN_LAST_USABLE) == "Uncertain (Last Usable)"


def test_data_type_names() -> None:
    assert _plant.data_type_name(pb.MX_DATA_TYPE_DOUBLE) == "Double"
    assert _plant.data_type_name(pb.MX_DATA_TYPE_BIG_STRING) == "BigString"
    assert _plant.data_type_name(pb.MX_DATA_TYPE_ELAPSED_TIME) == "ElapsedTime"
    assert _plant.data_type_name(999) == "UNKNOWN(999)"


def test_float32_prints_at_its_own_precision() -> None:
    as_float32 = struct.unpack("<f", struct.pack("<f", 10.214))[0]
    assert as_float32 == 10.21399974822998
    assert _plant.float32_text(as_float32) == "10.214"
    assert _plant.float32_text(100.0) == "100"
    assert _plant.value_text(pb.MxValue(float_value=as_float32)) == "10.214"


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_text_reads_back_as_the_same_float(number: float) -> None:
    text = _plant.float32_text(number)
    assert struct.unpack("<f", struct.pack("<f", float(text)))[0] == number


def test_times_are_local_iso_with_offset() -> None:
    when = datetime(2026, 1, 5, 6, 0, 0, 123000, tzinfo=timezone.utc)
    text = _plant.time_text(when)
    assert datetime.fromisoformat(text) == when
    assert text.endswith(
        when.astimezone().strftime("%z")[:3] + ":" + when.astimezone().strftime("%z")[3:]
    )


def test_set_writes_each_type_as_the_library_encodes_it() -> None:
    """``set``'s attribute type -> value type table agrees with ``to_mx_value``: the value
    goes out with the attribute's own data type (a BigString as a String, as MXAccess
    takes it)."""
    from datetime import timedelta

    import mxgateway
    from mxgateway_cli._cmd_tags import _VALUE_TYPE_OF

    samples = {
        "bool": True,
        "int32": 1,
        "float": 1.5,
        "double": 1.5,
        "string": "x",
        "datetime": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "elapsed": timedelta(seconds=1),
    }
    for data_type, value_type in _VALUE_TYPE_OF.items():
        encoded = mxgateway.to_mx_value(samples[value_type], value_type)  # type: ignore[arg-type]
        expected = pb.MX_DATA_TYPE_STRING if data_type == pb.MX_DATA_TYPE_BIG_STRING else data_type
        assert encoded.data_type == expected, (data_type, value_type)
