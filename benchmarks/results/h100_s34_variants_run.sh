# Session 34, a third device call, not run (no machine came; RESULTS session 34). Carry [".whl"], after
# h100_s34_profile_prepare.sh here: its s34_end is the profile key's sums at the end of the local dK/dV kernel, every
# other program taking 64 rows. About 250 s. GPU correctness on end; the node profiled with end; timed base, new, end alternately twice each.
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { rm -rf recsys && cp -r s34_$1/recsys .; }
date -u +%H:%M:%S; nvidia-smi --query-gpu=name --format=csv,noheader
use end
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr_end 2>&1 | grep -E "^correct|rror|FAIL|sparsectr" | head -20
echo "== profile end $(date -u +%H:%M:%S)"; timeout 80 $S $A --profile --out $OUT/p_end > /tmp/p.log 2>&1; echo "rc=$?"
grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise|cudaGetError" | cut -c1-100 | head -22
for v in base new end base new end; do
  [ $SECONDS -gt 400 ] && { echo "skip timing $v (${SECONDS}s)"; continue; }
  use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$? $(date -u +%H:%M:%S)"; grep -E "^sparsectr|^full" /tmp/att.log
done
use base
date -u +%H:%M:%S
