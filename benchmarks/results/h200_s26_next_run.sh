# Prepared in session 26 for the next session's first device call (after h200_s26_next_prepare.sh):
#  1. GPU correctness on the tree ("rows");
#  2. the node profiled and timed, rows against tile (the gated row-term pass, 112 us in session 26);
#  3. the free-terms timing probe profiled: what the time-octave and hour terms cost the forward and the
#     local dK/dV kernels (an upper bound for computing them once per batch instead of once per head);
#  4. the tile sweep of h200_s26_grid2.json (local dK/dV with 64-key blocks or 2-3 stages; the forward at 96 and 104
#     registers or 2-3 stages; the dQ pass at 3 stages).
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp s27_$1/triton_tiles.py s27_$1/evo_scores_backward.py s27_$1/evo_bias_triton.py recsys/ops/; }
date -u +%H:%M:%S
use rows
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|max_rel|sparsectr" | head -20
for v in rows tile free rows tile; do
  use $v; echo "== $v"; timeout 100 $S $A --profile --out $OUT/p_${v}_$RANDOM > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise|cudaGetError" | cut -c1-100 | head -20
done
for v in tile rows tile rows; do use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log; done
use rows
left=$((575 - SECONDS)); echo "sweep gets ${left}s"
timeout $left python3 benchmarks/tile_sweep.py --family sparsectr_stored --cases sparsectr:8192 --steps 20 \
  --grid benchmarks/results/h200_s26_grid2.json --out $OUT/sweep2 2>&1 | grep -vE "Warning|warn" | cut -c1-400
date -u +%H:%M:%S
