# session 21 call 6: the final library (key lists' gradients first in the local dK/dV): the node twice, training at L = 4,096
source scripts/device_env.sh || exit 1
mkdir -p /tmp/perf /tmp/o && tar xzf .gpudata/perf.tgz -C /tmp/perf
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for i in 1 2; do timeout 60 $S $A --out /tmp/o/att$i > /tmp/att$i.log 2>&1; echo "att$i rc=$?"; grep -E "^sparsectr|^full" /tmp/att$i.log | awk '{print $1, $4}'; done
timeout 150 $S --dataset /tmp/perf/prepared --parts training --histories 4096 --train-models sparsectr:triton+graphs --workers 4 --out /tmp/o/train > /tmp/t.log 2>&1; echo "train rc=$?"; grep -E "train |MFU|^sparsectr" /tmp/t.log | tail -8
tar czf $OUT/call6.tgz -C /tmp/o .
date -u +%H:%M:%S
