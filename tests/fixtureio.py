"""Decoding of the tagged Python values used by ``fixtures/values``."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
"""Root of the shared protobuf-JSON fixtures."""


def decode(tagged: dict[str, Any]) -> Any:
    """Turn a fixture's tagged value (``{"int": 1}``, ``{"datetime": "..."}``) into Python."""
    ((tag, raw),) = tagged.items()
    if tag == "null":
        return None
    if tag in ("bool", "int", "str"):
        return raw
    if tag == "float":
        return float(raw)
    if tag == "datetime":
        return datetime.fromisoformat(raw)
    if tag == "timedelta":
        return timedelta(seconds=raw)
    if tag == "bytes":
        return base64.b64decode(raw)
    if tag == "list":
        return [decode(item) for item in raw]
    if tag == "dict":
        return dict(raw)
    raise ValueError(f"unknown fixture tag {tag!r}")
