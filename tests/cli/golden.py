"""Golden files for the CLI's JSON: normalise volatile values, then compare byte-exact.

Volatile values (session ids, correlation ids, timestamps, live data values, benchmark
numbers) are replaced here, in the test, never in the CLI. ``MXGW_UPDATE_GOLDEN=1`` rewrites
the files instead of comparing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent / "golden"

_PLACEHOLDERS = {
    "sessionId": "<session-id>",
    "correlationId": "<correlation-id>",
    "gatewayTimestamp": "<timestamp>",
    "workerTimestamp": "<timestamp>",
    "timestamp": "<timestamp>",
}
_VALUE_MEMBERS = (
    "boolValue",
    "int32Value",
    "int64Value",
    "floatValue",
    "doubleValue",
    "stringValue",
    "timeValue",
    "elapsedTimeValue",
)


def normalise(document: Any, parent: str = "") -> Any:
    """Replace volatile values by placeholders, keeping keys, order and types of the rest."""
    if isinstance(document, dict):
        out: dict[str, Any] = {}
        for key, value in document.items():
            if key in _PLACEHOLDERS and isinstance(value, str):
                out[key] = _PLACEHOLDERS[key]
            elif key == "workerSequence" and parent == "writeComplete":
                out[key] = "<sequence>"  # depends on how many data changes came first
            elif key in _VALUE_MEMBERS and parent == "value":
                out[key] = "<value>"
            else:
                out[key] = normalise(value, key)
        return out
    if isinstance(document, list):
        return [normalise(item, parent) for item in document]
    return document


def check(name: str, stdout: str, **extra: Any) -> None:
    """Compare the normalised JSON of ``stdout`` with ``golden/<name>.json``."""
    document = normalise(json.loads(stdout))
    for key, value in extra.items():
        document[key] = value
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    path = GOLDEN / f"{name}.json"
    if os.environ.get("MXGW_UPDATE_GOLDEN") == "1":
        path.write_text(text)
        return
    assert path.exists(), f"missing golden file {path}; run with MXGW_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name}: output differs from {path}"
