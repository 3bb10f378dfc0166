# session 19 call 5: the row-term pass with every load before the first store, against a same-run reference
source scripts/device_env.sh || exit 1
mkdir -p /tmp/perf && tar xzf .gpudata/perf.tgz -C /tmp/perf
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp refcopy/$1/*.py recsys/ops/; }
date -u +%H:%M:%S
i=0
for run in "s2 --profile" "s3 --profile" "s4 --profile" "s5 --profile" "s3" "s2"; do
  set -- $run; v=$1; shift; i=$((i+1)); use $v; echo "== run $i variant $v $* $(date -u +%H:%M:%S)"
  timeout 60 $S $A "$@" --out /tmp/o/a${i}_$v > /tmp/a$i.log 2>&1; echo "rc=$?"
  grep -E "^sparsectr|^full" /tmp/a$i.log | awk '{print $1, $4}'; grep -E "_row_terms_kernel|_keyed_dkdv|launches" /tmp/a$i.log | head -8
done
use s3; timeout 70 $S --dataset /tmp/none --out /tmp/o/corr --parts correctness --skip-cama-checks > /tmp/corr.log 2>&1; echo "corr rc=$?"; grep -E "^correct|rror|FAIL" /tmp/corr.log | tail -25
cp /tmp/o/corr/gpu_suite.json $OUT/corr.json 2>/dev/null
tar czf $OUT/attention.tgz -C /tmp/o .
use s3; echo "== training s3 $(date -u +%H:%M:%S)"
timeout 120 $S --dataset /tmp/perf/prepared --parts training --histories 4096 --train-models sparsectr:triton+graphs --workers 4 --out $OUT/train > /tmp/t.log 2>&1; echo "rc=$?"; grep -E "train |MFU|^sparsectr" /tmp/t.log | tail -6
cp /tmp/o/corr/gpu_suite.json $OUT/corr.json 2>/dev/null
date -u +%H:%M:%S
