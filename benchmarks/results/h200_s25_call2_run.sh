# session 25 call 2: as call 1, with the last program's sum over the slices unrolled (SPLITS a
# constexpr: "new2", the working tree) against call 1's loop ("new") and 1971097's files ("old"),
# each copied into s25_<name>/ for the call; node profile and node timings alternating
source scripts/device_env.sh || exit 1
# To rerun: s25_old and s25_new as in call 1; s25_new2 is s25_new with `for _ in range(0, SPLITS)` as `tl.static_range(SPLITS)` and SPLITS a constexpr.
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp s25_$1/evo_keyed_triton.py s25_$1/evo_branches_triton.py recsys/ops/; }
date -u +%H:%M:%S
use new2
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "rror|FAIL" | head -5
for v in new2 old new new2; do
  use $v; echo "== $v"; timeout 100 $S $A --profile --out $OUT/p_$v > /tmp/p.log 2>&1; echo "rc=$?"; cat /tmp/p.log >> $OUT/p_$v.log
  grep -E "_keyed_dkdv_kernel|GPU kernels|reduce_kernel<128" /tmp/p.log | cut -c1-90 | head -6
done
for v in new2 old new new2 old; do use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log; done
use new2
date -u +%H:%M:%S
