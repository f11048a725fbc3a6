"""Fixture loading: the tagged Python values of ``fixtures/values`` and upstream's own
command replies in ``fixtures/upstream``."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from mxgateway.generated import mxaccess_gateway_pb2 as pb

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


UPSTREAM = FIXTURES / "upstream"
"""Upstream's own fixtures (verbatim or reconstructed; see ``fixtures/upstream/README.md``)."""


def upstream_document(name: str) -> dict[str, Any]:
    """The protobuf-JSON document of the upstream fixture ``name``."""
    doc: dict[str, Any] = json.loads((UPSTREAM / name).read_text(encoding="utf-8"))
    return doc


def upstream_reply(name: str) -> pb.MxCommandReply:
    """The upstream command-reply fixture ``name`` as an ``MxCommandReply`` (strict: a
    member our bindings do not know fails)."""
    return json_format.ParseDict(upstream_document(name), pb.MxCommandReply())
