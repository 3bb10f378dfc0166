# session 23 call 1: the grid order of every program_rows kernel, heads first (RECSYS_GRID_ORDER=heads)
# against the launch order (blocks), on the SparseCTR node at n = 8,192 and CamA at 4,096; GPU
# correctness with heads first
# (RECSYS_GRID_ORDER was an uncommitted patch of triton_tiles.program_rows; not kept, see RESULTS session 23)
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
C="--dataset /tmp/none --parts attention --min-n 4096 --max-n 4096 --kernels full_causal_sdpa,cama_triton"
date -u +%H:%M:%S
for g in heads blocks heads blocks; do
  echo "== $g"; RECSYS_GRID_ORDER=$g timeout 120 $S $A --profile --out $OUT/$g > /tmp/p.log 2>&1; echo "rc=$?"; cp /tmp/p.log $OUT/$g.log
  grep -E "_kernel|GPU kernels|^sparsectr|^full|rror" /tmp/p.log | cut -c1-110 | head -24
done
for g in heads blocks; do
  echo "== cama $g"; RECSYS_GRID_ORDER=$g timeout 120 $S $C --profile --out $OUT/cama_$g > /tmp/c.log 2>&1; echo "rc=$?"; cp /tmp/c.log $OUT/cama_$g.log
  grep -E "_kernel|GPU kernels|^cama|^full|rror" /tmp/c.log | cut -c1-110 | head -12
done
RECSYS_GRID_ORDER=heads timeout 100 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL" | head -12
date -u +%H:%M:%S
