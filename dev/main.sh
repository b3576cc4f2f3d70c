#!/usr/bin/env bash
# The main job: install MEANet-FL into ./.venv (once) and run the federation on Flower's simulation engine with the
# app's default config (pyproject.toml [tool.flwr.app.config]): CIFAR-100 in 2 experiences, 3 edge clients, 2 main
# rounds and 2 edge rounds each (about 11 minutes on 2 cores). Extra arguments go to `meanet federate`, e.g.
# `dev/main.sh -c cloud-epochs=8 -c main-rounds=3`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
if [ -z "${MEANET_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  MEANET_DATA_DIR="$(cd ../shared/data && pwd)"
  export MEANET_DATA_DIR
fi
exec .venv/bin/meanet federate --report-dir "${REPORT_DIR:-runs/federation}" "$@"
