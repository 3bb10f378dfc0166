# session 26 call 3: the tile sweep of the stored backward's kernels over benchmarks/results/h200_s26_grid2.json
# (the local dK/dV pass with 64-key blocks; the forward at 96 and 104 registers) on 53aad48's library
source scripts/device_env.sh || exit 1
date -u +%H:%M:%S
timeout 400 python3 benchmarks/tile_sweep.py --family sparsectr_stored --cases sparsectr:8192 --steps 20 \
  --grid benchmarks/results/h200_s26_grid2.json --out $OUT/sweep2 2>&1 | grep -vE "Warning|warn" | cut -c1-400
date -u +%H:%M:%S
