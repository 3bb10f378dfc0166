# Session 27, call 2 (call 1 ran session 26's prepared h200_s26_next_run.sh): the window scale sums with each
# (head, term) sum reduced over the rows first, within a thread, then across the warp once ("ws": 2,088 -> 1,352
# instructions offline), and "ws2" = ws with the band's time, clock and dS loads masked by the window only, so they
# need not wait for the flag words (1,616 instructions); against HEAD's evo_scores_backward.py ("base").
# Before the call: s27_{base,ws,ws2}/evo_scores_backward.py (deleted before committing).
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp s27_$1/evo_scores_backward.py recsys/ops/; }
date -u +%H:%M:%S
use ws
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|sparsectr" | head -20
for v in ws base ws2 ws base ws2; do
  use $v; echo "== $v"; timeout 100 $S $A --profile --out $OUT/p_${v}_$RANDOM > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_window|_dq_from|GPU kernels|rror" /tmp/p.log | grep -vE "cudaGetError" | cut -c1-100 | head -12
done
for v in base ws base ws; do use $v; timeout 60 $S $A --out $OUT/att_${v}_$RANDOM > /tmp/att.log 2>&1; echo "att $v rc=$?"; grep -E "^sparsectr|^full" /tmp/att.log; done
use ws
left=$((570 - SECONDS)); echo "sweep gets ${left}s"
timeout $left python3 benchmarks/tile_sweep.py --family sparsectr_stored --cases sparsectr:8192 --steps 20 \
  --grid benchmarks/results/h200_s27_grid.json --out $OUT/sweep 2>&1 | grep -vE "Warning|warn" | grep -E "window|sparsectr:" | cut -c1-300
date -u +%H:%M:%S
