"""``python -m bench [all|parse|unary|events|bulk|galaxy|capacity|profile|stall|opcua|startup|
worker_hop|worker_floor|worker_instr|metrics|keepup|readcpu|wakeups|gc_valve|unary_floor|
readclient|eventsclient|readpipe|readtail] [--quick] [--out F]``.

Prints one JSON document. ``all`` runs every benchmark in turn (under 10 minutes on a
2-core machine) and wraps their documents with the machine info; ``stall`` (the loop stall
under attack, several minutes) and ``opcua`` (side by side with asyncua, issue 15) run
only when named, as does ``startup`` (``mxgw-py`` start-up against the ``import grpc``
floor, issue 14).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from typing import Any

from bench._common import machine_info, rnd

BENCHMARKS = ("parse", "unary", "events", "bulk", "galaxy", "capacity", "profile")
ONLY_WHEN_NAMED = (
    "stall",
    "opcua",
    "startup",
    "worker_hop",
    "worker_floor",
    "worker_instr",
    "metrics",
    "keepup",
    "readcpu",
    "wakeups",
    "gc_valve",
    "unary_floor",
    "readclient",
    "eventsclient",
    "readpipe",
    "readtail",
)
# Benchmark name -> module (galaxy_memory.py belongs to the Galaxy helpers).
MODULES = {
    "galaxy": "galaxy_memory",
    "stall": "loop_stall",
    "metrics": "metrics_cost",
    "readcpu": "read_cpu",
    "readclient": "read_client",
    "eventsclient": "events_client",
    "readpipe": "read_pipe",
    "readtail": "read_tail",
    "worker_floor": "worker_floor",
}


def clean(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """Import ``bench.<name>`` and run it; a crash becomes an ``error`` entry, not an exit."""
    try:
        module = importlib.import_module(f"bench.{MODULES.get(name, name)}")
        result: dict[str, Any] = module.run(quick=quick)
        return result
    except Exception as exc:
        return {"benchmark": name, "quick": quick, "error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run, print JSON (and write it to ``--out``)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "benchmark", nargs="?", default="all", choices=("all", *BENCHMARKS, *ONLY_WHEN_NAMED)
    )
    parser.add_argument("--quick", action="store_true", help="tiny workloads (smoke test)")
    parser.add_argument(
        "--out", help="also write the JSON document to this new file (never overwritten)"
    )
    parser.add_argument(
        "--out-dir",
        help="also write it to a new file in this directory, named <UTC time>-<benchmark>.json",
    )
    args = parser.parse_args(argv)
    out = new_result_path(args.out, args.out_dir, args.benchmark, args.quick)
    if out is not None and os.path.exists(out):
        print(f"python -m bench: {out} exists; results are never overwritten", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.benchmark == "all":
        doc: dict[str, Any] = {
            "benchmark": "all",
            "quick": args.quick,
            "command": "python -m bench all" + (" --quick" if args.quick else ""),
            "machine": machine_info(),
            "benchmarks": {},
        }
        for name in BENCHMARKS:
            print(f"bench: running {name}...", file=sys.stderr, flush=True)
            doc["benchmarks"][name] = run_one(name, args.quick)
        doc["elapsed_s"] = rnd(time.perf_counter() - t0, 1)
    else:
        doc = run_one(args.benchmark, args.quick)
    text = json.dumps(clean(doc), indent=2, allow_nan=False, default=str)
    print(text)
    if out is not None:
        try:
            with open(out, "x", encoding="utf-8") as fh:  # "x": a result file is never replaced
                fh.write(text + "\n")
        except OSError as exc:
            print(f"python -m bench: cannot write {out}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"bench: wrote {out}", file=sys.stderr)
    return 0


def new_result_path(out: str | None, out_dir: str | None, name: str, quick: bool) -> str | None:
    """Where to write the document: ``--out`` as given, or a new time-stamped file in
    ``--out-dir``. Committed results are never overwritten (the file is opened with "x")."""
    if out:
        return out
    if not out_dir:
        return None
    stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
    suffix = "-quick" if quick else ""
    path = os.path.join(out_dir, f"{stamp}-{name}{suffix}.json")
    n = 2
    while os.path.exists(path):
        path = os.path.join(out_dir, f"{stamp}-{name}{suffix}-{n}.json")
        n += 1
    return path


if __name__ == "__main__":
    raise SystemExit(main())
