# session 21 call 7: the dQ-from-scores pass with the profile key's share first (new) against cd45f7e's (old), node profile
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for v in new old new old; do
  if [ $v = old ]; then cp refcopy/s21dq/recsys/ops/evo_scores_backward.py recsys/ops/; else cp refcopy/s21dqnew/recsys/ops/evo_scores_backward.py recsys/ops/; fi
  echo "== $v"; timeout 60 $S $A --profile --out $OUT/$v > /tmp/p.log 2>&1; echo "rc=$?"; grep -E "_dq_from_scores|GPU kernels|^sparsectr|^full" /tmp/p.log
done
cp refcopy/s21dqnew/recsys/ops/evo_scores_backward.py recsys/ops/
timeout 100 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL" | head -12
date -u +%H:%M:%S
