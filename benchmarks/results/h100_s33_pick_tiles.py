"""Session 33 (device call): from tile_sweep.json, the row-term and dQ-from-scores tiles that beat the kept ones by
3 us or more at n = 8,192, written into a copy of recsys/ (s33_tuned/) for the node timings that follow. Prints what
it picked; exits 1 where nothing beat the kept tiles."""
import json
import re
import shutil
import sys
from pathlib import Path

sweep = json.loads(Path(sys.argv[1]).read_text())["cases"]["sparsectr:8192"]
KEPT = {"_row_terms_kernel": "64x64w2s1", "_dq_from_scores_kernel": "-w4s1"}
source = Path("recsys/ops/evo_scores_backward.py").read_text()
changed = False
for name, kept in KEPT.items():
    times = sweep.get(name, {})
    if kept not in times:
        print(f"{name}: kept tile {kept} not in the sweep; left as it is")
        continue
    best = min(times, key=times.get)
    print(f"{name}: kept {kept} {times[kept]:.1f} us, best {best} {times[best]:.1f} us")
    if times[kept] - times[best] < 3.0:
        continue
    tile, warps, stages, cap = re.fullmatch(r"(\d+x\d+|-)w(\d+)s(\d+)(?:r(\d+))?", best).groups()
    cap_text = f", {cap}" if cap else ""
    if name == "_row_terms_kernel":
        m, n = tile.split("x")
        kept_line = "_ROW_TILES = tile_configs([(64, 64, 2, 1)])"
        new_line = f"_ROW_TILES = tile_configs([({m}, {n}, {warps}, {stages}{cap_text})])"
    else:
        cap_kw = f", maxnreg={cap}" if cap else ""
        kept_line = "_DQ_TILES = [triton.Config({}, num_warps=1 if INTERPRETED else 4, num_stages=1)]"
        new_line = f"_DQ_TILES = [triton.Config({{}}, num_warps=1 if INTERPRETED else {warps}, num_stages={stages}{cap_kw})]"
    if kept_line not in source:  # else "tuned" would silently time the kept tiles
        sys.exit(f"{name}: the kept tile line is no longer `{kept_line}` in recsys/ops/evo_scores_backward.py")
    source = source.replace(kept_line, new_line)
    changed = True
if not changed:
    sys.exit(1)
shutil.rmtree("s33_tuned", ignore_errors=True)
shutil.copytree("recsys", "s33_tuned/recsys")
Path("s33_tuned/recsys/ops/evo_scores_backward.py").write_text(source)
print("s33_tuned written")
