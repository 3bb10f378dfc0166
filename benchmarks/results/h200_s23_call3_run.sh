# session 23 call 3: the keyed dK/dV's query slice per program (RECSYS_KEYED_QUERIES 384 / 512 / 768 /
# 1024); the node timed twice at 512; GPU correctness and the training step at L = 4,096 at 512
# (RECSYS_KEYED_QUERIES was an uncommitted patch of evo_keyed_triton; e833313 fixed the slice at 768)
source scripts/device_env.sh || exit 1
mkdir -p /tmp/perf && tar xzf .gpudata/perf.tgz -C /tmp/perf
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for q in 512 768 384 1024 512; do
  echo "== q$q"; RECSYS_KEYED_QUERIES=$q timeout 120 $S $A --profile --out $OUT/q$q > /tmp/p.log 2>&1; echo "rc=$?"; cp /tmp/p.log $OUT/q$q.log
  grep -E "_kernel|GPU kernels|^sparsectr|^full|rror" /tmp/p.log | grep -v "elementwise\|cudaGet\|_window\|_chunk" | cut -c1-90 | head -16
done
export RECSYS_KEYED_QUERIES=512
for i in 1 2; do timeout 60 $S $A --out $OUT/att$i > /tmp/att$i.log 2>&1; echo "att$i rc=$?"; grep -E "^sparsectr|^full" /tmp/att$i.log; done
timeout 100 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL" | head -12
date -u +%H:%M:%S
timeout 170 $S --dataset /tmp/perf/prepared --parts training --histories 4096 --train-models sparsectr:triton+graphs --workers 4 --out $OUT/train > /tmp/t.log 2>&1; echo "train rc=$?"; grep -E "train |MFU|^sparsectr" /tmp/t.log | tail -8
date -u +%H:%M:%S
