# Prepared in session 28 (no device was lent) for the next session's second device call, after h200_s27_next_run.sh
# (both after h200_s28_next_prepare.sh here; carry [".whl"]). About 540 s. Variants as in h200_s28_next_prepare.sh.
#  1. Nsight Compute's pipe table (ComputeWorkloadAnalysis) of the forward, local dK/dV and window-sum kernels on base
#     and xu: how busy the XU pipe is (MUFU.EX2 + I2F, an eighth of the FP32 rate) against the issue slots. Offline
#     (sm_90, Triton 3.9, history only, ungated), per thread and 64 x 32 tile, the forward's window loop issues
#     (instructions: MUFU, I2F): base 584: 18, 24; xuw 584: 18, 16 (6 spill reloads); xu 592: 18, 0; both 480: 16, 24;
#     bothxuw 478: 16, 16 (3 reloads); bothxu 488: 16, 0. At 8 cycles per XU warp instruction, base's 42 need 336 of
#     584 issue cycles (58 %), both's 40 need 320 of 480 (66 %); more if FLO (16 per tile) issues there too. Local
#     dK/dV (stored): 687 -> 683 (xuw), 702 (xu); window scale sums 1,352 -> 1,224 (xuw), 1,232 (xu).
#     Under Triton 3.6.0, the GPU's compiler (session 29, h200_s29_counts_triton36.txt), the same loops: base 563, xuw 554
#     (no spill), xu 573, both 502, bothxuw 496, bothxu 512; local dK/dV 676 -> 668 / 687; window sums 1,336 -> 1,216 / 1,224.
#  2. GPU correctness on bothxu (it holds every changed line of the four);
#  3. the node profiled (per-kernel µs) on base, xu, xuw, bothxu, bothxuw, and timed on base, bothxu, bothxuw, both, base.
# Keep xu or xuw only where its kernels are faster in the profiles and the node in the timings.
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp -r s28_$1/recsys s28_$1/benchmarks s28_$1/tests .; }  # the folders hold no ncu_kernels.py: the tree's (with --pipes) stays
mkdir -p /tmp/o
date -u +%H:%M:%S
for v in base xu; do
  use $v; echo "== pipes $v $(date -u +%H:%M:%S)"
  (cd benchmarks && timeout 110 ncu --clock-control none --profile-from-start off -k regex:'_local_forward|_local_dkdv|_window_scale' \
     --section ComputeWorkloadAnalysis --section SpeedOfLight -o /tmp/o/pipes_$v python3 ncu_kernels.py --cases sparsectr:8192 \
     > /tmp/ncu_$v.log 2>&1; echo "ncu rc=$?"; tail -2 /tmp/ncu_$v.log | cut -c1-200
   python3 ncu_kernels.py --report /tmp/o/pipes_$v.ncu-rep --pipes; python3 ncu_kernels.py --report /tmp/o/pipes_$v.ncu-rep | cut -c1-160)
done
use bothxu
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|sparsectr" | head -20
for v in base xu xuw bothxu bothxuw; do
  [ $SECONDS -gt 520 ] && { echo "skip profile $v (${SECONDS}s)"; continue; }
  use $v; echo "== $v"; timeout 90 $S $A --profile --out $OUT/p_${v}_$RANDOM > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise|cudaGetError" | cut -c1-100 | head -22
done
for v in base bothxu bothxuw both base; do
  [ $SECONDS -gt 560 ] && { echo "skip timing $v (${SECONDS}s)"; continue; }
  use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log
done
use base
tar czf $OUT/pipes.tgz -C /tmp/o . 2>/dev/null
date -u +%H:%M:%S
