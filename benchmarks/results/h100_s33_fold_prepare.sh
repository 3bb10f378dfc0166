# Session 33, here before h100_s33_fold_run.sh: the two trees the call compares, as untracked folders the device
# tool carries. base: recsys/ at the given commit (default HEAD); fold: the same with benchmarks/patches/h100_s33_folded_scores.patch
# (the folded local dS layout; not kept, RESULTS session 33).
set -e
rm -rf s33_base s33_fold && mkdir -p s33_base s33_fold
git archive "${1:-HEAD}" recsys | tar -x -C s33_base
git archive "${1:-HEAD}" recsys benchmarks/local_dkdv_parts.py | tar -x -C s33_fold
git apply --directory=s33_fold benchmarks/patches/h100_s33_folded_scores.patch
du -sh s33_base s33_fold
