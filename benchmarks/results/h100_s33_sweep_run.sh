# Session 33, one device call (carry [".whl"]). About 480 s. The stored-score backward's row-term and dQ kernels
# were swept on the H200 only (sessions 17-18); on the H100, the card issue 7 names, they run 24-34 us slower than
# there. This runs the family's kept tiles, then h100_s33_grid.json's row-term and dQ tiles, at n = 8,192 (the ungated node, as the 5x target times it). Where a
# row-term or dQ tile beats the kept one by 3 us (h100_s33_pick_tiles.py), the node is then timed with it ("tuned")
# against the kept tiles ("base"), three times each, and profiled once.
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
timeout 300 python3 benchmarks/tile_sweep.py --family sparsectr_stored --cases sparsectr:8192 --steps 20 \
  --grid benchmarks/results/h100_s33_grid.json --out $OUT/sweep 2>&1 | grep -vE "Warning|warn"
date -u +%H:%M:%S
python3 benchmarks/results/h100_s33_pick_tiles.py $OUT/sweep/tile_sweep.json || exit 0
cp -r recsys /tmp/base_recsys
use() { rm -rf recsys; if [ $1 = base ]; then cp -r /tmp/base_recsys recsys; else cp -r s33_tuned/recsys .; fi; }
for v in base tuned base tuned base tuned; do
  [ $SECONDS -gt 420 ] && { echo "skip timing $v (${SECONDS}s)"; continue; }
  use $v; timeout 40 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$? $(date -u +%H:%M:%S)"; grep -E "^sparsectr|^full" /tmp/att.log
done
if [ $SECONDS -lt 440 ]; then
  use tuned; timeout 40 $S $A --profile --out /tmp/p_tuned > /tmp/p.log 2>&1; echo "profile tuned rc=$?"
  grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise|cudaGetError" | cut -c1-100 | head -22
fi
use base
date -u +%H:%M:%S
