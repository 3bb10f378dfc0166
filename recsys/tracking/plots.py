"""Training-curve plot (PNG) for MLflow artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(loss: List[Tuple[int, float]], valid: Dict[str, List[Tuple[int, float]]], path: Path, title: str) -> Path:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if loss:
        left.plot(*zip(*loss), label="train loss")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.legend()
    for name, points in valid.items():
        if points:
            right.plot(*zip(*points), marker="o", label=f"valid {name}")
    right.set_xlabel("step")
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
