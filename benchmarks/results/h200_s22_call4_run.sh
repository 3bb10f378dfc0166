# session 22 call 4: the window scale sums' partials term-major (new) against HEAD's evo_scores_backward.py
# (old), node profile; GPU correctness; the training step at L = 4,096 with the key-list kernels
source scripts/device_env.sh || exit 1
mkdir -p /tmp/perf && tar xzf .gpudata/perf.tgz -C /tmp/perf
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for v in new old new old; do
  cp refcopy/$v/evo_scores_backward.py recsys/ops/
  echo "== $v"; timeout 120 $S $A --profile --out $OUT/$v > /tmp/p.log 2>&1; echo "rc=$?"; cp /tmp/p.log $OUT/$v.log
  grep -E "reduce_kernel|_window|GPU kernels|^sparsectr|^full|rror" /tmp/p.log | cut -c1-100 | head -20
done
cp refcopy/new/evo_scores_backward.py recsys/ops/
for i in 1 2; do timeout 60 $S $A --out $OUT/att$i > /tmp/att$i.log 2>&1; echo "att$i rc=$?"; grep -E "^sparsectr|^full" /tmp/att$i.log; done
timeout 100 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL" | head -12
date -u +%H:%M:%S
timeout 170 $S --dataset /tmp/perf/prepared --parts training --histories 4096 --train-models sparsectr:triton+graphs --workers 4 --out $OUT/train > /tmp/t.log 2>&1; echo "train rc=$?"; grep -E "train |MFU|^sparsectr" /tmp/t.log | tail -8
date -u +%H:%M:%S
