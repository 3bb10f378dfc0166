# Session 34, device call 2 (carry [".whl"]; after h100_s34_profile_prepare.sh here). About 300 s. The profile
# key's gradients summed in the local dK/dV kernel from the q and dO tiles it reads ("new"), so the row-term pass
# reads no q, against session 33's tree, where the row-term pass reads q for them ("base"): GPU correctness on new,
# the node profiled (per-kernel µs) new, base, and timed base, new alternately three times each, at n = 8,192.
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { rm -rf recsys && cp -r s34_$1/recsys .; }
date -u +%H:%M:%S; nvidia-smi --query-gpu=name --format=csv,noheader
use new
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr_new 2>&1 | grep -E "^correct|rror|FAIL|sparsectr" | head -20
for v in new base; do
  use $v; echo "== profile $v $(date -u +%H:%M:%S)"; timeout 80 $S $A --profile --out $OUT/p_${v} > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise|cudaGetError" | cut -c1-100 | head -22
done
for v in base new base new base new; do
  [ $SECONDS -gt 480 ] && { echo "skip timing $v (${SECONDS}s)"; continue; }
  use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$? $(date -u +%H:%M:%S)"; grep -E "^sparsectr|^full" /tmp/att.log
done
use new
date -u +%H:%M:%S
