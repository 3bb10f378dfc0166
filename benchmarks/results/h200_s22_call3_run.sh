# session 22 call 3: the key lists (chunk means, sizes, tails) in two Triton launches (new) against the
# PyTorch ops (old, HEAD's evo_branches_triton.py), node profile; GPU correctness
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for v in new old new old; do
  cp refcopy/$v/evo_branches_triton.py recsys/ops/
  echo "== $v"; timeout 120 $S $A --profile --out $OUT/$v > /tmp/p.log 2>&1; echo "rc=$?"
  cp /tmp/p.log $OUT/$v.log
  grep -E "_chunk|nvjet|gather|GPU kernels|^sparsectr|^full|rror" /tmp/p.log | head -20
  date -u +%H:%M:%S
done
cp refcopy/new/evo_branches_triton.py recsys/ops/
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|sparsectr" | head -20
date -u +%H:%M:%S
