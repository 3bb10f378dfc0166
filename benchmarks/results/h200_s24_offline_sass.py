"""Session 24: the offline sm_90 view of a kernel_resources kernel (resources, op counts, SASS), used on the tree with
h200_s24_folded_corners.patch applied; MAXNREG=255 lifts the register cap. Loop sizes: h200_s24_sass_loops.py on the dump.

    .venv/bin/python benchmarks/results/h200_s24_offline_sass.py "local fwd" '{"CANDIDATES": false, "GATED": false, "FOLD": true}' /tmp/fwd.sass
"""
import sys, os, re, subprocess, tempfile, json
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))); sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
os.environ["TRITON_INTERPRET"] = "0"
import kernel_resources as kr
import triton
name = sys.argv[1]
extra = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
dump = sys.argv[3] if len(sys.argv) > 3 else None
(autotuned, names, types, ex), constants = kr.KERNELS[name]
kr.KERNELS[name] = ((autotuned, names, types, {**ex, **extra}), constants)
constants = {**constants, **extra}
for config in autotuned.configs:
    source = kr.kernel_source(name, config, constants)
    cap = int(os.environ.get("MAXNREG", config.maxnreg or 0))
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages, **({"maxnreg": cap} if cap else {})}
    compiled = triton.compile(source, target=kr.TARGET, options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as h:
        h.write(compiled.asm["cubin"])
    usage = subprocess.run([kr.TOOLS / "cuobjdump", "-res-usage", h.name], capture_output=True, text=True).stdout
    sass = subprocess.run([kr.TOOLS / "cuobjdump", "-sass", h.name], capture_output=True, text=True).stdout
    instr = [l for l in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", l)]
    ops = {}
    for l in instr:
        m = re.match(r"\s+/\*[0-9a-f]{4}\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)", l)
        if m:
            op = m.group(2).split(".")[0]; ops[op] = ops.get(op, 0) + 1
    print(config.kwargs, re.findall(r"REG:\d+|STACK:\d+|SHARED:\d+", usage), "instr", len(instr))
    print(sorted(ops.items(), key=lambda x: -x[1])[:40])
    if dump:
        open(dump, "w").write(sass); open(dump + ".ttgir", "w").write(compiled.asm["ttgir"])
