# session 23 call 4: the committed keyed dK/dV slice (768 queries) against 640 and 896 (the constant
# edited in this copy), node profile; the node timed twice, GPU correctness and the training step at
# L = 4,096 with the committed 768
source scripts/device_env.sh || exit 1
mkdir -p /tmp/perf && tar xzf .gpudata/perf.tgz -C /tmp/perf
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
F=recsys/ops/evo_keyed_triton.py
date -u +%H:%M:%S
for q in 768 640 896 768; do
  sed -i "s/^_QUERIES_PER_SPLIT = .*/_QUERIES_PER_SPLIT = $q/" $F
  echo "== q$q"; timeout 120 $S $A --profile --out $OUT/q$q > /tmp/p.log 2>&1; echo "rc=$?"; cp /tmp/p.log $OUT/q$q.log
  grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -v "elementwise\|cudaGet\|_window\|_chunk\|_local\|_row\|_dq" | cut -c1-90 | head -10
done
git diff --stat
for i in 1 2; do timeout 60 $S $A --out $OUT/att$i > /tmp/att$i.log 2>&1; echo "att$i rc=$?"; grep -E "^sparsectr|^full" /tmp/att$i.log; done
timeout 100 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL" | head -12
timeout 170 $S --dataset /tmp/perf/prepared --parts training --histories 4096 --train-models sparsectr:triton+graphs --workers 4 --out $OUT/train > /tmp/t.log 2>&1; echo "train rc=$?"; grep -E "train |MFU|^sparsectr" /tmp/t.log | tail -8
date -u +%H:%M:%S
