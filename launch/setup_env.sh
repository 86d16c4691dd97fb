#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs sbs_jax into it with its test, hf and tpu extras
# (tpu: libtpu, 200 MB, for `sbs plan --topology`; without a TPU it only compiles).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,hf,tpu]'
