# Prepared in session 27 for the next session's first device call (after h200_s27_next_prepare.sh). Variants as there.
#  1. GPU correctness on "both";
#  2. the node profiled and timed, each variant against base:
#     - lists: the keyed dK/dV kernel without its per-head scale sums (offline: tile loop 901 -> 733 instructions,
#       255 registers and 80 bytes spilled -> 238 and none) against the new list sums pass (16 rows of all 8 heads per
#       one-warp program, 2,864 instructions, 255 registers), on the side stream after the window's sums;
#     - fixwin: the forward's window loop without a running maximum (offline: 585 -> 473 instructions per tile, gated
#       594 -> 488; 80 / 64 bytes of stack at the 128-register cap, spilled outside the loop);
#     - fixed: fixwin, and its key-list loops the same way (offline: 322 -> 267 instructions per tile; stack 56, gated 72);
#  3. a tile sweep on "both" of the new pass, the keyed dK/dV kernel (its registers fell) and the forward (its loops
#     shrank), h200_s27_next_grid.json, in the time left.
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp -r s28_$1/recsys s28_$1/benchmarks s28_$1/tests .; }
date -u +%H:%M:%S
use both
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|sparsectr" | head -20
for v in both base lists fixwin fixed base; do
  use $v; echo "== $v"; timeout 100 $S $A --profile --out $OUT/p_${v}_$RANDOM > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_kernel|GPU kernels|rror" /tmp/p.log | grep -vE "reduce_kernel|elementwise|cudaGetError" | cut -c1-100 | head -22
done
for v in base both fixed fixwin lists base both; do use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log; done
use both
left=$((570 - SECONDS)); echo "sweep gets ${left}s"
timeout $left python3 benchmarks/tile_sweep.py --family sparsectr_stored --cases sparsectr:8192 --steps 20 \
  --grid benchmarks/results/h200_s27_next_grid.json --out $OUT/sweep 2>&1 | grep -vE "Warning|warn" | grep -E "_list_scale|_keyed|_local_forward|sparsectr:" | cut -c1-300
use base
date -u +%H:%M:%S
