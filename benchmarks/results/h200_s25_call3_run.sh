# session 25 call 3: the committed tree (44de5af): the training step at L = 4,096 under CUDA graphs
# (the in-kernel slice sum and the side-stream casts inside torch.compile's captured graphs), then the
# node timed once more
source scripts/device_env.sh || exit 1
mkdir -p /tmp/perf && tar xzf .gpudata/perf.tgz -C /tmp/perf
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
timeout 200 $S --dataset /tmp/perf/prepared --parts training --histories 4096 --train-models sparsectr:triton+graphs --workers 4 --out $OUT/train > /tmp/t.log 2>&1; echo "train rc=$?"; grep -E "train |MFU|^sparsectr|rror" /tmp/t.log | tail -8
timeout 60 $S $A --out $OUT/att > /tmp/att.log 2>&1; echo "att rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log
date -u +%H:%M:%S
