# session 22 call 1: the row terms and the key lists' dK/dV as one pass (evo_rows_keyed_triton, its
# candidates autotuned) against the two passes (RECSYS_EVO_ROWS_KEYED=0), node profile; GPU correctness
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for v in one two one two; do
  if [ $v = two ]; then export RECSYS_EVO_ROWS_KEYED=0; else export RECSYS_EVO_ROWS_KEYED=1; fi
  echo "== $v"; timeout 200 $S $A --profile --out $OUT/$v > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_rows_and_lists|_row_terms|_keyed_dkdv|GPU kernels|^sparsectr|^full|rror" /tmp/p.log | head -20
  date -u +%H:%M:%S
done
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/one/gpu_suite.json"))
for c in d["autotuned"].get("_rows_and_lists_kernel", {}).get("candidates", []):
    print(c)
print("best", {k: v for k, v in d["autotuned"].get("_rows_and_lists_kernel", {}).items() if k != "candidates"})
PY
export RECSYS_EVO_ROWS_KEYED=1
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|sparsectr" | head -20
date -u +%H:%M:%S
