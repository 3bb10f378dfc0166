"""Streaming CTR metrics: AUC, GAUC (named variants), logloss, normalised entropy, calibration.

Predictions are gathered per split and computed once at the end, so groups that span batches are
handled exactly. GAUC (DIN's definition, the headline): per-user AUC weighted by the user's number
of samples, skipping users whose samples are all one class; `gauc_unweighted` is the plain mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc


@dataclass
class PredictionBuffer:
    probabilities: List[torch.Tensor] = field(default_factory=list)
    labels: List[torch.Tensor] = field(default_factory=list)
    users: List[torch.Tensor] = field(default_factory=list)

    def add(self, probabilities: torch.Tensor, labels: torch.Tensor, users: torch.Tensor, weights: torch.Tensor) -> None:
        keep = (weights > 0).cpu()  # rank-padding samples carry weight 0
        self.probabilities.append(probabilities.detach().float().cpu()[keep])
        self.labels.append(labels.detach().cpu()[keep])
        self.users.append(users.detach().cpu()[keep])

    def compute(self) -> Dict[str, float]:
        if not self.probabilities:
            return {"samples": 0}
        return ctr_metrics(torch.cat(self.probabilities), torch.cat(self.labels), torch.cat(self.users))


def _grouped_auc(probabilities: np.ndarray, labels: np.ndarray, users: np.ndarray) -> tuple[float, float]:
    order = np.argsort(users, kind="stable")
    users, probabilities, labels = users[order], probabilities[order], labels[order]
    boundaries = np.flatnonzero(np.diff(users)) + 1
    weighted_sum, weight_total, plain = 0.0, 0.0, []
    for p, y in zip(np.split(probabilities, boundaries), np.split(labels, boundaries)):
        positives = y.sum()
        if positives == 0 or positives == len(y):
            continue
        auc = float(binary_auroc(torch.from_numpy(p), torch.from_numpy(y).long()))
        weighted_sum += auc * len(y)
        weight_total += len(y)
        plain.append(auc)
    if not plain:
        return float("nan"), float("nan")
    return weighted_sum / weight_total, float(np.mean(plain))


def ctr_metrics(probabilities: torch.Tensor, labels: torch.Tensor, users: torch.Tensor) -> Dict[str, float]:
    p = probabilities.double().clamp(1e-7, 1 - 1e-7)
    y = labels.double()
    logloss = float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())
    rate = float(y.mean())
    base = -(rate * np.log(max(rate, 1e-7)) + (1 - rate) * np.log(max(1 - rate, 1e-7)))
    gauc, gauc_unweighted = _grouped_auc(p.numpy(), y.numpy(), users.numpy())
    return {
        "auc": float(binary_auroc(p, y.long())) if 0 < rate < 1 else float("nan"),
        "gauc": gauc,
        "gauc_unweighted": gauc_unweighted,
        "logloss": logloss,
        "ne": logloss / base if base > 0 else float("nan"),
        "calibration": float(p.mean()) / rate if rate > 0 else float("nan"),
        "samples": int(len(y)),
    }
