# session 20 call 2: TMA descriptors for the local forward's key/value tiles and the local dK/dV's q/dO tiles
# (RECSYS_LOCAL_TMA: 0 none, 1 both, or one kernel), with tile tables at 1-3 stages (refcopy/<variant>), same run
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp refcopy/$1/*.py recsys/ops/; }
date -u +%H:%M:%S
i=0
for run in "v0 0 --profile" "v0 1 --profile" "f2 forward --profile" "f3 forward --profile" "f2 1 --profile" "f2d2 1 --profile" "f2d2c 1 --profile" "f2c forward --profile" "v0 0" "f2 forward" "f2d2 1" "v0 0"; do
  set -- $run; v=$1; t=$2; shift 2; i=$((i+1)); use $v; echo "== run $i variant $v TMA=$t $* $(date -u +%H:%M:%S)"
  RECSYS_LOCAL_TMA=$t timeout 90 $S $A "$@" --out /tmp/o/a${i}_${v}_$t > /tmp/a$i.log 2>&1; rc=$?; echo "rc=$rc"; [ $rc != 0 ] && tail -4 /tmp/a$i.log
  grep -E "^sparsectr|^full" /tmp/a$i.log | awk '{print $1, $4}'; grep -E "_local_forward|_local_dkdv|launches" /tmp/a$i.log | head -6
done
use f2d2; RECSYS_LOCAL_TMA=1 timeout 90 $S --dataset /tmp/none --out /tmp/o/corr --parts correctness --skip-cama-checks > /tmp/corr.log 2>&1; echo "corr rc=$?"; grep -E "^correct|rror|FAIL" /tmp/corr.log | tail -12
tar czf $OUT/call2.tgz -C /tmp/o .
date -u +%H:%M:%S
