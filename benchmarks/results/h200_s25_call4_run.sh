# session 25 call 4: the layer variants with float32 temporal scales, as the model's parameter
# (benchmarks/gpu_suite.py of this commit, "f32") against bf16 scales (the previous gpu_suite.py,
# copied into s25_bench_old/ for the call: `git show 2837fc7:benchmarks/gpu_suite.py`), node profile
# and node timings alternating, on the library of this commit
source scripts/device_env.sh || exit 1
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for v in f32 bf16; do
  if [ $v = f32 ]; then S="python3 benchmarks/gpu_suite.py"; else S="python3 s25_bench_old/gpu_suite.py"; fi
  echo "== $v"; timeout 100 $S $A --profile --out $OUT/p_$v > /tmp/p.log 2>&1; echo "rc=$?"; cat /tmp/p.log >> $OUT/p_$v.log
  grep -E "GPU kernels|copy|rror" /tmp/p.log | cut -c1-100 | head -8
done
for v in f32 bf16 f32 bf16; do
  if [ $v = f32 ]; then S="python3 benchmarks/gpu_suite.py"; else S="python3 s25_bench_old/gpu_suite.py"; fi
  timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log
done
date -u +%H:%M:%S
