"""Training configuration: one YAML file, dotted `--set key=value` overrides, pydantic validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recsys.data.spec import SpecError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(Section):
    dataset: str
    batch_size: int = Field(256, gt=0)
    eval_batch_size: int = Field(1024, gt=0)
    max_history: Optional[int] = Field(None, gt=0, description="defaults to the feature spec's history.max_length")
    num_chunks: Optional[int] = Field(None, gt=0, description="defaults to the feature spec's chunking.num_chunks")
    workers: int = Field(2, ge=0)
    order: Literal["time", "shuffle"] = "time"
    train_fraction: float = Field(1.0, gt=0, le=1, description="a seeded random subset of the training samples (scaling sweeps)")


class ModelSection(Section):
    name: Literal["sparsectr", "grab", "transformer", "din", "dnn"]
    options: Dict[str, Any] = Field(default_factory=dict)


class OptimSection(Section):
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    clip_norm: float = Field(1.0, gt=0)
    embedding_optimizer: Literal["rowwise_adagrad", "adagrad", "adam", "sgd"] = "rowwise_adagrad"
    embedding_lr: float = Field(0.05, gt=0)


class ShardingSection(Section):
    """`enabled: false` keeps every table unsharded on one device with a plain (not fused) embedding
    optimizer: for a single GPU without the CUDA fbgemm-gpu build, whose KJT kernels sharding needs."""

    enabled: bool = True
    sequence_default: Literal["table_wise", "row_wise", "column_wise", "data_parallel"] = "row_wise"
    pooled_default: Literal["table_wise", "row_wise", "column_wise", "data_parallel"] = "table_wise"
    tables: Dict[str, Literal["table_wise", "row_wise", "column_wise", "data_parallel"]] = Field(default_factory=dict)


class TrainSection(Section):
    epochs: int = Field(1, gt=0)
    max_steps: Optional[int] = Field(None, gt=0)
    eval_every: Optional[int] = Field(None, gt=0, description="validate every N steps (and after every epoch)")
    log_every: int = Field(20, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True
    compile: bool = Field(False, description="torch.compile each encoder block in place (sparsectr, grab, transformer): "
                                             "a speed option, measured by benchmarks/gpu_suite.py; state dict and export unchanged")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode of train.compile: reduce-overhead replays each compiled block as a CUDA graph "
                               "(the fused attention kernels are custom ops, no graph break): the choice on a GPU. Measured on the H100 "
                               "for sparsectr attention=triton at L = 4,096 with the data loader in the loop: 1,291-1,381 against "
                               "default's 1,114-1,259 samples/s (benchmarks/RESULTS.md session 10)")


class SequenceSection(Section):
    """GRAB §3 training: packed user sequences with dense supervision, then STS stage 2.

    Stage 1 reads every `stride`-th sample of each user with its history window and supervises every
    labelled history event once per epoch (plus the candidates), with the embedding learning rate
    scaled by `embedding_lr_scale`. Stage 2 (`sts`) freezes everything but the head and the
    embedding tables and trains on de-correlated pointwise samples (a user-spreading shuffle, at most
    `max_targets_per_user` per user per batch). Stage lengths default to one pass each.
    """

    enabled: bool = False
    stride: int = Field(16, gt=0)
    batch_size: Optional[int] = Field(None, gt=0, description="windows per stage-1 batch; default data.batch_size // stride, "
                                      "so a step supervises about as many events as a pointwise step")
    history_loss_weight: float = Field(1.0, ge=0)
    embedding_lr_scale: float = Field(0.1, gt=0)
    stage1_steps: Optional[int] = Field(None, gt=0)
    sts: bool = True
    stage2_steps: Optional[int] = Field(None, gt=0)
    max_targets_per_user: int = Field(2, gt=0)


class TrackingSection(Section):
    experiment: str = "recsys"
    tracking_uri: Optional[str] = None
    run_name: Optional[str] = None
    parent_run_id: Optional[str] = Field(None, description="nests this run under a sweep's parent run")
    tags: Dict[str, str] = Field(default_factory=dict)


class TrainConfig(Section):
    data: DataSection
    model: ModelSection
    optim: OptimSection = OptimSection()
    sharding: ShardingSection = ShardingSection()
    train: TrainSection = TrainSection()
    sequence: SequenceSection = SequenceSection()
    tracking: TrackingSection = TrackingSection()
    output_dir: str = "runs/default"


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` sets raw['a']['b']['c']; the value is parsed as YAML (numbers, lists, bools)."""
    for override in overrides:
        if "=" not in override:
            raise SpecError(f"--set {override!r}: expected key=value")
        key, value = override.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {override!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_train_config(path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None) -> TrainConfig:
    raw = dict(base or {})
    if path is not None:
        try:
            raw.update(yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(f"cannot read training config {path}: {exc}") from exc
    raw = apply_overrides(raw, overrides or [])
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"invalid training config {path}:"]
        lines += [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SpecError("\n".join(lines)) from exc
