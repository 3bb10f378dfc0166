# Session 29 (no device lent): the node kernels' sm_90 SASS counts for the tree and each prepared variant, compiled
# here by Triton 3.6.0, the GPU image's compiler (.venv has 3.9, whose counts session 28 recorded). Run in the
# repository root; it needs only the CPU. It installs triton==3.6.0 into /tmp/tr36 (not into .venv: PYTHONPATH puts it
# first for these compiles only), makes one git worktree per variant in /tmp/v_<name> with its patches applied, and
# prints per variant and kernel: the extra constants it was compiled with (history only and ungated where the kernel
# takes them, as the node's benchmark runs it), registers, stack, instructions, and each loop's body.
#   bash benchmarks/results/h200_s29_counts_triton36.sh > /tmp/counts36.txt
set -e
R=$PWD/benchmarks/results
PY=$PWD/.venv/bin/python
[ -d /tmp/tr36/triton ] || $PWD/.venv/bin/pip install -q --no-deps --target /tmp/tr36 triton==3.6.0
declare -A PATCHES=(
  [base]="" [lists]="h200_s27_list_sums" [fixwin]="h200_s27_fixed_reference" [fixed]="h200_s27_fixed_lists"
  [both]="h200_s27_both" [xuw]="h200_s28_weekend_select" [xu]="h200_s28_no_conversions"
  [bothxuw]="h200_s27_both h200_s28_weekend_select" [bothxu]="h200_s27_both h200_s28_no_conversions")
mkdir -p /tmp/s36
for v in base lists fixwin fixed both xuw xu bothxuw bothxu; do
  git worktree remove --force /tmp/v_$v 2>/dev/null || rm -rf /tmp/v_$v
  git worktree add -q --detach /tmp/v_$v HEAD
  for p in ${PATCHES[$v]}; do git -C /tmp/v_$v apply $R/$p.patch; done
done
for v in base lists fixwin fixed both xuw xu bothxuw bothxu; do
  for k in "local fwd" "local dkdv stored" "keyed dkdv stored" "window scale sums" "list scale sums" "row terms" "dq from scores" "chunk sums"; do
    grep -q "\"$k\":" /tmp/v_$v/benchmarks/kernel_resources.py || continue
    f=/tmp/s36/${v}_${k// /_}.sass
    # The first set of extra constants the kernel takes: offline_sass rejects a name the kernel lacks.
    for X in '{"H": 8, "GATED": false, "CANDIDATES": false}' '{"H": 8, "GATED": false}' '{"H": 8}' '{}'; do
      out=$(cd /tmp/v_$v && PYTHONPATH=/tmp/tr36 $PY benchmarks/results/h200_s24_offline_sass.py "$k" "$X" $f 2>&1 | grep -E "^\{|Error" | head -1 | cut -c1-120)
      case "$out" in *Error*) continue;; *) break;; esac
    done
    loops=$($PY $R/h200_s24_sass_loops.py $f 2>/dev/null | grep -o "body [0-9]*" | tr '\n' ' ')
    echo "$v | $k | $X | $out | $loops"
  done
done
for v in base lists fixwin fixed both xuw xu bothxuw bothxu; do git worktree remove --force /tmp/v_$v; done
