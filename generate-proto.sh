#!/usr/bin/env bash
# Regenerate src/mxgateway/generated from proto/ (needs the [dev] extra installed).
set -euo pipefail
cd "$(dirname "$0")"
exec "${PYTHON:-python}" scripts/generate_proto.py "$@"
