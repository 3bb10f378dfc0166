# session 25 call 1: the keyed dK/dV kernel's slices summed by the last program to arrive (no
# separate sum launch) and the profile gradients' casts beside the dQ pass ("new", the working tree)
# against 1971097's two files ("old", copied into s25_old/ for this call), node profile alternating;
# the node timed each way; GPU correctness on new
# To rerun: mkdir s25_old s25_new; git show 1971097:recsys/ops/<file> > s25_old/<file> for both files; the commit of this session for s25_new.
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp s25_$1/evo_keyed_triton.py s25_$1/evo_branches_triton.py recsys/ops/; }
date -u +%H:%M:%S
use new
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|max_rel|sparsectr" | head -20
for v in new old new old; do
  use $v; echo "== $v"; timeout 100 $S $A --profile --out $OUT/p_$v > /tmp/p.log 2>&1; echo "rc=$?"; cat /tmp/p.log >> $OUT/p_$v.log
  grep -E "_kernel|GPU kernels|reduce_kernel|copy|rror" /tmp/p.log | cut -c1-110 | head -24
done
for v in new old new old; do use $v; timeout 60 $S $A --out $OUT/att_$v > /tmp/att.log 2>&1; echo "att $v rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log; done
use new
date -u +%H:%M:%S
