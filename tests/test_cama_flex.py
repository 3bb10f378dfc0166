"""CamA through FlexAttention equals the dense-mask CamA (forward on CPU; gradients on the GPU suite)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys.ops.cama import cama_attention, cama_mask
from recsys.ops.cama_flex import cama_block_mask, cama_flex_attention, cama_mask_mod, head_channels
from recsys.ops.temporal import log_bucket


def _packed_inputs(generator: torch.Generator):
    """Two users packed in one row, each with history events then two candidates; shared request times."""
    segments, positions, times, candidates = [], [], [], []
    for user, length in enumerate((23, 17)):
        gaps = torch.randint(0, 3, (length,), generator=generator) * torch.randint(1, 5000, (length,), generator=generator)
        t = 1_700_000_000 + gaps.cumsum(0)
        request = int(t[-1]) + 60
        segments += [user] * (length + 2)
        positions += list(range(length + 2))
        times += t.tolist() + [request, request]
        candidates += [False] * length + [True, True]
    n = len(segments)
    segment, position = torch.tensor([segments]), torch.tensor([positions])
    times_t, is_candidate = torch.tensor([times]), torch.tensor([candidates])
    real = torch.ones(1, n, dtype=torch.bool)
    action_ids = torch.where(is_candidate, 0, torch.randint(1, 4, (1, n), generator=generator))
    return segment, position, times_t, real, is_candidate, action_ids


def test_flex_cama_equals_dense_cama_forward():
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    segment, position, times, real, is_candidate, action_ids = _packed_inputs(generator)
    heads, dim, contexts, buckets = 4, 8, 2, 128
    head_groups = [torch.zeros(0, dtype=torch.int64)] * 2 + [torch.tensor([2, 3]), torch.tensor([3])]
    n = segment.shape[1]
    q = torch.randn(1, heads, n, dim, generator=generator)
    k, v = (torch.randn(1, heads, contexts + n, dim, generator=generator) for _ in range(2))
    table = torch.randn(buckets + 1, heads, generator=generator)
    mask = cama_mask(segment, position, times, real, is_candidate, action_ids, head_groups, contexts)
    delta = (times.unsqueeze(2) - times.unsqueeze(1)).clamp_min(0)
    bias = F.embedding(log_bucket(delta, buckets), table).permute(0, 3, 1, 2)
    bias = torch.cat([bias.new_zeros(1, heads, n, contexts), bias], dim=3)
    expected = cama_attention(q, k, v, mask, bias)

    content, in_group = head_channels(head_groups, 5, q.device)
    mask_mod = cama_mask_mod(segment, position, times, real, is_candidate, action_ids, content, in_group, contexts)
    b, h, qi, kv = torch.meshgrid(torch.arange(1), torch.arange(heads), torch.arange(n), torch.arange(contexts + n), indexing="ij")
    torch.testing.assert_close(mask_mod(b, h, qi, kv), mask, rtol=0, atol=0)  # the same rule, element by element
    block_mask = cama_block_mask(segment, position, times, real, is_candidate, action_ids, content, in_group, contexts)
    got = cama_flex_attention(q, k, v, block_mask, times, table, contexts, buckets)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)



def test_grab_with_flex_attention_equals_softmax_grab(prepared):
    import numpy as np

    from recsys.data.loader import BatchBuilder
    from recsys.data.store import PreparedDataset
    from recsys.models.registry import build_model

    dataset = PreparedDataset(prepared)
    batch = BatchBuilder(dataset, max_history=24, num_chunks=4).build(np.asarray(dataset.split_indices("test")[:6]))
    outputs = []
    for attention in ("softmax", "flex"):
        torch.manual_seed(0)
        model = build_model("grab", dataset.metadata, {"d_model": 16, "heads": 4, "layers": 2, "attention": attention}).eval()
        with torch.no_grad():
            outputs.append(model(batch))
    torch.testing.assert_close(outputs[1].logits, outputs[0].logits, rtol=1e-4, atol=1e-5)
    valid = batch.chunk_id > 0
    torch.testing.assert_close(outputs[1].history_logits[valid], outputs[0].history_logits[valid], rtol=1e-4, atol=1e-5)
