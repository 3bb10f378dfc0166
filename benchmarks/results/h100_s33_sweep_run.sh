# Session 33, one device call (carry [".whl"]). About 400 s. The stored-score backward's bandwidth-heavy kernels
# (row terms, dQ from scores, window sums) were swept on the H200 only (sessions 17-18, 27); on the H100, the card
# issue 7 names, they run 24-34 us slower than there. This sweeps every kernel of the family with --variants plus
# h100_s33_grid.json's row-term and dQ tiles at n = 8,192 (the ungated node, as the 5x target times it).
source scripts/device_env.sh || exit 1
date -u +%H:%M:%S
timeout 520 python3 benchmarks/tile_sweep.py --family sparsectr_stored --cases sparsectr:8192 --steps 20 --variants \
  --grid benchmarks/results/h100_s33_grid.json --out $OUT/sweep 2>&1 | grep -vE "Warning|warn"
date -u +%H:%M:%S
