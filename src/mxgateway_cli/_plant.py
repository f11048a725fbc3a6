"""Values in plant terms for people: quality in words, data type names, floats at their own
precision, times in local time.

Only the human forms use this; JSON keeps the numbers (``quality: 192``) and adds the words
next to them where a command documents it (``qualityText``).

Quality is the OPC DA 16-bit quality MXAccess carries (AVEVA: "the OPC Draft 3.0 quality
definition"): low byte ``QQSSSSLL`` = quality (Bad 0, Uncertain 1, Good 3), substatus and
limit; the high byte is vendor specific (mxaccess-domain.md 4.5).
"""

from __future__ import annotations

import math
import struct
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from mxgateway import enum_name, from_mx_value

if TYPE_CHECKING:
    from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = [
    "QUALITY_SUBSTATUS",
    "data_type_name",
    "float32_text",
    "is_good",
    "quality_text",
    "time_text",
    "value_text",
]

_QUALITY_WORDS = {0: "Bad", 1: "Uncertain", 3: "Good"}
QUALITY_SUBSTATUS: dict[int, dict[int, str]] = {
    0: {
        1: "Config Error",
        2: "Not Connected",
        3: "Device Failure",
        4: "Sensor Failure",
        5: "Last Known Value",
        6: "Comm Failure",
        7: "Out of Service",
        8: "Waiting for Initial Data",
    },
    1: {1: "Last Usable", 4: "Sensor Not Accurate", 5: "EU Exceeded", 6: "Sub-Normal"},
    3: {6: "Local Override"},
}
"""Quality (the two top bits of the low byte) -> substatus (the next four) -> words
(OPC DA quality codes: 4 Bad Config Error ... 216 Good Local Override)."""
_LIMITS = {1: "Low Limited", 2: "High Limited", 3: "Constant"}


def quality_text(quality: int) -> str:
    """``192`` -> ``Good``, ``4`` -> ``Bad (Config Error)``, ``69`` -> ``Uncertain (Last
    Usable, Low Limited)``; a value outside the OPC table keeps its number."""
    low = quality & 0xFF
    major, substatus, limit = low >> 6, (low >> 2) & 0x0F, low & 0x03
    word = _QUALITY_WORDS.get(major)
    if word is None or quality < 0:
        return f"Unknown quality ({quality})"
    details = []
    if substatus:
        details.append(QUALITY_SUBSTATUS[major].get(substatus, f"substatus {substatus}"))
    if limit:
        details.append(_LIMITS[limit])
    if quality > 0xFF:
        details.append(f"vendor 0x{quality >> 8:X}")
    return f"{word} ({', '.join(details)})" if details else word


def is_good(quality: int) -> bool:
    """True for Good quality (192-255 in the low byte)."""
    return quality >= 0 and (quality & 0xC0) == 0xC0


def data_type_name(data_type: int) -> str:
    """``MX_DATA_TYPE_BIG_STRING`` -> ``BigString`` (``UNKNOWN(n)`` for a newer type)."""
    from mxgateway.generated import mxaccess_gateway_pb2 as pb

    name = enum_name(pb.MxDataType, data_type)
    if name.startswith("UNKNOWN("):
        return name
    return "".join(part.capitalize() for part in name.split("_"))


def float32_text(number: float) -> str:
    """The shortest text that reads back as the same 32-bit float (``10.214``, not
    ``10.21399974822998``)."""
    if not math.isfinite(number):
        return str(number)
    target = struct.unpack("<f", struct.pack("<f", number))[0]
    for digits in range(1, 10):
        text = f"{number:.{digits}g}"
        try:
            if struct.unpack("<f", struct.pack("<f", float(text)))[0] == target:
                return _plain(text)
        except OverflowError:  # rounded up past the largest float32
            continue
    return repr(number)


def _plain(text: str) -> str:
    """``1e+02`` -> ``100`` where the exponent form is only an artefact of ``g``."""
    if "e" in text:
        as_float = float(text)
        if 1e-4 <= abs(as_float) < 1e15:
            return repr(as_float).removesuffix(".0")
    return text


def time_text(value: datetime | None) -> str:
    """A time in the local zone, ISO 8601 to the millisecond with its offset
    (``2026-01-05T07:00:00.123+01:00``); empty for None."""
    if value is None:
        return ""
    return value.astimezone().isoformat(timespec="milliseconds")


def _python_text(python: object) -> str:
    if python is None:
        return "(no data)"
    if isinstance(python, bool):
        return "true" if python else "false"
    if isinstance(python, datetime):
        return time_text(python if python.tzinfo else python.replace(tzinfo=timezone.utc))
    if isinstance(python, timedelta):
        return f"{python.total_seconds():g} s"
    if isinstance(python, bytes):
        return f"<{len(python)} bytes>"
    if isinstance(python, float):
        return repr(python)
    return str(python)


def value_text(value: pb.MxValue) -> str:
    """A value as a person reads it: floats at their own precision, booleans as
    true/false, times local, arrays as ``[a, b, c]``."""
    which = value.WhichOneof("kind")
    if which == "float_value":
        return float32_text(value.float_value)
    if which == "array_value":
        array = value.array_value
        if len(array.float_values):
            return "[" + ", ".join(float32_text(x) for x in array.float_values) + "]"
        python = from_mx_value(value)
        items = python if isinstance(python, list) else []
        return "[" + ", ".join(_python_text(x) for x in items) + "]"
    return _python_text(from_mx_value(value))
