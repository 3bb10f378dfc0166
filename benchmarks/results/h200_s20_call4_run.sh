# session 20 call 4: the final library (relaxed atomics, shared-dO row terms): the node, CamA, GPU correctness with CamA, training
source scripts/device_env.sh || exit 1
mkdir -p /tmp/perf && tar xzf .gpudata/perf.tgz -C /tmp/perf
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for i in 1 2; do timeout 60 $S $A --out /tmp/o/att$i > /tmp/att$i.log 2>&1; echo "att$i rc=$?"; grep -E "^sparsectr|^full" /tmp/att$i.log | awk '{print $1, $4}'; done
timeout 90 $S --dataset /tmp/none --parts attention --min-n 4096 --max-n 4096 --kernels full_causal_sdpa,cama_triton --out /tmp/o/cama > /tmp/cama.log 2>&1; echo "cama rc=$?"; grep -E "^cama|^full" /tmp/cama.log | awk '{print $1, $4}'
timeout 150 $S --dataset /tmp/none --out /tmp/o/corr --parts correctness > /tmp/corr.log 2>&1; echo "corr rc=$?"; grep -E "^correct|rror|FAIL" /tmp/corr.log | tail -16
date -u +%H:%M:%S
timeout 130 $S --dataset /tmp/perf/prepared --parts training --histories 4096 --train-models sparsectr:triton+graphs --workers 4 --out /tmp/o/train > /tmp/t.log 2>&1; echo "train rc=$?"; grep -E "train |MFU|^sparsectr" /tmp/t.log | tail -6
tar czf $OUT/call4.tgz -C /tmp/o .
date -u +%H:%M:%S
