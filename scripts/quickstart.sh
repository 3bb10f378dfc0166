#!/usr/bin/env bash
# The README's main job on a small embedded default. Grows with the open issues into
# synthetic logs -> prepare -> train -> MLflow -> export -> score.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
work="${WORKDIR:-workdir/quickstart}"
recsys=".venv/bin/recsys"
$recsys synth --out "$work/logs" --users 2000 --events-per-user 200 --seed 0
$recsys prepare --spec feature_specs/synthetic.yaml --input "$work/logs" --out "$work/prepared"
$recsys batches "$work/prepared" --split train --batch-size 256 --workers 2
