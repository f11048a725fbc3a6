"""The simulator (``mxgateway_sim.GatewaySimulator``) in a bench subprocess.

``python -m bench.sim_server --galaxy-objects N --scan-ms MS --tags-out FILE ...`` starts the
real simulated gateway on 127.0.0.1 (plaintext, the bench API key), writes the references of
the writeable scalar Double attributes of its catalog to ``--tags-out`` (one a line), prints
one JSON line ``{"address": ...}`` and serves until terminated. It exists (instead of
``mxgw-sim serve``) so the benchmarks can set the scan interval, the synthetic galaxy size
and the session/event limits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._common import API_KEY

_WRITEABLE = frozenset({-1, 4, 5, 6, 7, 8, 9, 10, 11, 14})
# COM MxDataType of the scalars the bench writes: Boolean, Integer, Double, String.
_BENCH_TYPES = frozenset({1, 2, 4, 5})


def select_tags(catalog: Any) -> list[str]:
    """``reference<TAB>COM data type`` of every writeable scalar the bench can write."""
    return [
        f"{t.full_tag_reference}\t{t.mx_data_type}"
        for t in catalog.all_tags()
        if not t.is_array
        and t.mx_data_type in _BENCH_TYPES
        and t.mx_attribute_category in _WRITEABLE
        and t.security_classification not in (2, 3, 6)
    ]


async def serve(args: argparse.Namespace) -> None:
    """Start the simulator, report, serve until SIGTERM/SIGINT."""
    from mxgateway_sim import GatewaySimulator, SessionOptions

    options = SessionOptions(
        max_sessions=args.max_sessions,
        max_sessions_per_key=args.max_sessions,  # one bench key opens every session
        event_queue_limit=args.event_queue_limit,
        multiple_subscribers=True,
        max_subscribers=8,
    )
    db = None
    if args.galaxy_objects and args.db_dir:
        # Synthetic galaxies are cached between runs (creating 2,600 objects takes seconds).
        from mxgateway_sim.galaxy._schema import db_file_name  # names carry the schema version

        db = Path(args.db_dir) / db_file_name(args.galaxy_objects, 0)
    sim = GatewaySimulator(
        api_keys=[API_KEY],
        galaxy_objects=args.galaxy_objects or None,
        galaxy_db=db,
        scan_interval_ms=args.scan_ms,
        flaky_one_in=0,
        max_sessions=args.max_sessions,
        session_options=options,
        galaxy_poll_interval=3600.0,
    )
    await sim.start()
    try:
        assert sim.plant is not None
        catalog = sim.plant.catalog
        tags = select_tags(catalog)
        if args.tags_out:
            text = "\n".join(tags) + "\n"
            await asyncio.to_thread(Path(args.tags_out).write_text, text, encoding="utf-8")
        print(
            json.dumps(
                {"address": sim.endpoint, "tags": len(tags), "all_tags": len(catalog.all_tags())}
            ),
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await sim.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.sim_server")
    parser.add_argument("--galaxy-objects", type=int, default=0, help="0 = default plant")
    parser.add_argument(
        "--db-dir",
        default=str(Path(tempfile.gettempdir()) / "mxgw-bench-galaxy"),
        help="where synthetic galaxy databases are cached ('' = the simulator's default)",
    )
    parser.add_argument("--scan-ms", type=int, default=200)
    parser.add_argument("--max-sessions", type=int, default=64)
    parser.add_argument("--event-queue-limit", type=int, default=10_000)
    parser.add_argument("--tags-out", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.db_dir:
        Path(args.db_dir).mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
