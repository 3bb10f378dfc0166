"""`recsys export`: a trained run -> a TorchScript scoring file plus the bundle serving needs.

The source is a run directory (its `config.yaml` and `checkpoints/best`), a checkpoint directory,
or an MLflow run id (its logged config, dataset metadata, best checkpoint and vocabularies are
downloaded). The torch.distributed checkpoint is loaded into an unsharded model (DCP reshards row-
or table-wise shards into full tables), the tables are copied into plain `nn.Embedding`s, and the
`ScoringModule` is compiled with `torch.jit.script` (no tracing, so no batch size is baked in).
Before anything is written, exported and eager scores are compared on the test split.

Beside `model.pt` goes `model.bundle/`: the vocabularies, the feature spec, the dataset metadata,
`contract.json` (the input contract) and `export.json` (version, source, parity). The contract and
export descriptions also travel inside the TorchScript archive as extra files.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor

from recsys.data.loader import Batch, BatchBuilder
from recsys.data.store import PreparedDataset
from recsys.export.contract import describe_contract
from recsys.export.module import (
    HISTORY_LENGTHS,
    HISTORY_TIMESTAMP,
    REQUEST_TIMESTAMP,
    ScoringModule,
    ServingEmbedding,
    candidate_key,
    history_key,
    side_key,
)
from recsys.models.base import RankingModel
from recsys.models.embedding import EmbeddingLayout
from recsys.models.registry import build_model
from recsys.train.config import TrainConfig, load_train_config

EXTRA_CONTRACT = "recsys/contract.json"
EXTRA_EXPORT = "recsys/export.json"
PARITY_TOLERANCE = 1e-5


class ExportError(RuntimeError):
    pass


@dataclass
class TrainedRun:
    config: TrainConfig
    metadata: dict
    checkpoint: Path
    vocab_dir: Path
    run_id: Optional[str]
    dataset_dir: Optional[Path]  # the prepared dataset, when it is on this machine (parity check)

    @property
    def max_history(self) -> int:
        return int(self.config.data.max_history or self.metadata["spec"]["history"]["max_length"])

    @property
    def num_chunks(self) -> int:
        return int(self.config.data.num_chunks or self.metadata["spec"]["chunking"]["num_chunks"])


def bundle_dir(model_path: Path) -> Path:
    """`model.pt` -> `model.bundle/` beside it."""
    return model_path.with_suffix(".bundle")


# -- finding the trained run --------------------------------------------------------------------
def resolve_run(source: str, tracking_uri: Optional[str] = None, scratch: Optional[Path] = None) -> TrainedRun:
    path = Path(source)
    if path.exists():
        return _run_from_directory(path)
    return _run_from_mlflow(source, tracking_uri, scratch or Path(tempfile.mkdtemp(prefix="recsys-export-")))


def _run_from_directory(path: Path) -> TrainedRun:
    if (path / "config.yaml").exists():
        run_dir, checkpoint = path, path / "checkpoints" / "best"
    elif (path / ".metadata").exists() and (path.parent.parent / "config.yaml").exists():
        run_dir, checkpoint = path.parent.parent, path
    else:
        raise ExportError(f"{path} is neither a run directory (with config.yaml) nor a checkpoint inside one")
    if not (checkpoint / ".metadata").exists():
        raise ExportError(f"{checkpoint} holds no torch.distributed checkpoint; did the run finish its first evaluation?")
    config = load_train_config(run_dir / "config.yaml")
    dataset_dir = Path(config.data.dataset)
    if not (dataset_dir / "dataset.json").exists():
        raise ExportError(f"the run's dataset {dataset_dir} is not on this machine; export by MLflow run id to use the logged copy")
    state = checkpoint / "trainer_state.json"
    run_id = json.loads(state.read_text()).get("mlflow_run_id") if state.exists() else None
    return TrainedRun(config, json.loads((dataset_dir / "dataset.json").read_text()), checkpoint, dataset_dir / "vocab", run_id, dataset_dir)


def _run_from_mlflow(run_id: str, tracking_uri: Optional[str], scratch: Path) -> TrainedRun:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from recsys.tracking.mlflow_tracker import default_tracking_uri

    client = MlflowClient(tracking_uri or default_tracking_uri())
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        raise ExportError(f"{run_id!r} is not a path, and not an MLflow run in {client.tracking_uri}: {exc}") from exc
    local = Path(client.download_artifacts(run_id, "", str(scratch)))
    missing = [name for name in ("config.yaml", "dataset.json", "checkpoint_best", "vocab") if not (local / name).exists()]
    if missing:
        raise ExportError(f"MLflow run {run_id} lacks the artifacts {missing}; it did not finish training")
    config = load_train_config(local / "config.yaml")
    dataset_dir = Path(config.data.dataset)
    return TrainedRun(config, json.loads((local / "dataset.json").read_text()), local / "checkpoint_best", local / "vocab", run_id,
                      dataset_dir if (dataset_dir / "dataset.json").exists() else None)


# -- model ---------------------------------------------------------------------------------------
def load_trained_model(run: TrainedRun) -> RankingModel:
    """The eager model with the checkpoint's weights, unsharded, in eval mode."""
    options = dict(run.config.model.options)
    if options.get("attention") == "reference":
        # The dense-mask reference has the structural kernels' parameters and outputs; serve those.
        options["attention"] = "structural" if run.config.model.name in ("sparsectr", "transformer") else "softmax"
    if options.get("attention") == "flex":
        options["attention"] = "softmax"  # GRAB's FlexAttention path (GPU training) has the dense twin's parameters
    model = build_model(run.config.model.name, run.metadata, options)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(run.checkpoint))
    model.load_state_dict(state["model"])
    return model.eval()


def gathered_tables(model: RankingModel) -> Dict[str, Tensor]:
    tables = {name: module.weight for collection in model.embedding.sequence_collections.values() for name, module in collection.embeddings.items()}
    if model.embedding.side_collection is not None:
        tables.update({name: module.weight for name, module in model.embedding.side_collection.embedding_bags.items()})
    return tables


def scoring_module(model: RankingModel, metadata: dict, max_history: int, num_chunks: int) -> ScoringModule:
    layout = EmbeddingLayout.from_metadata(metadata)
    embedding = ServingEmbedding(layout, gathered_tables(model), model.embedding.candidate_action)
    core = copy.deepcopy(model)
    core.embedding = None  # TorchRec stays out of the scripted graph; ServingEmbedding holds the tables
    num_embeddings = {k: int(v) for k, v in metadata["num_embeddings"].items()}
    module = ScoringModule(core, embedding, layout, max_history, num_chunks, num_embeddings).eval()
    # Serving never needs gradients; with none required the TorchScript executor also skips its
    # autodiff graph passes (one of which fails on SparseCTR's graph under torch 2.13).
    module.requires_grad_(False)
    return module


def batch_inputs(batch: Batch, layout: EmbeddingLayout) -> Dict[str, Tensor]:
    """A loader batch in the serving contract: right-padded history rows, one id per candidate field."""
    lengths = batch.history_lengths
    rows = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths)
    positions = torch.arange(int(lengths.sum())) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    width = int(lengths.max()) if lengths.numel() else 0
    features = batch.sparse_features.to_dict()

    def right_padded(values: Tensor) -> Tensor:
        return torch.zeros(lengths.shape[0], width, dtype=torch.int64).index_put_((rows, positions), values.to(torch.int64))

    inputs = {HISTORY_LENGTHS: lengths.clone(), REQUEST_TIMESTAMP: batch.request_timestamps.clone(),
              HISTORY_TIMESTAMP: right_padded(batch.history_timestamps.flatten()[batch.history_slots])}
    for field in layout.sequence_fields:
        inputs[history_key(field.column)] = right_padded(features["hist_" + field.column].values())
        if field.candidate:
            inputs[candidate_key(field.column)] = features["cand_" + field.column].values().view(lengths.shape[0], -1).clone()
    for field in layout.side_fields:
        inputs[side_key(field.role, field.column)] = features[field.column].values().clone()
    return inputs


# -- parity --------------------------------------------------------------------------------------
def check_parity(model: RankingModel, scripted: torch.jit.ScriptModule, run: TrainedRun, split: str = "test",
                 max_samples: int = 4096, batch_size: int = 128) -> dict:
    """Max |exported − eager| over (up to) `max_samples` samples of `split`, probabilities and logits."""
    assert run.dataset_dir is not None
    dataset = PreparedDataset(run.dataset_dir)
    builder = BatchBuilder(dataset, run.max_history, run.num_chunks)
    layout = EmbeddingLayout.from_metadata(run.metadata)
    ids = dataset.split_indices(split)[:max_samples]
    worst_prob, worst_logit = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            batch = builder.build(np.asarray(ids[start : start + batch_size]))
            eager = model(batch).logits
            exported = scripted.logits(batch_inputs(batch, layout))
            worst_logit = max(worst_logit, float((exported - eager).abs().max()))
            worst_prob = max(worst_prob, float((torch.sigmoid(exported) - torch.sigmoid(eager)).abs().max()))
    return {"split": split, "samples": int(len(ids)), "max_abs_diff_probability": worst_prob, "max_abs_diff_logit": worst_logit,
            "tolerance": PARITY_TOLERANCE}


# -- writing -------------------------------------------------------------------------------------
def _model_version(run: TrainedRun) -> str:
    digest = hashlib.sha256((run.checkpoint / ".metadata").read_bytes()).hexdigest()[:10]
    return f"{run.config.model.name}-{(run.run_id or 'local')[:8]}-{digest}"


def export_model(source: str, out: Path, tracking_uri: Optional[str] = None, parity_samples: int = 4096, log_to_mlflow: bool = True) -> dict:
    """Export and return `export.json`'s content. Raises ExportError if parity fails."""
    scratch = Path(tempfile.mkdtemp(prefix="recsys-export-"))
    try:
        run = resolve_run(source, tracking_uri, scratch)
        model = load_trained_model(run)
        scripted = torch.jit.script(scoring_module(model, run.metadata, run.max_history, run.num_chunks))
        parity = check_parity(model, scripted, run, max_samples=parity_samples) if run.dataset_dir is not None and parity_samples > 0 else None
        if parity is not None and parity["max_abs_diff_probability"] > PARITY_TOLERANCE:
            raise ExportError(f"exported scores differ from the eager model by {parity['max_abs_diff_probability']:.3g} (> {PARITY_TOLERANCE})")
        contract = describe_contract(run.metadata, run.max_history, run.num_chunks)
        info = {
            "model": run.config.model.name, "model_version": _model_version(run), "mlflow_run_id": run.run_id,
            "source": str(source), "checkpoint_step": _checkpoint_step(run.checkpoint), "options": dict(run.config.model.options),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "method": "torch.jit.script", "parity": parity,
        }
        _write(out, scripted, contract, info, run)
        if log_to_mlflow and run.run_id:
            _log_to_mlflow(run, out, info, tracking_uri)
        return info
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _checkpoint_step(checkpoint: Path) -> Optional[int]:
    state = checkpoint / "trainer_state.json"
    return int(json.loads(state.read_text())["step"]) if state.exists() else None


def _write(out: Path, scripted: torch.jit.ScriptModule, contract: dict, info: dict, run: TrainedRun) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {EXTRA_CONTRACT: json.dumps(contract, indent=2), EXTRA_EXPORT: json.dumps(info, indent=2)}
    partial = out.with_name(out.name + ".tmp")
    torch.jit.save(scripted, str(partial), _extra_files=extra)
    bundle = bundle_dir(out)
    staged = bundle.with_name(bundle.name + ".tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    shutil.copytree(run.vocab_dir, staged / "vocab")
    (staged / "feature_spec.json").write_text(json.dumps(run.metadata["spec"], indent=2))
    (staged / "dataset.json").write_text(json.dumps(run.metadata, indent=2))
    (staged / "contract.json").write_text(extra[EXTRA_CONTRACT])
    (staged / "export.json").write_text(extra[EXTRA_EXPORT])
    # Swap both in only when both are complete.
    shutil.rmtree(bundle, ignore_errors=True)
    staged.rename(bundle)
    partial.replace(out)


def _log_to_mlflow(run: TrainedRun, out: Path, info: dict, tracking_uri: Optional[str]) -> None:
    from mlflow.tracking import MlflowClient

    from recsys.tracking.mlflow_tracker import default_tracking_uri

    client = MlflowClient(tracking_uri or run.config.tracking.tracking_uri or default_tracking_uri())
    client.log_artifact(run.run_id, str(out), "export")
    client.log_artifacts(run.run_id, str(bundle_dir(out)), f"export/{bundle_dir(out).name}")
    client.set_tag(run.run_id, "exported_model_version", info["model_version"])
    if info["parity"] is not None:
        client.log_metric(run.run_id, "export_parity_max_abs_diff", info["parity"]["max_abs_diff_probability"])


def read_export_files(model_path: Path) -> tuple[dict, dict]:
    """The contract and export descriptions stored inside a TorchScript file."""
    extra = {EXTRA_CONTRACT: "", EXTRA_EXPORT: ""}
    torch.jit.load(str(model_path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[EXTRA_CONTRACT]), json.loads(extra[EXTRA_EXPORT])
