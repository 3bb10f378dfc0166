# Prepared in session 26 (the device tool lent no machine after its call 2), for the next session's first
# call, h200_s26_next_run.sh. Run here, in the repository root, before that call; delete the s27_* folders
# before committing. "rows": the tree (the gated row-term pass with the gates per row, commit after e0b3151);
# "tile": e0b3151's files (the [64, 64] dO tile scaled); "free": the tree with the free-terms timing probe.
set -e
mkdir -p s27_rows s27_tile s27_free
for f in triton_tiles.py evo_scores_backward.py evo_bias_triton.py; do
  cp recsys/ops/$f s27_rows/
  git show e0b3151:recsys/ops/$f > s27_tile/$f
  cp recsys/ops/$f s27_free/
done
patch -s s27_free/evo_bias_triton.py < benchmarks/results/h200_s26_free_terms_probe.patch
