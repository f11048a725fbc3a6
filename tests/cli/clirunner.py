"""Run ``mxgw-py`` in-process with captured streams (the CLI's ``main(argv) -> int``)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mxgateway_cli.main import main


@dataclass
class Result:
    """Exit code and captured output of one run."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as one JSON document."""
        return json.loads(self.out)

    def error(self) -> dict[str, Any]:
        """stderr parsed as the ``{"error": {...}}`` document."""
        doc = json.loads(self.err)
        assert set(doc) == {"error"}
        return dict(doc["error"])


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, stdin: str = "") -> Result:
    """Run the CLI; ``env`` replaces the process environment for flag defaults; ``stdin``
    is its standard input."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, env=dict(env or {}), stdin=io.StringIO(stdin))
    return Result(code, out.getvalue(), err.getvalue())
