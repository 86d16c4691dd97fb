#!/usr/bin/env bash
# Thin wrapper: `bash launch/tpu.sh SUBCOMMAND ...` runs launch/tpu.py (standard library only).
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/tpu.py" "$@"
