# Prepared in session 31 for the next session's first device call, h200_s31_next_run.sh. Run here, in the repository
# root; delete the s31_* folders before committing. Four variants, each with the same files:
# "base":  the tree (session 31 kept h200_s27_fixed_reference.patch: the forward's window loop without a running maximum);
# "nofix": the tree without it (the session-27 forward), to time the kept change a second time;
# "xuw":   base + h200_s28_weekend_select.patch (a key's weekend value by a select, not an int-to-float conversion);
# "xu":    base + h200_s28_no_conversions.patch (that, and each pair's time octave made a float exactly through the
#          mantissa of 2^23 instead of an I2F).
# Session 30 measured "lists", "fixed" and "both" slower (RESULTS, session 31): they are not prepared again.
set -e
FILES="recsys/ops/evo_scores_backward.py recsys/ops/evo_keyed_triton.py recsys/ops/evo_bias_triton.py recsys/ops/evo_branches_triton.py
       recsys/ops/evo_local_triton.py recsys/ops/triton_tiles.py benchmarks/tile_sweep.py benchmarks/kernel_resources.py
       tests/test_triton_lowering.py tests/test_evo_local_triton.py tests/test_evo_branches_triton.py"
rm -rf s31_base s31_nofix s31_xuw s31_xu
for v in base nofix xuw xu; do
  for f in $FILES; do mkdir -p s31_$v/$(dirname $f); cp $f s31_$v/$f; done
done
git apply -R --include="s31_nofix/recsys/*" --directory=s31_nofix benchmarks/results/h200_s27_fixed_reference.patch  # its test hunk predates the kept test (which passes on both)
patch -s -p1 -d s31_xuw < benchmarks/results/h200_s28_weekend_select.patch
patch -s -p1 -d s31_xu < benchmarks/results/h200_s28_no_conversions.patch
echo "prepared s31_base s31_nofix s31_xuw s31_xu"
