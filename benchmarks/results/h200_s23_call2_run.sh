# session 23 call 2: the dQ pass reading only the stored dS's 16-column groups that meet each row's
# window (RECSYS_DS_GROUPS=1) against whole rows (0); the keyed dK/dV's query slice per program
# (RECSYS_KEYED_QUERIES 512 / 1024 / 2048); node profile at n = 8,192; GPU correctness
# (RECSYS_DS_GROUPS and RECSYS_KEYED_QUERIES were uncommitted patches; e833313 fixed the slice at 768, see RESULTS session 23)
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for v in 1:1024 0:1024 1:512 1:2048 0:1024 1:1024; do
  g=${v%%:*}; q=${v##*:}; n=g${g}q${q}
  echo "== $n"; RECSYS_DS_GROUPS=$g RECSYS_KEYED_QUERIES=$q timeout 120 $S $A --profile --out $OUT/$n > /tmp/p.log 2>&1; echo "rc=$?"; cp /tmp/p.log $OUT/$n.log
  grep -E "_kernel|GPU kernels|^sparsectr|^full|rror" /tmp/p.log | grep -v "elementwise\|cudaGet" | cut -c1-100 | head -22
done
timeout 100 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL" | head -12
date -u +%H:%M:%S
