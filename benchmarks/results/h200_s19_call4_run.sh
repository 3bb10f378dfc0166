# session 20 call 1: the backward's small-kernel cleanup against a same-run reference
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp refcopy/$1/*.py recsys/ops/; }
date -u +%H:%M:%S
use s2; timeout 100 $S --dataset /tmp/none --out $OUT/corr --parts correctness --skip-cama-checks > /tmp/corr.log 2>&1; echo "corr rc=$?"; grep -E "^correct|rror|FAIL" /tmp/corr.log | tail -25
i=0
for v in s0 s2 s1 s0 s2; do
  i=$((i+1)); use $v; echo "== run $i variant $v $(date -u +%H:%M:%S)"
  timeout 70 $S $A --out $OUT/a${i}_$v > /tmp/a$i.log 2>&1; echo "rc=$?"; grep -E "sdpa|sparsectr|flash" /tmp/a$i.log | tail -6
done
use s2; echo "== profile s2"; timeout 70 $S $A --profile --out $OUT/p_s2 > /tmp/p.log 2>&1; echo "rc=$?"; grep -E "launches|attention" /tmp/p.log | tail -12
date -u +%H:%M:%S
