#!/usr/bin/env bash
# Creates .venv in the checkout and installs the pinned torch / fbgemm / torchrec triple plus
# recsys itself. Idempotent: a stamp keyed on this script and pyproject.toml skips a finished setup.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="2.13.0"
FBGEMM_VERSION="1.8.0"
TORCHREC_VERSION="1.8.0"
PYTHON="${PYTHON:-python3}"

stamp_key=$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16)
stamp=".venv/.recsys-setup-${stamp_key}"
if [ -f "$stamp" ]; then
  echo "setup: .venv is up to date (${stamp})"
  exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --upgrade pip

# torch first and alone, so nothing later can replace it with another build.
$pip install -q "torch==${TORCH_VERSION}"

# fbgemm-gpu (CUDA) where a GPU driver is present, fbgemm-gpu-cpu elsewhere; both provide the
# module fbgemm_gpu. torchrec goes in with --no-deps because its metadata always asks for fbgemm-gpu.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  fbgemm="fbgemm-gpu==${FBGEMM_VERSION}"
else
  fbgemm="fbgemm-gpu-cpu==${FBGEMM_VERSION}"
fi
echo "setup: installing ${fbgemm} and torchrec==${TORCHREC_VERSION}"
$pip install -q "$fbgemm"
$pip install -q --no-deps "torchrec==${TORCHREC_VERSION}"
$pip install -q -e ".[dev]"

# Smoke test of the triple: import torchrec and run one fbgemm-backed KJT op.
.venv/bin/python - <<'PY'
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b"], values=torch.arange(6), lengths=torch.tensor([1, 2, 2, 1]))
assert kjt.permute([1, 0]).values().tolist() == [3, 4, 5, 0, 1, 2]
print(f"setup: torch {torch.__version__}, torchrec OK")
PY
rm -f .venv/.recsys-setup-*
touch "$stamp"
echo "setup: done"
