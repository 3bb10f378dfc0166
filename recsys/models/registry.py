"""Models by name: `sparsectr`, `grab`, `transformer`, `din`, `dnn`."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Callable, Dict

from recsys.models.base import RankingModel
from recsys.models.baselines import DIN, DNN, PoolingConfig
from recsys.models.embedding import EmbeddingLayout
from recsys.models.grab import GRAB, GRABConfig
from recsys.models.sparsectr import SparseCTR, SparseCTRConfig


def _config(cls, options: Dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown options {unknown} (known: {sorted(known)})")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    if "channels" in converted and converted["channels"] is not None:
        converted["channels"] = tuple(tuple(c) for c in converted["channels"])
    return cls(**converted)


def _sparsectr(layout, metadata, options):
    return SparseCTR(layout, _config(SparseCTRConfig, options), metadata["spec"]["chunking"], int(metadata.get("utc_offset_seconds", 0)))


def _transformer(layout, metadata, options):
    # Same block, same RelTemporal bias: only the attention pattern differs from SparseCTR.
    # `temporal_bias: false` gives the bias-free variant that SDPA can run on its fused kernels.
    cfg = replace(_config(SparseCTRConfig, options), attention="full")
    return SparseCTR(layout, cfg, metadata["spec"]["chunking"], int(metadata.get("utc_offset_seconds", 0)))


def _grab(layout, metadata, options):
    options = dict(options)
    packed = bool(options.pop("packed", False))
    return GRAB(layout, _config(GRABConfig, options), packed=packed)


MODELS: Dict[str, Callable[[EmbeddingLayout, dict, Dict[str, Any]], RankingModel]] = {
    "sparsectr": _sparsectr,
    "grab": _grab,
    "transformer": _transformer,
    "din": lambda layout, metadata, options: DIN(layout, _config(PoolingConfig, options)),
    "dnn": lambda layout, metadata, options: DNN(layout, _config(PoolingConfig, options)),
}


def build_model(name: str, metadata: dict, options: Dict[str, Any] | None = None) -> RankingModel:
    """Build a model for a prepared dataset (its `dataset.json` metadata)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](EmbeddingLayout.from_metadata(metadata), metadata, dict(options or {}))
