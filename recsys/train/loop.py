"""Single-process training loop: the loss, one epoch, and evaluation of a split.

The distributed trainer (TorchRec DistributedModelParallel, fused embedding optimizers, MLflow)
builds on these functions; they take a model and batches and know nothing about ranks or tracking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import torch
import torch.nn.functional as F

from recsys.models.base import ModelOutput, RankingModel
from recsys.train.metrics import PredictionBuffer


@dataclass(frozen=True)
class LossConfig:
    """`history_loss_weight`: GRAB's dense supervision on labelled history events.

    Targets are the batch's `history_targets`, which only packed user sequences
    (`SplitBatches(sequence_stride=...)`) set, so that every event is a target once per epoch. On
    per-sample windows, which overlap, each event's label would come back up to L times per epoch
    and the item embeddings memorise it: measured on synthetic data, 250 steps reached a training
    loss of 0.24 (below the Bayes rate) and test AUC 0.62, against 0.74 without history targets.
    """

    history_loss_weight: float = 1.0


def ctr_loss(output: ModelOutput, batch, cfg: LossConfig = LossConfig()) -> torch.Tensor:
    """Weighted BCE on the candidates, plus BCE on labelled history events when the model scores them."""
    logits = output.logits[:, 0]
    loss = (F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none") * batch.weights).sum()
    count = batch.weights.sum()
    if output.history_logits is not None and cfg.history_loss_weight > 0:
        labelled = batch.history_targets & (batch.weights.unsqueeze(1) > 0)
        history_loss = F.binary_cross_entropy_with_logits(output.history_logits[labelled], batch.history_labels[labelled], reduction="sum")
        loss = loss + cfg.history_loss_weight * history_loss
        count = count + cfg.history_loss_weight * labelled.sum()
    return loss / count.clamp_min(1.0)


def train_steps(model: RankingModel, batches: Iterable, optimizer: torch.optim.Optimizer, steps: Optional[int] = None,
                loss_cfg: LossConfig = LossConfig(), clip_norm: float = 1.0) -> float:
    """Train on `batches` (at most `steps`); returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    for index, batch in enumerate(batches):
        if steps is not None and index >= steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss = ctr_loss(model(batch), batch, loss_cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        total, count = total + float(loss.detach()), count + 1
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: RankingModel, batches: Iterable) -> Dict[str, float]:
    model.eval()
    buffer = PredictionBuffer()
    for batch in batches:
        probabilities = torch.sigmoid(model(batch).logits[:, 0])
        buffer.add(probabilities, batch.labels, batch.user_ids, batch.weights)
    return buffer.compute()
