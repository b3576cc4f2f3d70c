#!/usr/bin/env bash
# Install MEANet-FL with its test extras into ./.venv (once) and run the default test suite.
# Extra arguments go to pytest, e.g. `dev/test.sh -m sim` or `dev/test.sh tests/unit/test_engine.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# The real CIFAR-100 files (see ../shared/data/README.md); tests that need them skip when absent.
if [ -z "${MEANET_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  MEANET_DATA_DIR="$(cd ../shared/data && pwd)"
  export MEANET_DATA_DIR
fi
exec .venv/bin/python -m pytest "$@"
