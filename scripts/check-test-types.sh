#!/usr/bin/env bash
# Type-check tests/ with the relaxed settings of tests/mypy.ini.
# One run per test folder: each folder is a root of its own (pytest's rootdir-relative
# imports: `from simhelpers import ...`), and every folder has its own conftest.py.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for dir in tests/*/; do
  dir=${dir%/}
  [ "$(basename "$dir")" = "__pycache__" ] && continue
  ls "$dir"/*.py >/dev/null 2>&1 || continue
  MYPYPATH="tests:$dir" mypy --config-file tests/mypy.ini "$dir" || status=1
done
MYPYPATH=tests mypy --config-file tests/mypy.ini tests/*.py || status=1
exit $status
