#!/usr/bin/env bash
# The README's main job on a small embedded default: set up, then synthetic logs -> prepare ->
# train sparsectr, grab, din, dnn (TorchRec, MLflow in ./mlflow.db) -> comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/recsys run pipelines/quickstart.yaml "$@"
