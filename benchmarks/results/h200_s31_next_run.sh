# Prepared in session 31 (its second call was refused) for the next session's first device call, after
# h200_s31_next_prepare.sh here; carry [".whl"]. About 540 s. Variants as in h200_s31_next_prepare.sh. It replaces
# h200_s28_next_run.sh (never run; removed, in git at 62519e7), whose "both" variants session 31 measured slower.
#  1. Nsight Compute's pipe table (ComputeWorkloadAnalysis) of the forward, local dK/dV and window-sum kernels on base
#     and xu: how busy the XU pipe (MUFU.EX2 + I2F, an eighth of the FP32 rate) is against the issue slots;
#  2. GPU correctness on xu and xuw;
#  3. the node profiled (per-kernel µs) on base, nofix, xuw, xu, base, and timed on base, nofix, xuw, xu, base, xuw, xu.
# Keep xu or xuw only where its kernels are faster in the profiles and the node in the timings; if nofix is as fast
# as base in both, say so in RESULTS (session 31 kept the fixed reference on one profile and one timing).
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp -r s31_$1/recsys s31_$1/benchmarks s31_$1/tests .; }  # the folders hold no ncu_kernels.py: the tree's (with --pipes) stays
mkdir -p /tmp/o
date -u +%H:%M:%S
for v in base xu; do
  use $v; echo "== pipes $v $(date -u +%H:%M:%S)"
  (cd benchmarks && timeout 110 ncu --clock-control none --profile-from-start off -k regex:'_local_forward|_local_dkdv|_window_scale' \
     --section ComputeWorkloadAnalysis --section SpeedOfLight -o /tmp/o/pipes_$v python3 ncu_kernels.py --cases sparsectr:8192 \
     > /tmp/ncu_$v.log 2>&1; echo "ncu rc=$?"; tail -2 /tmp/ncu_$v.log | cut -c1-200
   python3 ncu_kernels.py --report /tmp/o/pipes_$v.ncu-rep --pipes; python3 ncu_kernels.py --report /tmp/o/pipes_$v.ncu-rep | cut -c1-160)
done
for v in xu xuw; do
  use $v; echo "== correctness $v"
  timeout 100 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr_$v 2>&1 | grep -E "^correct|rror|FAIL" | head -10
done
for v in base nofix xuw xu base; do
  [ $SECONDS -gt 440 ] && { echo "skip profile $v (${SECONDS}s)"; continue; }
  use $v; echo "== $v"; timeout 90 $S $A --profile --out $OUT/p_${v}_$RANDOM > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise|cudaGetError" | cut -c1-100 | head -22
done
for v in base nofix xuw xu base xuw xu; do
  [ $SECONDS -gt 530 ] && { echo "skip timing $v (${SECONDS}s)"; continue; }
  use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log
done
use base
tar czf $OUT/pipes.tgz -C /tmp/o . 2>/dev/null
date -u +%H:%M:%S
