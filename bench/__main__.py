"""``python -m bench [all|parse|unary|events|bulk|galaxy|capacity|profile|stall] [--quick]
[--out F]``.

Prints one JSON document. ``all`` runs every benchmark in turn (under 10 minutes on a
2-core machine) and wraps their documents with the machine info; ``stall`` (the loop stall
under attack, several minutes) runs only when named.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from typing import Any

from bench._common import machine_info, rnd

BENCHMARKS = ("parse", "unary", "events", "bulk", "galaxy", "capacity", "profile")
ONLY_WHEN_NAMED = ("stall",)
# Benchmark name -> module (galaxy_memory.py belongs to the Galaxy helpers).
MODULES = {"galaxy": "galaxy_memory", "stall": "loop_stall"}


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
    parser.add_argument("--out", help="also write the JSON document to this file")
    args = parser.parse_args(argv)
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
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
