"""What each duty of the library's local dK/dV kernel costs (H100/H200): the kernel as the node runs
it (stored dS, gated dO, the key lists' gradients added per key, q/k/v strided inside the packed
projection) against the same kernel with each duty off, on the same inputs (history rows only).

The history-only kernel ran 209 us at n = 8,192 in session 21 (`gluon_local_dkdv.py`); the node's
runs 300 (`gpu_suite.py --profile`). This splits the difference.

    python3 benchmarks/local_dkdv_parts.py --n 8192 --batch 8 --heads 8
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gluon_local_forward import make_inputs, probe_arguments, time_ms  # noqa: E402


def run_gpu(args) -> dict:
    import torch

    from recsys.ops.evo_keyed_triton import ScoreStore
    from recsys.ops.evo_local_triton import KeyGradientsIn, local_forward, local_key_gradients, score_block

    batch, heads, length, dim, window = args.batch, args.heads, args.n, 64, 64
    q, k, v, kp, vp, times, flags, clock, scales = make_inputs(batch, heads, length, dim, args.seed)
    sm_scale = 1.0 / math.sqrt(dim)
    # the node's layout: q, k, v heads inside one [B, L, 3, H, D] projection
    packed = torch.stack([x.transpose(1, 2) for x in (q, k, v)], dim=2).contiguous()
    pq, pk, pv = (packed[:, :, i].transpose(1, 2) for i in range(3))
    out, lse = torch.empty_like(q), torch.empty(batch, heads, length, device="cuda")
    local_forward(q, k, v, kp, vp, times, flags, clock, scales, out, lse, length, window, 0, sm_scale)
    generator = torch.Generator(device="cuda").manual_seed(args.seed + 1)  # upstream gradient, gates, key lists' rows
    grad_out = torch.randn(q.shape, generator=generator, device="cuda").to(q.dtype)
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()
    gate = torch.rand(batch, heads, length, generator=generator, device="cuda")
    chunks = length // 64
    positions = torch.arange(length, device="cuda")
    chunk_id = (positions // 64 + 1).to(torch.int32).expand(batch, length).contiguous()
    tail_slot = torch.where(positions % 64 >= 62, 2 * (positions // 64) + positions % 64 - 62, -1).to(torch.int32).expand(batch, length).contiguous()
    key_rows = lambda count: torch.randn(batch, heads, count, dim, generator=generator, device="cuda")  # noqa: E731
    extra = KeyGradientsIn(chunk_id, key_rows(chunks), key_rows(chunks), tail_slot, key_rows(2 * chunks), key_rows(2 * chunks))
    rows_stored = length // score_block(window) * score_block(window)
    store = ScoreStore([torch.empty(batch * heads, rows_stored, 2 * score_block(window), device="cuda", dtype=q.dtype)], rows_stored,
                       torch.zeros(3, heads, device="cuda"))
    dk, dv = torch.empty_like(q), torch.empty_like(q)
    grad_packed = torch.empty_like(packed)  # dK and dV share q, k and v's layout
    pdk, pdv = grad_packed[:, :, 1].transpose(1, 2), grad_packed[:, :, 2].transpose(1, 2)
    cases = {
        "history-only, dense": dict(),
        "+ packed q/k/v": dict(packed=True),
        "+ stored dS": dict(store=store),
        "+ gated dO": dict(gate=gate),
        "+ key lists' gradients": dict(extra=extra),
        "all (the node's duties)": dict(packed=True, store=store, gate=gate, extra=extra),
    }
    rows = []
    for name, case in cases.items():
        operands, grads = ((pq, pk, pv), (pdk, pdv)) if case.get("packed") else ((q, k, v), (dk, dv))
        kwargs = {key: value for key, value in case.items() if key != "packed"}
        step = lambda: local_key_gradients(*operands, grad_out, lse, delta, times, flags, clock, scales, *grads, length, window, 0, sm_scale,
                                           **kwargs)
        rows.append({"case": name, "us": 1000 * time_ms(step, args.steps)})
    for row in rows:
        row["x_plain"] = row["us"] / rows[0]["us"]
    return {"device": torch.cuda.get_device_name(), "n": length, "batch": batch, "heads": heads, "rows": rows}


def main() -> None:
    parser = probe_arguments(__doc__, variants=False)
    args = parser.parse_args()
    result = run_gpu(args)
    print(f"{'local dK/dV kernel':<28} {'us':>8} {'x plain':>8}")
    for row in result["rows"]:
        print(f"{row['case']:<28} {row['us']:>8.1f} {row['x_plain']:>8.3f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "local_dkdv_parts.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
