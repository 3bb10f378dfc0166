source scripts/device_env.sh && date -u
S="python3 benchmarks/gpu_suite.py"; A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
cp recsys/ops/evo_local_triton.py /tmp/new_local.py
for v in new old new old; do
  if [ $v = old ]; then cp refcopy/s21old/recsys/ops/evo_local_triton.py recsys/ops/; else cp /tmp/new_local.py recsys/ops/evo_local_triton.py; fi
  echo "== $v"; timeout 60 python3 benchmarks/local_dkdv_parts.py --n 8192 --out $OUT/parts_$v
done
for v in new old new; do
  if [ $v = old ]; then cp refcopy/s21old/recsys/ops/evo_local_triton.py recsys/ops/; else cp /tmp/new_local.py recsys/ops/evo_local_triton.py; fi
  echo "== node $v"; OUT=$OUT/node_$v timeout 60 $S $A --profile 2>&1 | grep -E "_local_dkdv|_local_forward|sparsectr_fused|full_causal|GPU kernels"
done
cp /tmp/new_local.py recsys/ops/evo_local_triton.py
OUT=$OUT/corr timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks 2>&1 | tail -25
date -u
