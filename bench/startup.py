"""``python -m bench startup``: how long ``mxgw-py`` takes to start, against the floor.

The floor is ``python -c "import grpc, google.protobuf"`` (the gRPC stack every command
needs); issue 14's target is ``mxgw-py version`` under twice that. Each case runs as a new
process, interleaved round by round so a change of machine load hits every case alike; the
median is the figure, the minimum the best case. The load average before and after is
recorded with the result, since the machine is shared.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import machine_info, rnd


def _mxgw_py() -> list[str]:
    script = Path(sys.executable).with_name("mxgw-py")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mxgateway_cli"]


def cases() -> dict[str, list[str]]:
    """Case name -> command line."""
    cli = _mxgw_py()
    return {
        "floor_import_grpc_protobuf": [sys.executable, "-c", "import grpc, google.protobuf"],
        "mxgw_py_version": [*cli, "version"],
        "mxgw_py_help": [*cli, "--help"],
        "mxgw_py_read_help": [*cli, "read", "--help"],
    }


def _time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def run(quick: bool = False) -> dict[str, Any]:
    """Time every case ``rounds`` times (after one warm-up round) and summarise."""
    rounds = 3 if quick else 15
    commands = cases()
    load_before = os.getloadavg()
    for argv in commands.values():  # warm the page cache and .pyc files
        _time_once(argv)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            samples[name].append(_time_once(argv))
    load_after = os.getloadavg()
    results = {
        name: {
            "median_ms": rnd(statistics.median(values) * 1000.0, 1),
            "min_ms": rnd(min(values) * 1000.0, 1),
            "max_ms": rnd(max(values) * 1000.0, 1),
        }
        for name, values in samples.items()
    }
    floor = results["floor_import_grpc_protobuf"]["median_ms"]
    version = results["mxgw_py_version"]["median_ms"]
    ratio = rnd(version / floor, 2) if floor else None
    return {
        "benchmark": "startup",
        "quick": quick,
        "command": "python -m bench startup" + (" --quick" if quick else ""),
        "machine": machine_info(),
        "load_average_before": [rnd(x, 2) for x in load_before],
        "load_average_after": [rnd(x, 2) for x in load_after],
        "rounds": rounds,
        "commands": {
            name: " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv))
            for name, argv in commands.items()
        },
        "results": {**results, "version_over_floor": ratio},
        "targets": [
            {
                "name": "mxgw_py_version_over_import_floor",
                "goal": "< 2.0 (median)",
                "measured": ratio,
                "met": ratio is not None and ratio < 2.0,
            }
        ],
        "skipped": [],
        "notes": "medians of interleaved runs; the machine is shared, see load averages",
    }
