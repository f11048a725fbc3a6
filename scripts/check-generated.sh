#!/usr/bin/env bash
# Fail when src/mxgateway/generated differs from what proto/ generates.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/generate_proto.py --check
