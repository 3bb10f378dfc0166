"""`recsys train`: DistributedModelParallel training with validation, checkpoints and MLflow.

One code path for 1 or N processes (torchrun-compatible). Per rank: the rank's share of every
split (equal step counts, weight-0 padding), fused embedding optimizers in backward, AdamW with
warm-up and cosine decay for dense parameters, gradient clipping, bf16 autocast on GPU. Validation
runs every `eval_every` steps and after every epoch; predictions are gathered to rank 0, which
computes AUC / GAUC / logloss. The best validation AUC is checkpointed (torch.distributed.checkpoint,
sharded), reloaded at the end and scored on the test split.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.utils.flop_counter import FlopCounterMode
import yaml
from torchrec.optim.optimizers import in_backward_optimizer_filter
from tqdm import tqdm

from recsys.data.loader import SplitBatches, make_loader
from recsys.data.store import PreparedDataset
from recsys.models.flops import analytic_forward_flops
from recsys.models.registry import build_model
from recsys.tracking.mlflow_tracker import RunTracker, git_commit, package_versions
from recsys.tracking.plots import plot_training_curves
from recsys.train.config import TrainConfig
from recsys.train.distributed import EMBEDDING_OPTIMIZERS, DistributedContext, attach_fused_optimizer, init_distributed, shard_model
from recsys.train.loop import LossConfig, ctr_loss
from recsys.train.metrics import PredictionBuffer, ctr_metrics


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class History:
    loss: List[Tuple[int, float]] = field(default_factory=list)
    valid: Dict[str, List[Tuple[int, float]]] = field(default_factory=lambda: {"auc": [], "gauc": [], "logloss": []})


@dataclass(frozen=True)
class Phase:
    """One stage of training: which batches, how long, which loss and learning rates."""

    name: str  # "train" (pointwise), "sequence" (GRAB stage 1) or "sparse" (STS stage 2)
    batch_size: int
    steps: int
    steps_per_epoch: int
    order: str
    sequence_stride: Optional[int]
    history_loss_weight: float
    embedding_lr: float
    body_frozen: bool  # STS stage 2: only the head and the embedding tables learn


def is_head_parameter(name: str) -> bool:
    return any(part in ("head", "head_norm") for part in name.split("."))


class Trainer:
    def __init__(self, cfg: TrainConfig, ctx: DistributedContext, resume: bool = False):
        self.cfg, self.ctx = cfg, ctx
        self.out = Path(cfg.output_dir)
        self.checkpoints = self.out / "checkpoints"
        if self.checkpoints.exists() and not resume:
            raise FileExistsError(f"{self.out} already holds a run; pass --resume to continue it or choose another output_dir")
        self.dataset = PreparedDataset(cfg.data.dataset)
        spec = self.dataset.spec
        self.max_history = cfg.data.max_history or spec.history.max_length
        self.num_chunks = cfg.data.num_chunks or spec.chunking.num_chunks
        seed_everything(cfg.train.seed)
        model = build_model(cfg.model.name, self.dataset.metadata, cfg.model.options)
        self.analytic_flops_per_sample = analytic_forward_flops(model, self.max_history, 1, self.num_chunks)
        self.compiled_blocks = model.compile_blocks(cfg.train.compile_mode) if cfg.train.compile else 0
        self.parameter_counts = {
            "dense": sum(p.numel() for p in model.dense_parameters()),
            "embedding": sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.dense_parameters()),
        }
        self.sharded = cfg.sharding.enabled
        if self.sharded:
            attach_fused_optimizer(model, cfg.optim.embedding_optimizer, cfg.optim.embedding_lr)
            self.model = shard_model(model, ctx, cfg.sharding.tables, cfg.sharding.sequence_default, cfg.data.batch_size, cfg.sharding.pooled_default)
            named_dense = list(in_backward_optimizer_filter(self.model.named_parameters()))
            self.embedding_optimizer = self.model.fused_optimizer
        else:
            if ctx.world_size > 1:
                raise ValueError("sharding.enabled: false trains on one device; use sharded tables for several processes")
            self.model = model.to(ctx.device)
            table_ids = {id(p) for p in model.parameters()} - {id(p) for p in model.dense_parameters()}
            named_dense = [(n, p) for n, p in model.named_parameters() if id(p) not in table_ids]
            tables = [p for p in model.parameters() if id(p) in table_ids]
            self.embedding_optimizer = EMBEDDING_OPTIMIZERS[cfg.optim.embedding_optimizer](tables, lr=cfg.optim.embedding_lr)
        self.dense_parameters = [p for _, p in named_dense]
        head = [p for n, p in named_dense if is_head_parameter(n)]
        body = [p for n, p in named_dense if not is_head_parameter(n)]
        # On CUDA the fused AdamW updates all parameters in a few kernels (the host-bound GPU step
        # launched ~1 ms of per-tensor foreach work); CPU keeps the default implementation.
        self.optimizer = torch.optim.AdamW([{"params": body, "name": "body"}, {"params": head, "name": "head"}],
                                           lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=ctx.device.type == "cuda")
        self.phases = self._plan_phases()
        self.total_steps = sum(phase.steps for phase in self.phases)
        self.step, self.phase_index, self.phase_step, self.epoch, self.batch_in_epoch = 0, 0, 0, 0, 0
        self.samples_seen = 0
        self.best_auc = -1.0
        self.history = History()
        self.run_id: Optional[str] = None

    def _plan_phases(self) -> List[Phase]:
        cfg, optim, sequence = self.cfg, self.cfg.optim, self.cfg.sequence
        if not sequence.enabled:
            pointwise = Phase("train", cfg.data.batch_size, 0, 0, cfg.data.order, None, 0.0, optim.embedding_lr, False)
            per_epoch = self._batches("train", pointwise).plan.num_batches
            steps = min(cfg.train.max_steps or 10**12, per_epoch * cfg.train.epochs)
            return [replace(pointwise, steps=steps, steps_per_epoch=per_epoch)]
        windows = sequence.batch_size or max(1, cfg.data.batch_size // sequence.stride)
        stage1 = Phase("sequence", windows, 0, 0, cfg.data.order, sequence.stride, sequence.history_loss_weight,
                       optim.embedding_lr * sequence.embedding_lr_scale, False)
        per_epoch = self._batches("train", stage1).plan.num_batches
        phases = [replace(stage1, steps=sequence.stage1_steps or per_epoch * cfg.train.epochs, steps_per_epoch=per_epoch)]
        if sequence.sts:
            stage2 = Phase("sparse", cfg.data.batch_size, 0, 0, "user_capped", None, 0.0, optim.embedding_lr, True)
            per_epoch = self._batches("train", stage2).plan.num_batches
            phases.append(replace(stage2, steps=sequence.stage2_steps or per_epoch, steps_per_epoch=per_epoch))
        return phases

    # -- data ---------------------------------------------------------------------------------
    def _batches(self, split: str, phase: Optional[Phase] = None, epoch: int = 0, start_batch: int = 0) -> SplitBatches:
        train = split == "train"
        return SplitBatches(
            self.cfg.data.dataset, split, phase.batch_size if train and phase else self.cfg.data.eval_batch_size,
            rank=self.ctx.rank, world_size=self.ctx.world_size, seed=self.cfg.train.seed, epoch=epoch,
            order=phase.order if train and phase else "stored", drop_last=train, start_batch=start_batch,
            max_history=self.max_history, num_chunks=self.num_chunks,
            sequence_stride=phase.sequence_stride if train and phase else None,
            max_per_user=self.cfg.sequence.max_targets_per_user,
            fraction=self.cfg.data.train_fraction if train else 1.0,
        )

    def _autocast(self):
        enabled = self.ctx.device.type == "cuda" and self.cfg.train.bf16
        return torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _set_learning_rates(self, phase: Phase) -> None:
        """Dense rates follow warm-up + cosine over all phases (a function of the step, so resumes are
        exact); the body's rate is 0 while frozen; the fused embedding optimizer takes the phase's rate."""
        optim = self.cfg.optim
        scale = warmup_cosine(self.step, optim.warmup_steps, self.total_steps, optim.min_lr_ratio)
        for group in self.optimizer.param_groups:
            frozen = phase.body_frozen and group["name"] == "body"
            group["lr"] = 0.0 if frozen else optim.lr * scale
        for group in self.embedding_optimizer.param_groups:
            group["lr"] = phase.embedding_lr
        if self.sharded:
            self.embedding_optimizer.zero_grad()  # pushes the rate into the FBGEMM kernels

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        self.model.eval()
        buffer = PredictionBuffer()
        for batch in make_loader(self._batches(split), self.cfg.data.workers, pin_memory=self._pin_memory):
            batch = batch.to(self.ctx.device, non_blocking=True)
            with self._autocast():
                logits = self.model(batch).logits[:, 0]
            buffer.add(torch.sigmoid(logits.float()), batch.labels, batch.user_ids, batch.weights)
        self.model.train()
        local = (torch.cat(buffer.probabilities), torch.cat(buffer.labels), torch.cat(buffer.users)) if buffer.probabilities else None
        gathered: List = [None] * self.ctx.world_size
        dist.all_gather_object(gathered, local)  # GAUC groups span ranks: compute on everything
        parts = [g for g in gathered if g is not None]
        if not parts:
            return {"samples": 0}
        return ctr_metrics(*(torch.cat([p[i] for p in parts]) for i in range(3)))

    # -- checkpoints --------------------------------------------------------------------------
    def _sharded_state(self) -> dict:
        """What torch.distributed.checkpoint saves: sharded tables and their fused optimizer state."""
        state = {"model": self.model.state_dict()}
        if self.sharded:
            state["fused_optimizer"] = self.embedding_optimizer.state_dict()
        return state

    def save_checkpoint(self, name: str) -> None:
        """Write to `<name>.tmp`, then swap it in: a kill mid-write leaves the previous one intact."""
        final, target = self.checkpoints / name, self.checkpoints / f"{name}.tmp"
        if self.ctx.is_main and target.exists():
            shutil.rmtree(target)
        dist.barrier()
        dcp.save(self._sharded_state(), checkpoint_id=str(target))
        if self.ctx.is_main:
            # Dense parameters are replicated, so rank 0's AdamW state is everyone's.
            torch.save(self.optimizer.state_dict(), target / "dense_optimizer.pt")
            if not self.sharded:
                torch.save(self.embedding_optimizer.state_dict(), target / "embedding_optimizer.pt")
            meta = {"step": self.step, "phase_index": self.phase_index, "phase_step": self.phase_step, "epoch": self.epoch,
                    "batch_in_epoch": self.batch_in_epoch, "best_auc": self.best_auc, "torch_rng": torch.get_rng_state().tolist(),
                    "history": {"loss": self.history.loss, "valid": self.history.valid}, "mlflow_run_id": self.run_id}
            (target / "trainer_state.json").write_text(json.dumps(meta))
            previous = self.checkpoints / f"{name}.old"
            if final.exists():
                final.rename(previous)
            target.rename(final)
            if previous.exists():
                shutil.rmtree(previous)
        dist.barrier()

    def load_checkpoint(self, name: str) -> None:
        target = self.checkpoints / name
        state = self._sharded_state()
        dcp.load(state, checkpoint_id=str(target))
        self.model.load_state_dict(state["model"])
        if self.sharded:
            self.embedding_optimizer.load_state_dict(state["fused_optimizer"])
        else:
            self.embedding_optimizer.load_state_dict(torch.load(target / "embedding_optimizer.pt", weights_only=True, map_location=self.ctx.device))
        self.optimizer.load_state_dict(torch.load(target / "dense_optimizer.pt", weights_only=True, map_location=self.ctx.device))
        meta = json.loads((target / "trainer_state.json").read_text())
        self.step, self.phase_index, self.phase_step = meta["step"], meta["phase_index"], meta["phase_step"]
        self.epoch, self.batch_in_epoch, self.best_auc = meta["epoch"], meta["batch_in_epoch"], meta["best_auc"]
        torch.set_rng_state(torch.tensor(meta["torch_rng"], dtype=torch.uint8))
        self.history = History(loss=[tuple(x) for x in meta["history"]["loss"]], valid={k: [tuple(x) for x in v] for k, v in meta["history"]["valid"].items()})

    # -- training -----------------------------------------------------------------------------
    def validate(self, tracker: RunTracker) -> Dict[str, float]:
        metrics = self.evaluate("valid")
        for key in self.history.valid:
            self.history.valid[key].append((self.step, metrics.get(key, float("nan"))))
        tracker.log_metrics({f"valid_{k}": v for k, v in metrics.items()}, self.step)
        if metrics.get("auc", -1.0) > self.best_auc:
            self.best_auc = metrics["auc"]
            self.save_checkpoint("best")
        self.save_checkpoint("last")
        return metrics

    @property
    def _pin_memory(self) -> bool:
        # Page-locked batches make the host-to-device copy asynchronous, so it overlaps the GPU's step.
        return self.ctx.device.type == "cuda"

    def _train_step(self, batch, phase: Phase) -> torch.Tensor:
        """One optimizer step; returns the detached loss on the device. No host sync here: the
        caller reads the loss only when it logs, so the host fetches and copies the next batch while
        the GPU still runs this step."""
        batch = batch.to(self.ctx.device, non_blocking=True)
        self._set_learning_rates(phase)
        with self._autocast():
            loss = ctr_loss(self.model(batch), batch, LossConfig(history_loss_weight=phase.history_loss_weight))
        self.optimizer.zero_grad(set_to_none=True)
        if not self.sharded:
            self.embedding_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.dense_parameters, self.cfg.optim.clip_norm)
        self.optimizer.step()
        if not self.sharded:  # sharded tables were updated inside backward by their fused optimizer
            self.embedding_optimizer.step()
        return loss.detach()

    def _run_phase(self, phase: Phase, tracker: RunTracker, progress: tqdm) -> None:
        cfg = self.cfg
        while self.phase_step < phase.steps:
            loader = make_loader(self._batches("train", phase, self.epoch, self.batch_in_epoch), cfg.data.workers,
                                 pin_memory=self._pin_memory)
            window_start, window_samples = time.perf_counter(), 0
            for batch in loader:
                loss = self._train_step(batch, phase)
                self.step, self.phase_step, self.batch_in_epoch = self.step + 1, self.phase_step + 1, self.batch_in_epoch + 1
                window_samples += batch.batch_size * self.ctx.world_size
                self.samples_seen += batch.batch_size * self.ctx.world_size
                progress.update(1)
                if self.step % cfg.train.log_every == 0:
                    loss = float(loss)  # the one host sync per logging window
                    rate = window_samples / (time.perf_counter() - window_start)
                    self.history.loss.append((self.step, loss))
                    tracker.log_metrics({"train_loss": loss, "lr": self.optimizer.param_groups[1]["lr"], "samples_per_s": rate}, self.step)
                    progress.set_postfix(phase=phase.name, loss=f"{loss:.4f}", samples_s=f"{rate:,.0f}", refresh=False)
                    window_start, window_samples = time.perf_counter(), 0
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                    self.validate(tracker)
                if self.phase_step >= phase.steps:
                    break
            if self.batch_in_epoch >= phase.steps_per_epoch:  # the epoch ran to its end
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                self.validate(tracker)

    @torch.no_grad()
    def forward_flops_per_sample(self) -> float:
        """Forward FLOPs per sample, counted by torch.utils.flop_counter on a real training batch
        (every rank runs it: the sharded forward has collectives). Embedding lookups count 0."""
        phase = self.phases[0]
        batch = next(iter(make_loader(self._batches("train", phase), 0))).to(self.ctx.device)
        counter = FlopCounterMode(display=False)
        with counter, self._autocast():
            self.model(batch)
        return counter.get_total_flops() / batch.batch_size

    def train(self, tracker: RunTracker) -> None:
        self.model.train()
        # On a terminal the bar redraws; in logs (CI) it prints a line every 30 s.
        progress = tqdm(total=self.total_steps, initial=self.step, unit="step", disable=not self.ctx.is_main,
                        mininterval=0.2 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        while self.phase_index < len(self.phases):
            phase = self.phases[self.phase_index]
            self._run_phase(phase, tracker, progress)
            if not self.history.valid["auc"] or self.history.valid["auc"][-1][0] != self.step:
                self.validate(tracker)
            self.phase_index, self.phase_step, self.epoch, self.batch_in_epoch = self.phase_index + 1, 0, 0, 0
        progress.close()


def _previous_run_id(cfg: TrainConfig) -> Optional[str]:
    state = Path(cfg.output_dir) / "checkpoints" / "last" / "trainer_state.json"
    return json.loads(state.read_text()).get("mlflow_run_id") if state.exists() else None


def run_training(cfg: TrainConfig, metrics_out: Optional[Path] = None, resume: bool = False) -> Dict:
    ctx = init_distributed(cfg.train.device)
    previous_run = _previous_run_id(cfg) if resume else None
    tracker = RunTracker(ctx.is_main, cfg.tracking.experiment, cfg.tracking.tracking_uri, cfg.tracking.run_name or cfg.model.name, previous_run)
    try:
        trainer = Trainer(cfg, ctx, resume=resume)
        trainer.run_id = tracker.run_id
        if resume and (trainer.checkpoints / "last").exists():
            trainer.load_checkpoint("last")
        out = trainer.out
        if ctx.is_main and previous_run is None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            tracker.log_params({"config": cfg.model_dump(mode="json"), "feature_spec": trainer.dataset.metadata["spec"],
                                "parameters": trainer.parameter_counts, "world_size": ctx.world_size})
            tracker.set_tags({"model": cfg.model.name, "git_commit": git_commit(), "data_fingerprint": trainer.dataset.metadata["fingerprint"],
                              **{f"version.{k}": v for k, v in package_versions().items()}, **cfg.tracking.tags})
            if cfg.tracking.parent_run_id:
                tracker.set_tags({"mlflow.parentRunId": cfg.tracking.parent_run_id})
            tracker.log_artifact(out / "config.yaml")
            tracker.log_artifact(Path(cfg.data.dataset) / "dataset.json")
        flops_per_sample = trainer.forward_flops_per_sample()
        tracker.log_params({"forward_flops_per_sample": flops_per_sample, "analytic_forward_flops_per_sample": trainer.analytic_flops_per_sample})
        started = time.perf_counter()
        trainer.train(tracker)
        train_seconds = time.perf_counter() - started
        trainer.load_checkpoint("best")
        valid = trainer.evaluate("valid")
        test = trainer.evaluate("test")
        result = {
            "run_id": tracker.run_id, "model": cfg.model.name, "valid": valid, "test": test,
            "parameters": trainer.parameter_counts, "train_seconds": train_seconds, "steps": trainer.total_steps,
            "samples_per_s": trainer.samples_seen / max(train_seconds, 1e-9),
            "phases": [{"name": p.name, "steps": p.steps, "batch_size": p.batch_size} for p in trainer.phases],
            "forward_flops_per_sample": flops_per_sample,
            "analytic_forward_flops_per_sample": trainer.analytic_flops_per_sample,
            # Forward + backward is about 3x the forward; analytic, so CPU and GPU runs compare.
            "train_flops": 3.0 * trainer.analytic_flops_per_sample * trainer.samples_seen,
            "world_size": ctx.world_size,
            "compiled_blocks": trainer.compiled_blocks,
            "compile_mode": trainer.cfg.train.compile_mode if trainer.compiled_blocks else None,
        }
        if ctx.is_main:
            tracker.log_metrics({f"test_{k}": v for k, v in test.items()}
                                | {"train_flops": result["train_flops"], "train_seconds": train_seconds, "train_samples_per_s": result["samples_per_s"]}, trainer.step)
            (out / "metrics.json").write_text(json.dumps(result, indent=2))
            tracker.log_artifact(out / "metrics.json")
            plot = plot_training_curves(trainer.history.loss, trainer.history.valid, out / "training_curves.png", f"{cfg.model.name} ({tracker.run_id})")
            tracker.log_artifact(plot)
            tracker.log_artifact(trainer.checkpoints / "best", artifact_path="checkpoint_best")
            tracker.log_artifact(Path(cfg.data.dataset) / "vocab", artifact_path="vocab")
            if metrics_out is not None:
                Path(metrics_out).parent.mkdir(parents=True, exist_ok=True)
                Path(metrics_out).write_text(json.dumps(result, indent=2))
        tracker.end("FINISHED")
        return result
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
