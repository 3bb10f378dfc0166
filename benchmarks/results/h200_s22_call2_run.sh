# session 22 call 2: the row terms inside the keyed dK/dV launch (RECSYS_EVO_ROW_TERMS=keyed, the keyed
# kernel's tile candidates autotuned) against their own pass (=pass), node profile; GPU correctness
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
date -u +%H:%M:%S
for v in keyed pass keyed pass; do
  export RECSYS_EVO_ROW_TERMS=$v
  echo "== $v"; timeout 200 $S $A --profile --out $OUT/$v > /tmp/p.log 2>&1; echo "rc=$?"
  grep -E "_row_terms|_keyed_dkdv|GPU kernels|^sparsectr|^full|rror" /tmp/p.log | head -20
  date -u +%H:%M:%S
done
for v in keyed pass; do python3 - $v <<'PY'
import json, os, sys
d = json.load(open(os.environ["OUT"] + f"/{sys.argv[1]}/gpu_suite.json"))
k = d["autotuned"].get("_keyed_dkdv_kernel", {})
for c in k.get("candidates", []):
    print(sys.argv[1], c)
print(sys.argv[1], "best", {a: b for a, b in k.items() if a != "candidates"})
PY
done
export RECSYS_EVO_ROW_TERMS=keyed
timeout 150 $S --dataset /tmp/none --parts correctness --skip-cama-checks --out $OUT/corr 2>&1 | grep -E "^correct|rror|FAIL|sparsectr" | head -20
date -u +%H:%M:%S
