# Prepared in session 27 (its device time was spent) for the next session's first call, h200_s27_next_run.sh. Run
# here, in the repository root, before that call; delete the s28_* folders before committing. Four variants:
# "base": the tree's files;
# "lists": + h200_s27_list_sums.patch (the keyed dK/dV kernel no longer sums the scales' gradient per head; a pass of
#          its own, beside the window's sums, builds the list pairs' terms once for all heads);
# "fixed": + h200_s27_fixed_reference.patch (the local forward's window loop takes each row's profile score as a fixed
#          softmax reference: no running maximum or rescaling; a block whose sums overflow runs again with one);
# "both":  + both patches.
set -e
FILES="recsys/ops/evo_scores_backward.py recsys/ops/evo_keyed_triton.py recsys/ops/evo_bias_triton.py recsys/ops/evo_branches_triton.py
       recsys/ops/evo_local_triton.py recsys/ops/triton_tiles.py benchmarks/tile_sweep.py benchmarks/kernel_resources.py
       tests/test_triton_lowering.py tests/test_evo_local_triton.py"
rm -rf s28_base s28_lists s28_fixed s28_both
for v in base lists fixed both; do
  for f in $FILES; do mkdir -p s28_$v/$(dirname $f); cp $f s28_$v/$f; done
done
patch -s -p1 -d s28_lists < benchmarks/results/h200_s27_list_sums.patch
patch -s -p1 -d s28_fixed < benchmarks/results/h200_s27_fixed_reference.patch
patch -s -p1 -d s28_both < benchmarks/results/h200_s27_list_sums.patch
patch -s -p1 -d s28_both < benchmarks/results/h200_s27_fixed_reference.patch
echo "prepared s28_base s28_lists s28_fixed s28_both"
