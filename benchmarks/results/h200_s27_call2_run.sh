# Session 27, call 3: the dQ-from-scores pass with each key list's first block (the whole list at the node's sizes:
# 16 and 32 keys) loaded with the window's tiles, before the first dot ("dq"; offline 136 registers against 92),
# against e0a4edf's evo_scores_backward.py ("base"); then the dQ pass's register caps and 8 warps (h200_s27_grid2.json).
# Before the call: s27_{base,dq}/evo_scores_backward.py (deleted before committing).
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp s27_$1/evo_scores_backward.py recsys/ops/; }
date -u +%H:%M:%S
use dq
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|sparsectr" | head -20
for v in dq base dq base; do
  use $v; echo "== $v"; timeout 100 $S $A --profile --out $OUT/p_${v}_$RANDOM > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_window|_dq_from|GPU kernels|rror" /tmp/p.log | grep -vE "cudaGetError" | cut -c1-100 | head -12
done
for v in base dq base dq; do use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log; done
use dq
left=$((540 - SECONDS)); echo "sweep gets ${left}s"
timeout $left python3 benchmarks/tile_sweep.py --family sparsectr_stored --cases sparsectr:8192 --steps 20 \
  --grid benchmarks/results/h200_s27_grid2.json --out $OUT/sweep 2>&1 | grep -vE "Warning|warn" | grep -E "_dq_from|sparsectr:" | cut -c1-300
date -u +%H:%M:%S
