"""`recsys export` / `recsys score`: parity with the eager model, portability, robustness, MLflow, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from recsys.data.loader import BatchBuilder
from recsys.data.store import PreparedDataset
from recsys.export.exporter import batch_inputs, bundle_dir, export_model, load_trained_model, read_export_files, resolve_run
from recsys.models.embedding import EmbeddingLayout

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "sparsectr": {"d_model": 16, "heads": 2, "layers": 2, "window": 8},
    "grab": {"d_model": 16, "heads": 4, "layers": 2},
    "din": {"d_model": 16},
    "dnn": {"d_model": 16},
}
MAX_HISTORY = 32
TOLERANCE = 1e-5


def _recsys(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def _train(work: Path, prepared: Path, name: str, options: dict, nproc: int = 1) -> Path:
    config = {
        "data": {"dataset": str(prepared), "batch_size": 64, "eval_batch_size": 256, "max_history": MAX_HISTORY, "num_chunks": 4, "workers": 0},
        "model": {"name": name, "options": options},
        "optim": {"lr": 0.003, "warmup_steps": 5, "embedding_lr": 0.05},
        "train": {"epochs": 1, "max_steps": 40, "eval_every": 20, "log_every": 10, "seed": 5},
        "tracking": {"experiment": "export", "tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "run_name": f"{name}-{nproc}"},
        "output_dir": str(work / f"{name}-{nproc}"),
    }
    path = work / f"{name}-{nproc}.yaml"
    path.write_text(yaml.safe_dump(config))
    _recsys("train", str(path), "--nproc", str(nproc))
    return work / f"{name}-{nproc}"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def runs(work, prepared):
    return {name: _train(work, prepared, name, options) for name, options in MODELS.items()}


@pytest.fixture(scope="module")
def exported(work, runs):
    return {name: (work / f"{name}.pt", export_model(str(run), work / f"{name}.pt", parity_samples=512)) for name, run in runs.items()}


def _test_inputs(prepared: Path, batch_size: int, start: int = 0):
    dataset = PreparedDataset(prepared)
    ids = dataset.split_indices("test")[start : start + batch_size]
    batch = BatchBuilder(dataset, MAX_HISTORY, 4).build(np.asarray(ids))
    return batch, batch_inputs(batch, EmbeddingLayout.from_metadata(dataset.metadata))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_loaded_file_scores_equal_the_eager_model(name, runs, exported, prepared):
    path, info = exported[name]
    assert info["parity"]["max_abs_diff_probability"] <= TOLERANCE
    eager = load_trained_model(resolve_run(str(runs[name])))
    module = torch.jit.load(str(path))
    # Two batch sizes: scripting bakes in no shape.
    for batch_size, start in ((7, 0), (300, 7)):
        batch, inputs = _test_inputs(prepared, batch_size, start)
        with torch.no_grad():
            expected = torch.sigmoid(eager(batch).logits)
        got = module(inputs)
        assert got.shape == expected.shape == (batch_size, 1)
        assert (got - expected).abs().max().item() <= TOLERANCE
        assert expected.std() > 1e-4  # real scores, not a constant both sides agree on


@pytest.mark.slow
def test_row_wise_shards_of_two_processes_are_gathered(work, prepared):
    run = _train(work, prepared, "sparsectr", MODELS["sparsectr"], nproc=2)
    info = export_model(str(run), work / "sharded.pt", parity_samples=1024)
    assert info["parity"]["samples"] > 0 and info["parity"]["max_abs_diff_probability"] <= TOLERANCE


@pytest.mark.slow
def test_export_is_logged_to_mlflow_and_exports_by_run_id(work, runs, exported, prepared):
    from mlflow.tracking import MlflowClient

    _, info = exported["dnn"]
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(info["mlflow_run_id"], "export")}
    assert {"export/dnn.pt", "export/dnn.bundle"} <= logged
    assert client.get_run(info["mlflow_run_id"]).data.tags["exported_model_version"] == info["model_version"]
    again = export_model(info["mlflow_run_id"], work / "by_run_id.pt", tracking_uri=f"sqlite:///{work / 'mlflow.db'}", parity_samples=256)
    assert again["model_version"] == info["model_version"]
    assert again["parity"]["max_abs_diff_probability"] <= TOLERANCE
    contract, described = read_export_files(work / "by_run_id.pt")
    assert described["model"] == "dnn" and contract["max_history"] == MAX_HISTORY
    assert {"history.lengths", "history.timestamp", "history.item_id", "candidate.item_id", "request.timestamp"} <= {i["key"] for i in contract["inputs"]}
    assert (bundle_dir(work / "by_run_id.pt") / "vocab" / "item.parquet").exists()


@pytest.mark.slow
def test_file_loads_and_scores_in_a_process_without_recsys(work, exported, prepared):
    path, _ = exported["sparsectr"]
    _, inputs = _test_inputs(prepared, 16)
    expected = torch.jit.load(str(path))(inputs)
    torch.save({"inputs": inputs, "expected": expected}, work / "portable.pt")
    script = (
        "import sys\n"
        "sys.modules['recsys'] = None  # any import of recsys now fails\n"
        "import torch\n"
        f"data = torch.load({str(work / 'portable.pt')!r}, weights_only=True)\n"
        f"module = torch.jit.load({str(path)!r})\n"
        "got = module(data['inputs'])\n"
        "assert torch.equal(got, data['expected']), (got - data['expected']).abs().max()\n"
        "try:\n    import recsys\nexcept ImportError:\n    print('OK without recsys')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=work, env={"PATH": os.environ["PATH"], "PYTHONWARNINGS": "ignore"}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK without recsys" in done.stdout


@pytest.fixture(scope="module")
def module_and_inputs(exported, prepared):
    path, _ = exported["sparsectr"]
    return torch.jit.load(str(path)), _test_inputs(prepared, 12)[1]


def _with(inputs: dict, **changes) -> dict:
    return {**inputs, **{k.replace("__", "."): v for k, v in changes.items()}}


HISTORY_KEYS = ("history.timestamp", "history.item_id", "history.category_id", "history.action")


@pytest.mark.slow
def test_empty_history_scores(module_and_inputs):
    module, inputs = module_and_inputs
    batch = inputs["history.lengths"].shape[0]
    empty = _with(inputs, history__lengths=torch.zeros(batch, dtype=torch.int64), **{k.replace(".", "__"): torch.zeros(batch, 0, dtype=torch.int64) for k in HISTORY_KEYS})
    padded_but_empty = _with(inputs, history__lengths=torch.zeros(batch, dtype=torch.int64))
    scores = module(empty)
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(scores, module(padded_but_empty), rtol=0, atol=0)


@pytest.mark.slow
def test_history_longer_than_trained_maximum_keeps_the_most_recent_events(module_and_inputs):
    module, inputs = module_and_inputs
    batch = inputs["history.lengths"].shape[0]
    generator = torch.Generator().manual_seed(11)
    extra = 3 * MAX_HISTORY
    # Older events prepended: the request's real history stays the most recent part.
    longer = {}
    for key in HISTORY_KEYS:
        if key == "history.timestamp":
            older = inputs[key][:, :1] - torch.arange(extra, 0, -1).view(1, -1) * 3600
        else:
            older = torch.randint(1, 4, (batch, extra), generator=generator)
        longer[key] = torch.cat([older, inputs[key]], dim=1)
    longer["history.lengths"] = inputs["history.lengths"] + extra
    assert int(longer["history.lengths"].max()) > MAX_HISTORY
    # Reference: what training sees, the most recent MAX_HISTORY events of each row.
    recent = {"history.lengths": longer["history.lengths"].clamp(max=MAX_HISTORY)}
    for key in HISTORY_KEYS:
        rows = [longer[key][b, max(0, int(n) - MAX_HISTORY) : int(n)] for b, n in enumerate(longer["history.lengths"])]
        recent[key] = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    torch.testing.assert_close(module(_with(inputs, **{k.replace(".", "__"): v for k, v in longer.items()})),
                               module(_with(inputs, **{k.replace(".", "__"): v for k, v in recent.items()})), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("count", [1, 1000])
def test_one_and_a_thousand_candidates(module_and_inputs, count):
    module, inputs = module_and_inputs
    batch = inputs["history.lengths"].shape[0]
    generator = torch.Generator().manual_seed(count)
    items = torch.randint(0, 50, (batch, count), generator=generator)
    categories = torch.randint(0, 10, (batch, count), generator=generator)
    scores = module(_with(inputs, candidate__item_id=items, candidate__category_id=categories))
    assert scores.shape == (batch, count) and torch.isfinite(scores).all()
    for m in {0, count // 2, count - 1}:  # listwise: a candidate's score does not depend on the others
        alone = module(_with(inputs, candidate__item_id=items[:, m : m + 1], candidate__category_id=categories[:, m : m + 1]))
        torch.testing.assert_close(scores[:, m : m + 1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, message",
    [
        ({"history.item_id": lambda x: x.float()}, "'history.item_id' must be int64"),
        ({"history.category_id": lambda x: x[:, :-1]}, "'history.category_id' has shape"),
        ({"history.lengths": lambda x: x + 1000}, "'history.lengths' must lie in"),
        ({"candidate.category_id": lambda x: torch.cat([x, x], dim=1)}, "every candidate input must be"),
        ({"candidate.item_id": lambda x: x + 10**9}, "'candidate.item_id' holds ids outside"),
        ({"request.timestamp": lambda x: x[:1]}, "'request.timestamp' has 1 rows"),
        ({"context.device": None}, "missing input 'context.device'"),
    ],
)
def test_malformed_inputs_raise_clear_errors(module_and_inputs, change, message):
    module, inputs = module_and_inputs
    (key, transform), = change.items()
    bad = dict(inputs)
    if transform is None:
        del bad[key]
    else:
        bad[key] = transform(inputs[key])
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace("[", r"\[")):
        module(bad)


@pytest.mark.slow
def test_score_cli_on_replayed_requests_reproduces_the_test_metrics(work, runs, exported, prepared, synthetic_log):
    """Raw log -> requests -> `recsys score` gives the eager test AUC: vocabularies, history rule, chunking all agree."""
    from torchmetrics.functional import auroc

    metadata = json.loads((prepared / "dataset.json").read_text())
    requests = work / "requests.parquet"
    _recsys("requests", "--input", str(synthetic_log), "--spec", str(ROOT / "feature_specs" / "synthetic.yaml"), "--out", str(requests),
            "--since", str(metadata["split_cutoffs"]["test_start"]))
    path, _ = exported["grab"]
    scores_path = work / "scores.parquet"
    _recsys("score", "--model", str(path), "--input", str(requests), "--out", str(scores_path), "--batch-size", "64")
    scores = pl.read_parquet(scores_path)
    expected = json.loads((runs["grab"] / "metrics.json").read_text())["test"]
    assert scores.height == expected["samples"]
    auc = float(auroc(torch.tensor(scores["score"].to_numpy()), torch.tensor(scores["label"].to_numpy()).long(), task="binary"))
    assert abs(auc - expected["auc"]) < 1e-6
    summary = json.loads(scores_path.with_suffix(".summary.json").read_text())
    assert summary["requests"] == pl.read_parquet(requests).height


@pytest.mark.slow
def test_score_cli_maps_unknown_ids_and_names_bad_rows(work, exported):
    path, _ = exported["din"]
    good = {"request_id": [0, 1], "user_id": [1, 2], "timestamp": [1_757_000_000, 1_757_000_100],
            "history_timestamp": [[1_756_000_000, 1_756_000_500], []], "history_item_id": [[123_456_789, 5], []],
            "history_category_id": [[1, 2], []], "history_action": [["click", "never-seen-action"], []],
            "candidate_item_id": [[987_654_321], [5, 6]], "candidate_category_id": [[3], [1, 2]],
            "user_segment": [99, 1], "device": ["web", "toaster"]}
    requests = work / "odd.parquet"
    pl.DataFrame(good).write_parquet(requests)
    _recsys("score", "--model", str(path), "--input", str(requests), "--out", str(work / "odd_scores.parquet"))
    scores = pl.read_parquet(work / "odd_scores.parquet")
    assert scores.height == 3 and scores["score"].is_finite().all()
    summary = json.loads((work / "odd_scores.summary.json").read_text())
    assert summary["unknown_ids_mapped_to_oov"]["item_id"] >= 2 and summary["unknown_ids_mapped_to_oov"]["user_segment"] == 1

    bad = dict(good, history_category_id=[[1], []])
    pl.DataFrame(bad).write_parquet(work / "bad.parquet")
    done = _recsys("score", "--model", str(path), "--input", str(work / "bad.parquet"), "--out", str(work / "bad_scores.parquet"), check=False)
    assert done.returncode == 2
    assert "bad.parquet" in done.stderr and "history_category_id" in done.stderr and "rows [0]" in done.stderr
