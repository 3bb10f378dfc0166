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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from torchrec.optim.optimizers import in_backward_optimizer_filter
from tqdm import tqdm

from recsys.data.loader import SplitBatches, make_loader
from recsys.data.store import PreparedDataset
from recsys.models.registry import build_model
from recsys.tracking.mlflow_tracker import RunTracker, git_commit, package_versions
from recsys.tracking.plots import plot_training_curves
from recsys.train.config import TrainConfig
from recsys.train.distributed import DistributedContext, attach_fused_optimizer, init_distributed, shard_model
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
        self.parameter_counts = {
            "dense": sum(p.numel() for p in model.dense_parameters()),
            "embedding": sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.dense_parameters()),
        }
        attach_fused_optimizer(model, cfg.optim.embedding_optimizer, cfg.optim.embedding_lr)
        self.model = shard_model(model, ctx, cfg.sharding.tables, cfg.sharding.sequence_default, cfg.data.batch_size, cfg.sharding.pooled_default)
        dense = [p for _, p in in_backward_optimizer_filter(self.model.named_parameters())]
        self.optimizer = torch.optim.AdamW(dense, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.dense_parameters = dense
        self.loss_cfg = LossConfig(history_loss_weight=cfg.train.history_loss_weight)
        self.steps_per_epoch = self._batches("train", epoch=0).plan.num_batches
        self.total_steps = min(cfg.train.max_steps or 10**12, self.steps_per_epoch * cfg.train.epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine(step, cfg.optim.warmup_steps, self.total_steps, cfg.optim.min_lr_ratio)
        )
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_auc = -1.0
        self.history = History()
        self.run_id: Optional[str] = None

    # -- data ---------------------------------------------------------------------------------
    def _batches(self, split: str, epoch: int = 0, start_batch: int = 0) -> SplitBatches:
        train = split == "train"
        return SplitBatches(
            self.cfg.data.dataset, split, self.cfg.data.batch_size if train else self.cfg.data.eval_batch_size,
            rank=self.ctx.rank, world_size=self.ctx.world_size, seed=self.cfg.train.seed, epoch=epoch,
            order=self.cfg.data.order if train else "stored", drop_last=train, start_batch=start_batch,
            max_history=self.max_history, num_chunks=self.num_chunks,
        )

    def _autocast(self):
        enabled = self.ctx.device.type == "cuda" and self.cfg.train.bf16
        return torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16, enabled=enabled)

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        self.model.eval()
        buffer = PredictionBuffer()
        for batch in make_loader(self._batches(split), self.cfg.data.workers):
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
        return {"model": self.model.state_dict(), "fused_optimizer": self.model.fused_optimizer.state_dict()}

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
            meta = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "best_auc": self.best_auc,
                    "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state().tolist(),
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
        self.model.fused_optimizer.load_state_dict(state["fused_optimizer"])
        self.optimizer.load_state_dict(torch.load(target / "dense_optimizer.pt", weights_only=True, map_location=self.ctx.device))
        meta = json.loads((target / "trainer_state.json").read_text())
        self.step, self.epoch, self.batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        self.best_auc = meta["best_auc"]
        self.scheduler.load_state_dict(meta["scheduler"])
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

    def train(self, tracker: RunTracker) -> None:
        cfg = self.cfg
        self.model.train()
        # On a terminal the bar redraws; in logs (CI) it prints a line every 30 s.
        progress = tqdm(total=self.total_steps, initial=self.step, unit="step", disable=not self.ctx.is_main,
                        mininterval=0.2 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        while self.step < self.total_steps and self.epoch < cfg.train.epochs:
            loader = make_loader(self._batches("train", self.epoch, self.batch_in_epoch), cfg.data.workers)
            window_start, window_samples = time.perf_counter(), 0
            for batch in loader:
                batch = batch.to(self.ctx.device, non_blocking=True)
                with self._autocast():
                    loss = ctr_loss(self.model(batch), batch, self.loss_cfg)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.dense_parameters, cfg.optim.clip_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                self.batch_in_epoch += 1
                window_samples += batch.batch_size * self.ctx.world_size
                progress.update(1)
                if self.step % cfg.train.log_every == 0:
                    rate = window_samples / (time.perf_counter() - window_start)
                    self.history.loss.append((self.step, float(loss)))
                    tracker.log_metrics({"train_loss": float(loss), "lr": self.scheduler.get_last_lr()[0], "samples_per_s": rate}, self.step)
                    progress.set_postfix(loss=f"{float(loss):.4f}", samples_s=f"{rate:,.0f}")
                    window_start, window_samples = time.perf_counter(), 0
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                    self.validate(tracker)
                if self.step >= self.total_steps:
                    break
            if self.batch_in_epoch >= self.steps_per_epoch:  # the epoch ran to its end
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                self.validate(tracker)
        progress.close()
        if not self.history.valid["auc"] or self.history.valid["auc"][-1][0] != self.step:
            self.validate(tracker)


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
            tracker.log_params({"config": cfg.model_dump(mode="json"), "parameters": trainer.parameter_counts, "world_size": ctx.world_size})
            tracker.set_tags({"model": cfg.model.name, "git_commit": git_commit(), "data_fingerprint": trainer.dataset.metadata["fingerprint"],
                              **{f"version.{k}": v for k, v in package_versions().items()}})
            tracker.log_artifact(out / "config.yaml")
            tracker.log_artifact(Path(cfg.data.dataset) / "dataset.json")
        started = time.perf_counter()
        trainer.train(tracker)
        train_seconds = time.perf_counter() - started
        trainer.load_checkpoint("best")
        valid = trainer.evaluate("valid")
        test = trainer.evaluate("test")
        result = {
            "run_id": tracker.run_id, "model": cfg.model.name, "valid": valid, "test": test,
            "parameters": trainer.parameter_counts, "train_seconds": train_seconds, "steps": trainer.total_steps,
            "samples_per_s": trainer.total_steps * cfg.data.batch_size * ctx.world_size / max(train_seconds, 1e-9),
            "world_size": ctx.world_size,
        }
        if ctx.is_main:
            tracker.log_metrics({f"test_{k}": v for k, v in test.items()}, trainer.step)
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
