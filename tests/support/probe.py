"""A fresh interpreter's answer, for tests of what a process loads or sees at start (the
test process has everything imported already)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["fresh_python"]


def fresh_python(code: str, env: Mapping[str, str] | None = None) -> Any:
    """Run ``code`` in a new interpreter (this one's executable; ``env``: its environment,
    else this process's) and return the JSON document its last line of output prints."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=None if env is None else dict(env),
    )
    return json.loads(result.stdout.splitlines()[-1])
