# Session 27, call 4: the kept tree (e0a4edf: the rows-first window scale sums) timed five times against flash, then
# its node profiled once.
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for i in 1 2 3 4 5; do timeout 60 $S $A --out $OUT/att_$i > /tmp/att.log 2>&1; echo "att $i rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log; done
timeout 100 $S $A --profile --out $OUT/prof > /tmp/p.log 2>&1; echo "rc=$?"
grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise|cudaGetError" | cut -c1-100 | head -20
date -u +%H:%M:%S
