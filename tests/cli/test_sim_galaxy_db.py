"""``mxgw-sim serve`` without ``--galaxy-db``: a private Galaxy per server, path printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import KEY, start_sim, stop_sim

DEPLOY = [sys.executable, "-c", "from mxgateway_sim.cli import run; run()", "deploy"]


def test_each_server_has_its_own_galaxy_and_prints_its_path(tmp_path: Path) -> None:
    first = start_sim(["--plaintext", "--api-key", KEY], tmp_path / "a.log")
    try:
        second = start_sim(["--plaintext", "--api-key", KEY], tmp_path / "b.log")
        try:
            paths = [Path(s.extra["galaxyDb"]) for s in (first, second)]
            assert paths[0] != paths[1]
            assert all(p.is_file() for p in paths)
            # `deploy` takes the printed path; only that server's Galaxy changes.
            before = paths[1].read_bytes()
            done = subprocess.run(
                [*DEPLOY, "--galaxy-db", str(paths[0]), "--add", "1"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert paths[1].read_bytes() == before
        finally:
            stop_sim(second.process)
    finally:
        stop_sim(first.process)
    assert not any(p.exists() for p in paths)  # removed when each server stopped
