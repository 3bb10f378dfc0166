# session 26 call 2: the profile key's gradients moved from the row-term pass into the local dK/dV
# pass's end, over each key block's own rows ("prof", this session's three files) against 53aad48's
# ("base"); "prof128" = prof with the dQ pass at a 128-register cap (the call 1 sweep's best);
# node profile and timings alternating; GPU correctness on prof
# To rerun: mkdir s26_base s26_prof s26_prof128; git show 53aad48:recsys/ops/<file> > s26_base/<file> for
# evo_local_triton.py, evo_scores_backward.py, evo_branches_triton.py; this session's commit for s26_prof.
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp s26_$1/evo_local_triton.py s26_$1/evo_scores_backward.py s26_$1/evo_branches_triton.py recsys/ops/; }
date -u +%H:%M:%S
use prof
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|max_rel|sparsectr" | head -20
for v in prof base prof128 prof base; do
  use $v; echo "== $v"; timeout 100 $S $A --profile --out $OUT/p_${v}_$RANDOM > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise|cudaGetError" | cut -c1-100 | head -20
done
for v in base prof prof128 base prof prof128; do use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log; done
use prof
date -u +%H:%M:%S
