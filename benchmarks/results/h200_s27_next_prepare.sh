# Prepared in session 27 (its device time was spent) for the next session's first call, h200_s27_next_run.sh. Run
# here, in the repository root, before that call; delete the s28_* folders before committing.
# "base": the tree's files; "lists": the tree with h200_s27_list_sums.patch (the keyed dK/dV kernel no longer sums the
# scales' gradient per head; a pass of its own, beside the window's sums, builds the list pairs' terms once for all heads).
set -e
FILES="recsys/ops/evo_scores_backward.py recsys/ops/evo_keyed_triton.py recsys/ops/evo_bias_triton.py recsys/ops/evo_branches_triton.py
       recsys/ops/evo_local_triton.py benchmarks/tile_sweep.py benchmarks/kernel_resources.py tests/test_triton_lowering.py"
rm -rf s28_base s28_lists
for f in $FILES; do
  mkdir -p s28_base/$(dirname $f) s28_lists/$(dirname $f)
  cp $f s28_base/$f
  cp $f s28_lists/$f
done
patch -s -p1 -d s28_lists < benchmarks/results/h200_s27_list_sums.patch
echo "prepared s28_base and s28_lists"
