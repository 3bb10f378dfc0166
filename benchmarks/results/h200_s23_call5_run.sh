# session 23 call 5: the chunk sums' history rows per program (_SLICE_ROWS 1024, the committed, against
# 512 and 2048, the constant edited in this copy), node profile at n = 8,192
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
F=recsys/ops/evo_key_lists_triton.py
date -u +%H:%M:%S
for r in 1024 512 2048 1024 512; do
  sed -i "s/^_SLICE_ROWS = [0-9]*/_SLICE_ROWS = $r/" $F
  echo "== r$r"; timeout 120 $S $A --profile --out $OUT/r$r > /tmp/p.log 2>&1; echo "rc=$?"; cp /tmp/p.log $OUT/r$r.log
  grep -E "_chunk|GPU kernels|rror" /tmp/p.log | cut -c1-90 | head -10
done
date -u +%H:%M:%S
