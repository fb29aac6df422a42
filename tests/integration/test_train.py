"""`jepa train` end to end on tiny data: metrics in MLflow, checkpoints, resume, evaluation, bad checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import mlflow
import pytest
import torch

from jepa_platform.checkpoints import RUN_INFO
from jepa_platform.errors import CheckpointError
from jepa_platform.eval import cli as eval_cli
from jepa_platform.train import run_train

DESIGN_KEYS = [
    "train/loss",
    "train/loss/invariance",
    "train/loss/variance",
    "train/loss/covariance",
    "train/energy",
    *[f"{where}/{stat}" for where in ("repr", "emb") for stat in ("std_mean", "std_min", "dead_dims_frac", "cov_offdiag", "rank")],
    "val/probe_acc",
    "val/knn_acc",
]


def _mlflow_run(run_dir: Path):
    info = json.loads((run_dir / RUN_INFO).read_text())
    client = mlflow.MlflowClient(tracking_uri=info["tracking_uri"])
    return client, client.get_run(info["run_id"])


@pytest.fixture
def trained(make_cfg, tmp_path: Path):
    cfg = make_cfg()
    metrics = run_train(cfg)
    return cfg, metrics, Path(cfg.paths.output_dir)


def test_run_logs_design_metrics_to_mlflow(trained):
    cfg, metrics, run_dir = trained
    assert math.isfinite(metrics["train/loss"])
    client, run = _mlflow_run(run_dir)
    missing = [k for k in DESIGN_KEYS if k not in run.data.metrics]
    assert not missing, f"metrics missing from MLflow: {missing}"
    assert run.data.params["objective._target_"] == "jepa_platform.objectives.VICReg"
    assert run.data.params["data.batch_size"] == "32"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, f"config/{run_dir.name}")]
    assert artifacts == [f"config/{run_dir.name}/config.yaml"]
    assert str(cfg.logger.tracking_uri).startswith("sqlite:///") and (Path(cfg.paths.runs_dir) / "mlflow.db").is_file()


def test_checkpoints_every_epoch_load_safely(trained):
    _, _, run_dir = trained
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and len(ckpts) == 2  # epoch 0 and last
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("encoder.") for k in state["state_dict"])


def test_resume_continues_steps_and_mlflow_run(trained, make_cfg):
    _cfg, _, run_dir = trained
    first_ckpt = run_dir / "checkpoints" / "last.ckpt"
    digest = hashlib.sha256(first_ckpt.read_bytes()).hexdigest()
    _, run = _mlflow_run(run_dir)
    cfg2 = make_cfg("ckpt_path=last", "trainer.max_epochs=2", run_name="resumed")
    run_train(cfg2)
    resumed_dir = Path(cfg2.paths.output_dir)
    state = torch.load(resumed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 2 * (512 // 32)
    assert json.loads((resumed_dir / RUN_INFO).read_text())["run_id"] == run.info.run_id
    client, run = _mlflow_run(resumed_dir)
    assert len(client.get_metric_history(run.info.run_id, "val/probe_acc")) == 2
    assert run.data.tags["resume.trainer.max_epochs"] == "2"
    assert hashlib.sha256(first_ckpt.read_bytes()).hexdigest() == digest  # the original run is untouched


def test_bad_checkpoints_are_clear_errors(trained, make_cfg, tmp_path: Path):
    _, _, run_dir = trained
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot load .*corrupt.ckpt: not a readable checkpoint"):
        run_train(make_cfg(f"ckpt_path={corrupt}", run_name="r2"))
    with pytest.raises(CheckpointError, match="does not match this model"):
        run_train(make_cfg(f"ckpt_path={run_dir}", "objective.projector_dims=[32,16]", run_name="r3"))
    with pytest.raises(CheckpointError, match="does not exist"):
        run_train(make_cfg(f"ckpt_path={tmp_path / 'missing.ckpt'}", run_name="r4"))


def test_eval_compares_with_random_init(trained, capsys):
    _, _, run_dir = trained
    assert eval_cli.main([str(run_dir), "--train-samples", "256"]) == 0
    results = json.loads((run_dir / "eval.json").read_text())
    accuracies = {"eval/linear_probe_acc", "eval/knn_acc", "eval/random_init/linear_probe_acc", "eval/random_init/knn_acc"}
    assert set(results) == accuracies | {"eval/gain/linear_probe_acc", "eval/gain/knn_acc"}
    assert all(0.0 <= results[k] <= 1.0 for k in accuracies)
    for metric in ("linear_probe_acc", "knn_acc"):  # the gain over random init, in the run too
        assert results[f"eval/gain/{metric}"] == results[f"eval/{metric}"] - results[f"eval/random_init/{metric}"]
    assert "trained minus random init" in capsys.readouterr().out
    _, run = _mlflow_run(run_dir)
    assert "eval/random_init/linear_probe_acc" in run.data.metrics
