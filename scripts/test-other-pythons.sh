#!/usr/bin/env bash
# The tests that lean on CPython and grpcio internals (docs/architecture.md, "Where we rely
# on CPython and grpcio internals"), their fallbacks, and a smoke of client-simulator round
# trips, on each other Python the project supports: python3.10, python3.12, python3.13.
# Each one found (on PATH, or a pyenv install: ~/.pyenv/versions/3.X*/bin/python) gets a
# fresh venv with `.[dev]` installed; a version not found is skipped and named as such.
# .ci/run runs it; by hand: bash scripts/test-other-pythons.sh [3.10 3.12 ...]
# MXGW_PYTHONS_REQUIRED=1 turns a missing version into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mxgw-pythons.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

VERSIONS=("$@")
if [ ${#VERSIONS[@]} -eq 0 ]; then
  VERSIONS=(3.10 3.12 3.13)
fi

# The subset: the internals and their fallbacks (gRPC batches, the call-end settle, the GC
# policy's ctypes slicing), the 3.10 timeout classes, struct-packed values and rows, and
# round trips through the public API against the simulator (commands, events, writes,
# a subscription, the Galaxy on SQLite). 166 tests, about 11 s of CPU a version (the rest
# of their 45-50 s under load is waiting); each install about 25 s of CPU, pip's cache warm.
TESTS=(
  tests/client/test_client_grpcbatch_available.py
  tests/client/test_client_grpcbatch_fallback.py
  tests/sim/test_sim_grpcbatch_fallback.py
  "tests/client/test_client_command_stream.py::test_a_close_that_finds_no_status_task_only_cancels"
  "tests/client/test_client_command_stream.py::test_a_client_closed_against_a_slow_gateway_leaves_no_grpc_completion_behind"
  tests/sim/test_sim_gc.py
  tests/sim/test_sim_gc_sliced_safety.py
  tests/client/test_client_writes.py
  tests/client/test_client_sim.py
  tests/reliability/test_subscription.py
  tests/galaxy/test_galaxy_client.py
  tests/test_values.py
)
# test_client_sim.py's round trips with the simulator inline only: its [process] variants
# (a worker process each, 1-2 s) and TLS handshake (5 s) are two thirds of its time, and
# neither is where the interpreters differ.
DESELECT=(--deselect tests/client/test_client_sim.py::test_tls_self_signed
  -k "not (test_client_sim and process)")

# The first candidate that runs and is that version (a pyenv shim on PATH may exist for a
# version pyenv does not have selected, and fail).
declare -A PYTHONS
find_python() {
  local version=$1 candidate
  for candidate in "$(command -v "python$version" || true)" \
      "$HOME"/.pyenv/versions/"$version".*/bin/python /root/.pyenv/versions/"$version".*/bin/python; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c \
        "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$version'.split('.'))))" \
        >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

found=()
skipped=()
for version in "${VERSIONS[@]}"; do
  if python=$(find_python "$version"); then
    echo "Python $version: $python ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
    found+=("$version")
    PYTHONS[$version]=$python
  else
    echo "Python $version: SKIPPED, not found (no python$version on PATH, no pyenv install)"
    skipped+=("$version")
  fi
done

# The installs side by side (mostly waiting on downloads and disk), the tests one version
# at a time.
start=$SECONDS
pids=()
for version in "${found[@]}"; do
  (
    "${PYTHONS[$version]}" -m venv "$WORK/venv-$version"
    "$WORK/venv-$version/bin/python" -m pip install --quiet --upgrade pip
    "$WORK/venv-$version/bin/python" -m pip install --quiet -e ".[dev]"
  ) >"$WORK/install-$version.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    cat "$WORK/install-${found[$i]}.log" >&2
    echo "Python ${found[$i]}: the install failed" >&2
    exit 1
  fi
done
echo "installed .[dev] for ${found[*]:-nothing} in $((SECONDS - start)) s"

for version in "${found[@]}"; do
  start=$SECONDS
  "$WORK/venv-$version/bin/python" -m pytest -q -p no:randomly -p no:cacheprovider \
    "${DESELECT[@]}" "${TESTS[@]}"
  echo "Python $version: passed ($((SECONDS - start)) s)"
done

echo "Other Pythons tested: ${found[*]:-none}; skipped (not found): ${skipped[*]:-none}"
if [ ${#skipped[@]} -gt 0 ] && [ "${MXGW_PYTHONS_REQUIRED:-}" = "1" ]; then
  echo "MXGW_PYTHONS_REQUIRED=1: a version was not found" >&2
  exit 1
fi
