# session 26 call 1: the stored local dS read by 32-byte sectors of the window ("mask": the dQ pass;
# "mask2": also the window scale sums, over aligned row pieces) against 53aad48's
# evo_scores_backward.py ("base"), node profile and timings alternating; GPU correctness on mask2;
# then the tile sweep of the stored backward's kernels over benchmarks/results/h200_s26_grid.json, on mask2,
# in what time the call has left
# To rerun: mkdir s26_base s26_mask s26_mask2; git show 53aad48:recsys/ops/evo_scores_backward.py > s26_base/...;
# the two variants are this session's commits (mask2 is the kept file).
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp s26_$1/evo_scores_backward.py recsys/ops/; }
date -u +%H:%M:%S
for v in mask2 base mask mask2; do
  use $v; echo "== $v"; timeout 100 $S $A --profile --out $OUT/p_${v}_$RANDOM > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise" | cut -c1-100 | head -20
done
for v in base mask2 base mask mask2; do use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log; done
use mask2
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|max_rel|sparsectr" | head -20
date -u +%H:%M:%S
left=$((575 - SECONDS)); echo "sweep gets ${left}s"
timeout $left python3 benchmarks/tile_sweep.py --family sparsectr_stored --cases sparsectr:8192 --steps 20 \
  --grid benchmarks/results/h200_s26_grid.json --out $OUT/sweep 2>&1 | grep -vE "Warning|warn" | cut -c1-400
date -u +%H:%M:%S
