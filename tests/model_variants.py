"""Two attention paths of one model, same seed and batch: equal logits (and history logits where
the model has them) and equal gradients of every parameter."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from recsys.data.loader import BatchBuilder
from recsys.data.store import PreparedDataset
from recsys.models.registry import build_model


def assert_attention_paths_agree(prepared: Path, model_name: str, options: dict, attentions: Tuple[str, str], max_history: int,
                                 trained_parameter: str) -> None:
    """`trained_parameter`: a name suffix whose gradient must exist on the second path (the bias it fuses)."""
    dataset = PreparedDataset(prepared)
    batch = BatchBuilder(dataset, max_history=max_history, num_chunks=4).build(np.asarray(dataset.split_indices("test")[:5]))
    valid = batch.chunk_id > 0
    results = []
    for attention in attentions:
        torch.manual_seed(0)
        model = build_model(model_name, dataset.metadata, {**options, "attention": attention})
        out = model(batch)
        loss = out.logits.square().sum() + (out.history_logits[valid].square().sum() if out.history_logits is not None else 0.0)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        results.append((out, dict(zip([name for name, _ in model.named_parameters()], grads))))
    (expected, expected_grads), (got, got_grads) = results
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
    if expected.history_logits is not None:
        torch.testing.assert_close(got.history_logits[valid], expected.history_logits[valid], rtol=1e-4, atol=1e-5)
    assert any(name.endswith(trained_parameter) and grad is not None for name, grad in got_grads.items())
    for name, grad in expected_grads.items():
        if grad is not None:
            torch.testing.assert_close(got_grads[name], grad, rtol=1e-3, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def assert_blocks_compile_whole(prepared: Path, model_name: str, options: dict, max_history: int) -> None:
    """Every encoder block compiles as one graph (fullgraph=True: a graph break fails), as
    train.compile's CUDA-graph mode needs, with the eager model's logits and parameter gradients."""
    dataset = PreparedDataset(prepared)
    batch = BatchBuilder(dataset, max_history=max_history, num_chunks=4).build(np.asarray(dataset.split_indices("test")[:4]))
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(model_name, dataset.metadata, options)
        if compiled:
            for block in model.blocks:
                block.compile(fullgraph=True, backend="aot_eager")
        out = model(batch)
        grads = torch.autograd.grad(out.logits.square().sum(), [p for p in model.parameters() if p.requires_grad], allow_unused=True)
        results.append((out.logits, grads))
    (expected, expected_grads), (got, got_grads) = results
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(got_grads, expected_grads):
        assert (g is None) == (e is None)
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
