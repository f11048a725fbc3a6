"""Entry point of ``mxgw-py``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import mxgateway


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` and return the exit code."""
    parser = argparse.ArgumentParser(prog="mxgw-py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    version = sub.add_parser("version", help="print package and protocol versions")
    version.add_argument("--json", action="store_true", help="deterministic JSON output")
    args = parser.parse_args(argv)
    if args.command == "version":
        info = mxgateway.version_info()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for key, value in info.items():
                print(f"{key}: {value}")
    return 0


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())
