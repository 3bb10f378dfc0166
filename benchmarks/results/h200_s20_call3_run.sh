# session 20 call 3: the next tile's operands loaded while the current one computes (register prefetch):
# the forward's k/v (F, caps 128 / 144) and the stored-score dK/dV's q/dO (D, caps 200 / none), against HEAD (p0), same run;
# R: relaxed atomics for the profile key and scale sums (Nsight: the default acq_rel fences held the row-term pass)
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp refcopy/$1/*.py recsys/ops/; }
date -u +%H:%M:%S
i=0
for run in "p0 --profile" "F128 --profile" "F144 --profile" "D200 --profile" "DU --profile" "F128DU --profile" "R --profile" "F128DUR --profile" "p0" "F128DUR" "R" "p0"; do
  set -- $run; v=$1; shift; i=$((i+1)); use $v; echo "== run $i variant $v $* $(date -u +%H:%M:%S)"
  timeout 90 $S $A "$@" --out /tmp/o/a${i}_${v} > /tmp/a$i.log 2>&1; rc=$?; echo "rc=$rc"; [ $rc != 0 ] && tail -4 /tmp/a$i.log
  grep -E "^sparsectr|^full" /tmp/a$i.log | awk '{print $1, $4}'; grep -E "_local_forward|_local_dkdv|_row_terms|_keyed_dkdv|launches" /tmp/a$i.log | head -10
done
use F128DUR; timeout 90 $S --dataset /tmp/none --out /tmp/o/corr --parts correctness --skip-cama-checks > /tmp/corr.log 2>&1; echo "corr rc=$?"; grep -E "^correct|rror|FAIL" /tmp/corr.log | tail -12
tar czf $OUT/call3.tgz -C /tmp/o .
date -u +%H:%M:%S
