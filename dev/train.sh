#!/usr/bin/env bash
# Install MEANet-FL into ./.venv (once), train a MEANet on CIFAR-100 (no federation) and evaluate its adaptive inference.
# Override the schedule with environment variables, e.g. EPOCHS=30 CLOUD_MODEL=resnet110_cifar dev/train.sh
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
OUT=${OUT:-runs/cifar100-resnet32}
.venv/bin/meanet train --dataset "${DATASET:-cifar100}" --model "${MODEL:-resnet32_cifar}" \
  --cloud-model "${CLOUD_MODEL:-resnet56_cifar}" --epochs "${EPOCHS:-4}" --cloud-epochs "${CLOUD_EPOCHS:-4}" \
  --extension-epochs "${EXTENSION_EPOCHS:-3}" --out "$OUT"
.venv/bin/meanet evaluate --run "$OUT" --policy "${POLICY:-paper}" --json "$OUT/eval.json" --plots "$OUT/plots"
