# session 20 call 1: the row-term pass loading one shared dO once (s1) against HEAD (s0), same run; s2 = s1 without the
# per-pair IABS (a timing probe of how much one instruction per pair is worth; wrong for unsorted times);
# then Nsight Compute source counters (per-SASS stall samples) of the node's big kernels
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
use() { cp refcopy/$1/*.py recsys/ops/; }
date -u +%H:%M:%S; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
i=0
for run in "s0 --profile" "s1 --profile" "s2 --profile" "s1" "s0" "s2"; do
  set -- $run; v=$1; shift; i=$((i+1)); use $v; echo "== run $i variant $v $* $(date -u +%H:%M:%S)"
  timeout 70 $S $A "$@" --out /tmp/o/a${i}_$v > /tmp/a$i.log 2>&1; echo "rc=$?"
  grep -E "^sparsectr|^full" /tmp/a$i.log | awk '{print $1, $4}'; grep -E "_local_forward|_local_dkdv|_row_terms_kernel|launches" /tmp/a$i.log | head -8
done
use s1; timeout 80 $S --dataset /tmp/none --out /tmp/o/corr --parts correctness --skip-cama-checks > /tmp/corr.log 2>&1; echo "corr rc=$?"; grep -E "^correct|rror|FAIL" /tmp/corr.log | tail -12
echo "== ncu $(date -u +%H:%M:%S)"
cd benchmarks
timeout 200 ncu --clock-control none --profile-from-start off -k regex:'_local_forward|_local_dkdv|_row_terms|_dq_from' --section SourceCounters --section WarpStateStats --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Chart --section SpeedOfLight --section Occupancy -o /tmp/o/src python3 ncu_kernels.py --cases sparsectr:8192 > /tmp/ncu.log 2>&1; echo "ncu rc=$?"; tail -5 /tmp/ncu.log
for k in _local_forward _local_dkdv _row_terms _dq_from; do
  ncu -i /tmp/o/src.ncu-rep -k regex:$k --page source --csv --print-source sass > /tmp/o/src$k.csv 2>/tmp/o/src$k.err; echo "$k rc=$? $(wc -l < /tmp/o/src$k.csv)"; head -c 300 /tmp/o/src$k.err
done
ncu -i /tmp/o/src.ncu-rep --page details --csv > /tmp/o/details.csv 2>&1; echo "details rc=$? $(wc -l < /tmp/o/details.csv)"
cd ..
tar czf $OUT/call1.tgz -C /tmp/o .
date -u +%H:%M:%S
