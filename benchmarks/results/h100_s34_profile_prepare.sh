# Session 34, here before h100_s34_profile_run.sh and h100_s34_variants_run.sh: the trees the calls compare, as
# untracked folders the device tool carries. base: recsys/ at the given commit (default 02e27ea, session 33's tree:
# the row-term pass reads q for the profile key's gradients); new: the same with
# benchmarks/patches/h100_s34_profile_in_dkdv_start.patch (the local dK/dV kernel sums them, at its start); end: with
# h100_s34_profile_in_dkdv_end.patch (at its end, every other program taking 64 rows). Neither was kept (RESULTS session 34).
set -e
rm -rf s34_base s34_new s34_end && mkdir -p s34_base s34_new s34_end
git archive "${1:-02e27ea}" recsys | tar -x -C s34_base
for v in new:start end:end; do
  git archive "${1:-02e27ea}" recsys benchmarks/kernel_resources.py | tar -x -C s34_${v%%:*}
  git apply --directory=s34_${v%%:*} benchmarks/patches/h100_s34_profile_in_dkdv_${v##*:}.patch
done
du -sh s34_base s34_new s34_end
