"""SparseCTR's fused local-branch kernel (Triton's interpreter here) equals the structural
`local_branch`: outputs and the gradients of q, k, v, the profile key/value and the temporal scales."""

from __future__ import annotations

import pytest
import torch

from recsys.ops.chunking import personalized_chunks
from recsys.ops.evo_attention import evo_geometry, local_branch
from recsys.ops.evo_local_triton import local_history_triton
from recsys.ops.temporal import alibi_scales


@pytest.mark.parametrize("window,dim,weekend_rule,utc_offset", [(8, 16, 0, 0), (16, 8, 1, 8 * 3600), (20, 16, 0, -5 * 3600)])
def test_fused_local_branch_equals_structural_with_gradients(window, dim, weekend_rule, utc_offset):
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, length, heads = 3, 45, 2
    lengths = torch.tensor([length, 29, 1])
    # Gaps from seconds to days: every term of the composite bias (log-time, clock hour, weekend) varies.
    gaps = torch.randint(1, 200_000, (batch, length), generator=generator) * torch.randint(0, 2, (batch, length), generator=generator)
    times = 1_704_067_200 + gaps.cumsum(1)
    real = torch.arange(length).view(1, -1) >= (length - lengths).view(-1, 1)
    times = torch.where(real, times, torch.zeros_like(times))
    layout = personalized_chunks(times, lengths, 4)
    geometry = evo_geometry(times, *layout, 0, 2, window, utc_offset, weekend_rule)
    leaves = [torch.randn(batch, heads, length, dim, generator=generator) for _ in range(3)]
    leaves += [torch.randn(batch, heads, 1, dim, generator=generator) for _ in range(2)]
    leaves.append(alibi_scales(heads) + 0.3 * torch.randn(3, heads, generator=generator))
    leaves = [x.requires_grad_() for x in leaves]
    upstream = torch.randn(batch, heads, length, dim, generator=generator)

    q, k, v, k_profile, v_profile, scales = leaves
    expected = local_branch(q, k, v, k_profile, v_profile, geometry, window, scales)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), leaves)
    got = local_history_triton(q, k, v, k_profile, v_profile, times, real, window, scales, utc_offset, weekend_rule)
    got_grads = torch.autograd.grad((got * upstream).sum(), leaves)

    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for name, g, e in zip(("q", "k", "v", "k_profile", "v_profile", "scales"), got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"grad of {name}: {m}")


# At -1000 the first pass overflows on purpose (the interpreter's numpy warns); the re-run must repair it.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("profile_pull", [-1000.0, 1000.0])
def test_fused_local_branch_with_the_profile_key_far_from_the_window(profile_pull):
    """The forward takes each row's profile score as its softmax reference, with no running maximum.
    A profile key far below every window key's score (-1000: the sums overflow, and the block runs
    again with a running maximum) or far above (1000: the window's weights underflow to 0, as they are
    in the reference) must still give the structural branch's outputs and gradients."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, length, heads, dim, window = 2, 40, 2, 16, 8
    lengths = torch.tensor([length, 23])
    times = 1_704_067_200 + torch.randint(1, 50_000, (batch, length), generator=generator).cumsum(1)
    real = torch.arange(length).view(1, -1) >= (length - lengths).view(-1, 1)
    times = torch.where(real, times, torch.zeros_like(times))
    layout = personalized_chunks(times, lengths, 4)
    geometry = evo_geometry(times, *layout, 0, 2, window, 0, 0)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=generator) for _ in range(3))
    q[..., 0] = 10.0  # one shared direction: q·k_profile is about 10 · profile_pull for every row
    k_profile, v_profile = (torch.randn(batch, heads, 1, dim, generator=generator) for _ in range(2))
    k_profile[..., 0] = profile_pull
    scales = alibi_scales(heads) + 0.3 * torch.randn(3, heads, generator=generator)
    leaves = [x.requires_grad_() for x in (q, k, v, k_profile, v_profile, scales)]
    upstream = torch.randn(batch, heads, length, dim, generator=generator)

    expected = local_branch(*leaves[:5], geometry, window, leaves[5])
    expected_grads = torch.autograd.grad((expected * upstream).sum(), leaves)
    got = local_history_triton(*leaves[:5], times, real, window, leaves[5], 0, 0)
    got_grads = torch.autograd.grad((got * upstream).sum(), leaves)

    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for name, g, e in zip(("q", "k", "v", "k_profile", "v_profile", "scales"), got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"grad of {name}: {m}")
