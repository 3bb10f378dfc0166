# Runs on the tree with benchmarks/results/h200_s24_folded_corners.patch applied (not kept on main).
# session 24 call 1: the forward's folded corner tiles (RECSYS_EVO_FOLD=1, the new default) against
# the four-tile window (=0) in the same run, node profile twice each way; the node timed each way;
# GPU correctness with the fold; Triton's offline view of the kernel on this image
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for f in 1 0 1 0; do
  echo "== fold$f"; RECSYS_EVO_FOLD=$f timeout 100 $S $A --profile --out $OUT/p$f > /tmp/p.log 2>&1; echo "rc=$?"; cat /tmp/p.log >> $OUT/p$f.log
  grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -E "forward|GPU kernels|rror" | cut -c1-100 | head -6
done
for f in 1 0; do RECSYS_EVO_FOLD=$f timeout 60 $S $A --out $OUT/att$f > /tmp/att$f.log 2>&1; echo "att fold$f rc=$?"; grep -E "^sparsectr|^full" /tmp/att$f.log; done
timeout 60 python3 benchmarks/results/h200_s24_fold_check.py 2>&1 | tail -4
timeout 120 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|max_rel" | head -16
date -u +%H:%M:%S
