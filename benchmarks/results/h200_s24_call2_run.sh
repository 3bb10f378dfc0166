# session 24 call 2 (tree with h200_s24_folded_corners.patch applied): the folded forward at register
# caps 144 and 168 (the tile list's fifth entry edited in this copy by sed) against the unfolded at 128
source scripts/device_env.sh || exit 1
S="python3 benchmarks/gpu_suite.py"
A="--dataset /tmp/none --parts attention --min-n 8192 --max-n 8192 --kernels full_causal_sdpa,sparsectr_fused_layer_graph,sparsectr_fused_layer_gated_graph"
F=recsys/ops/evo_local_triton.py
date -u +%H:%M:%S
for run in "1 168" "1 144" "0 128" "1 128" "1 168"; do
  set -- $run
  sed -i "s/^_FORWARD_TILES = tile_configs(\[(64, 32, 4, 1, [0-9]*)\])/_FORWARD_TILES = tile_configs([(64, 32, 4, 1, $2)])/" $F
  echo "== fold$1 cap$2"; grep "^_FORWARD_TILES" $F
  RECSYS_EVO_FOLD=$1 timeout 100 $S $A --profile --out $OUT/f$1c$2 > /tmp/p.log 2>&1; echo "rc=$?"; cat /tmp/p.log >> $OUT/f$1c$2.log
  grep -E "forward_kernel|GPU kernels|rror" /tmp/p.log | cut -c1-100 | tail -4
done
date -u +%H:%M:%S
