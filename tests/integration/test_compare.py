"""Sweeps as nested MLflow runs, ``jepa compare`` over them, the figures and model every run logs, and the comparison
notebooks, on one tiny 2-objective x 2-seed sweep."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import mlflow
import pytest
import torch
from support.cli import run_jepa
from support.notebooks import execute_notebook

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict:
    """``jepa train -m objective=vicreg,simclr seed=0,1`` (one short epoch each, every run logging its encoder and
    ending with the frozen-encoder evaluation)."""
    root = tmp_path_factory.mktemp("sweep")
    runs = root / "runs"
    args = ["train", "-m", "debug=fast", f"paths.runs_dir={runs}", f"paths.data_dir={data_root}", "objective=vicreg,simclr", "seed=0,1"]
    args += ["++trainer.limit_train_batches=4", "++trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "final_eval=true"]
    args += ["callbacks=default"]  # the encoder model and the figures too
    result = run_jepa(args)
    assert result.returncode == 0, result.stderr[-3000:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    info = json.loads(next(runs.glob("multirun/*/mlflow_sweep.json")).read_text())
    return {"root": root, "runs": runs, "uri": uri, "parent": info["run_id"], "stdout": result.stdout}


def test_sweep_nests_its_runs_under_one_parent_with_the_overrides(sweep: dict):
    client = mlflow.MlflowClient(sweep["uri"])
    parent = client.get_run(sweep["parent"])
    assert parent.info.status == "FINISHED" and parent.data.tags["jepa.sweep"] == "parent"
    assert {"objective=vicreg,simclr", "seed=0,1"} <= set(parent.data.params["sweep.overrides"].split())
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{sweep['parent']}'")
    assert len(children) == 4
    overrides = sorted(" ".join(o for o in c.data.tags["jepa.sweep.overrides"].split() if o.startswith(("objective", "seed"))) for c in children)
    assert overrides == ["objective=simclr seed=0", "objective=simclr seed=1", "objective=vicreg seed=0", "objective=vicreg seed=1"]
    assert all(c.data.tags["jepa.git.dirty"] in ("true", "false", "unknown") and c.data.tags["jepa.git.commit"] for c in children)
    logged = {a.path for a in client.list_artifacts(sweep["parent"], "compare")}
    assert {"compare/table.md", "compare/table.csv", "compare/table.json", "compare/val_probe_acc_step.png"} <= logged
    assert "| objective=" in sweep["stdout"]  # the table printed at the end of the sweep


def test_compare_table_groups_seeds_in_every_format(sweep: dict, tmp_path: Path):
    env = {"MLFLOW_TRACKING_URI": sweep["uri"]}
    md = run_jepa(["compare", "--sweep", sweep["parent"], "--no-log", "--out", str(tmp_path / "md")], env)
    assert md.returncode == 0, md.stderr
    lines = [line for line in md.stdout.splitlines() if line.startswith("| objective=")]
    assert {line.split("|")[1].strip() for line in lines} == {"objective=vicreg", "objective=simclr"}
    assert all(line.split("|")[2].strip() == "2" and "±" in line for line in lines)
    csv_out = run_jepa(["compare", "--sweep", sweep["parent"], "--no-log", "--format", "csv", "--out", str(tmp_path / "csv")], env)
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert len(rows) == 2 and all(0 <= float(r["probe_acc_mean"]) <= 1 and float(r["wall_s_mean"]) > 0 for r in rows)
    assert {"rank_mean", "std_mean", "energy_mean", "samples_per_s_mean", "uniformity_mean", "alignment_mean"} <= set(rows[0])
    # final_eval=true: the frozen linear probe and kNN of each run, of its random initialisation, and the gain
    for r in rows:
        assert abs(float(r["linear_mean"]) - float(r["linear_random_mean"]) - float(r["linear_gain_mean"])) < 1e-6
        assert 0 <= float(r["knn_mean"]) <= 1 and 0 <= float(r["knn_random_mean"]) <= 1
    records = json.loads(run_jepa(["compare", "--experiment", "jepa", "--format", "json", "--no-log", "--out", str(tmp_path / "j")], env).stdout)
    assert sorted(len(r["runs"]) for r in records) == [2, 2]
    means = [r["metrics"]["probe_acc"]["mean"] for r in records]
    assert means == sorted(means, reverse=True)
    curves = {p.name for p in (tmp_path / "md").glob("*.png")}
    assert {"val_probe_acc_step.png", "val_probe_acc_time.png", "train_energy_step.png", "train_energy_time.png"} <= curves


def test_compare_errors_are_one_line(sweep: dict, tmp_path: Path):
    env = {"MLFLOW_TRACKING_URI": sweep["uri"]}
    for args, words in (
        (["--sweep", "0123456789abcdef"], "no run"),
        (["--experiment", "nope"], "no experiment named"),
        ([], "nothing to compare"),
        (["--experiment", "jepa", "--sort", "loss"], "cannot sort"),
        (["--experiment", "jepa", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"], "no MLflow store"),
    ):
        result = run_jepa(["compare", *args, "--out", str(tmp_path / "o")], env)
        assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_runs_log_plots_model_and_statistics(sweep: dict):
    client = mlflow.MlflowClient(sweep["uri"])
    child = client.search_runs(
        [client.get_run(sweep["parent"]).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{sweep['parent']}'", max_results=1
    )[0]
    run_id = child.info.run_id
    for where in ("plots/epoch000", "plots/final"):
        names = {Path(a.path).name for a in client.list_artifacts(run_id, where)}
        assert {"repr_correlation.png", "repr_spectrum.png", "energy_histogram.png"} <= names, where
        assert all(a.file_size < 120_000 for a in client.list_artifacts(run_id, where))
    metrics = child.data.metrics
    assert {"emb/alignment", "emb/uniformity", "val/repr/uniformity", "perf/samples_per_sec", "system/cpu_utilization_percentage"} <= set(metrics)
    assert -4.5 < metrics["val/repr/uniformity"] < 0 and 0 <= metrics["emb/alignment"] <= 4
    mlflow.set_tracking_uri(sweep["uri"])
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/encoder")
    example = torch.randn(3, 3, 32, 32)
    assert model(example).shape == (3, 96)
    signature = mlflow.models.get_model_info(f"runs:/{run_id}/encoder").signature
    assert tuple(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 32, 32)


@pytest.mark.slow  # the notebook re-runs commands the tests above cover; make test-all runs it
def test_notebook_runs_on_the_sweep(sweep: dict, tmp_path: Path):
    outputs = execute_notebook(NOTEBOOKS / "compare_regularizers.py", tmp_path, {"MLFLOW_TRACKING_URI": sweep["uri"]})
    assert any("image/png" in o.get("data", {}) for o in outputs)
    data = [o.get("data", {}) for o in outputs]
    text = "".join(o.get("text", "") for o in outputs) + "".join(str(d.get("text/markdown", "")) + str(d.get("text/plain", "")) for d in data)
    assert "objective=vicreg" in text and "simclr-" in text  # the sweep's table and the list of runs (run names)
