# Session 33, one device call (carry [".whl"]; after h100_s33_fold_prepare.sh here). About 420 s. The folded local dS
# layout ("fold": [B·H, rows, SCORE_BLOCK], key j in column j mod SCORE_BLOCK) against the band over two blocks
# ("base": [B·H, rows, 2·SCORE_BLOCK]): GPU correctness on fold, the node profiled (per-kernel µs) fold, base, fold,
# and timed base, fold alternately three times each, at n = 8,192 against flash.
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { rm -rf recsys && cp -r s33_$1/recsys .; }
date -u +%H:%M:%S
use fold
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr_fold 2>&1 | grep -E "^correct|rror|FAIL|sparsectr" | head -20
for v in fold base fold; do
  use $v; echo "== profile $v $(date -u +%H:%M:%S)"; timeout 80 $S $A --profile --out $OUT/p_${v}_$RANDOM > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise|cudaGetError" | cut -c1-100 | head -22
done
for v in base fold base fold base fold; do
  [ $SECONDS -gt 540 ] && { echo "skip timing $v (${SECONDS}s)"; continue; }
  use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$? $(date -u +%H:%M:%S)"; grep -E "^sparsectr|^full" /tmp/att.log
done
use fold
date -u +%H:%M:%S
