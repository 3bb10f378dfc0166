# Prepared in session 29 (no device lent) for the call after the variant calls (since session 31: h200_s31_next_run.sh),
# once the faster patches of those calls are applied to the tree here (git apply) and the s28_* / s31_* folders deleted. Carry
# [".whl", ".gpudata"]. About 450 s. On the kept tree:
#  1. GPU correctness (every SparseCTR check; --skip-cama-checks, as the patches do not touch CamA);
#  2. the node timed five times against flash at n = 8,192 (the 5x target), then once profiled (per-kernel µs);
#  3. the training step at L = 4,096 (sparsectr:triton+graphs, 4 loader workers): samples/s each side, MFU.
# Nothing here picks a variant: a slower kept tree means a patch was kept on the profiles alone; say so in RESULTS.
source scripts/device_env.sh || exit 1
mkdir -p /tmp/perf && tar xzf .gpudata/perf.tgz -C /tmp/perf
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|sparsectr" | head -20
for i in 1 2 3 4 5; do
  timeout 60 $S $A --out $OUT/att_$i > /tmp/att.log 2>&1; echo "att $i rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log
done
timeout 70 $S $A --profile --out $OUT/prof > /tmp/p.log 2>&1; echo "profile rc=$?"
grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise|cudaGetError" | cut -c1-100 | head -22
left=$((590 - SECONDS)); echo "training gets ${left}s"
timeout $left $S --dataset /tmp/perf/prepared --parts training --histories 4096 --train-models sparsectr:triton+graphs --workers 4 \
  --out $OUT/train > /tmp/t.log 2>&1; echo "train rc=$?"; grep -E "train |MFU|^sparsectr|rror" /tmp/t.log | tail -8
date -u +%H:%M:%S
