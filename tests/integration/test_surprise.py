"""``jepa surprise`` end to end at tiny size: train a passive world model and its pixel-space control on possible
clips, score the built-in pairs and a user's own pairs, log to MLflow; and the bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from support.cli import run_jepa

from data_modules.builtin import intuitive_physics as ip
from data_modules.sequences import write_episodes

TINY = ["debug=fast_physics", "trainer.enable_progress_bar=false"]
TINY_CONV = ["encoder.channels=[8,16,32]", "encoder.embed_dim=16", "objective.predictor.hidden=32"]
TINY_VIT = ["encoder.model_kwargs.depth=1", "objective.predictor_depth=1", "objective.predictor_dim=32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("surprise")
    env = {"JEPA_RUNS_DIR": str(root / "runs"), "JEPA_DATA_DIR": str(root / "data")}
    for name, args in (("wm", ["experiment=surprise_ac_jepa", *TINY_CONV]), ("pixels", ["experiment=surprise_pixel", *TINY_VIT])):
        result = run_jepa(["train", *args, *TINY], {**env, "JEPA_RUN_ID": name})
        assert result.returncode == 0, result.stderr[-3000:]
    return root, env


def _run_dir(root: Path, name: str) -> Path:
    (found,) = (root / "runs").glob(f"{name}_*")
    return found


def test_surprise_scores_the_built_in_pairs_next_to_baselines_and_logs_them(runs):
    root, env = runs
    wm, pixels = _run_dir(root, "wm"), _run_dir(root, "pixels")
    result = run_jepa(["surprise", str(wm), str(pixels), "--pairs-per-type", "3", "--figures", "1"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "15 pairs" in out and all(t in out for t in ip.VIOLATIONS)
    rows = [line for line in out.splitlines() if line.startswith((wm.name, pixels.name))]
    assert len(rows) == 4 and sum("random init" in r for r in rows) == 2  # each model trained and untrained
    for run_dir, context in ((wm, 4), (pixels, 4)):
        (result_dir,) = (run_dir / "surprise").iterdir()
        record = json.loads((result_dir / "surprise.json").read_text())
        assert record["setup"]["context"] == context
        assert set(record["results"]) == {"trained", "random_init"}
        for figures in record["results"].values():
            assert figures["overall"]["pairs"] == 15 and 0 <= figures["overall"]["pairwise_acc"] <= 1
            assert all(figures[t]["pairs"] == 3 for t in ip.VIOLATIONS)
        first = record["pairs"][0]
        curve, horizon = first["trained/impossible"], record["setup"]["horizon"]
        assert len(curve) == 24 and curve[:context] == [None] * context  # nothing seen before the context
        assert all(v is not None and v >= 0 for v in curve[context : 24 - horizon + 1])
        assert len(list((result_dir / "figures").glob("*.png"))) == len(ip.VIOLATIONS)
        info = json.loads((run_dir / "mlflow_run.json").read_text())
        client = MlflowClient(info["tracking_uri"])
        metrics = client.get_run(info["run_id"]).data.metrics
        expected = {"surprise/pairwise_acc", "surprise/relative", "surprise/random_init/pairwise_acc"}
        expected |= {f"surprise/pairwise_acc/{t}" for t in ip.VIOLATIONS}
        assert expected <= set(metrics), sorted(metrics)
        artifacts = [a.path for a in client.list_artifacts(info["run_id"], f"surprise/{result_dir.name}/figures")]
        assert len(artifacts) == len(ip.VIOLATIONS)


def _user_pair(i: int, change: bool = True) -> list[dict]:
    """A square moving right; in the impossible clip it turns red from frame 5 on."""
    frames = np.full((10, 32, 32, 3), 200, np.uint8)
    for t in range(10):
        frames[t, 10:16, 2 + 2 * t : 8 + 2 * t] = (0, 0, 255)
    impossible = frames.copy()
    if change:
        impossible[5:, 10:16] = np.where(impossible[5:, 10:16] == (0, 0, 255), (255, 0, 0), impossible[5:, 10:16])
    meta = {"pair_id": f"u{i}", "violation": "colour_change"}
    return [{"frames": frames, **meta, "impossible": False}, {"frames": impossible, **meta, "impossible": True}]


def test_surprise_scores_user_pairs_from_sequence_shards(runs):
    root, env = runs
    pairs = root / "user-pairs"
    write_episodes(pairs, {"test": (e for i in range(4) for e in _user_pair(i))}, episodes_per_shard=3, frame_format="png")
    result = run_jepa(["surprise", str(_run_dir(root, "wm")), "--pairs", str(pairs), "--random-init", "skip", "--no-mlflow"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 pairs" in result.stdout and "colour_change" in result.stdout
    (result_dir,) = sorted((_run_dir(root, "wm") / "surprise").iterdir())[-1:]
    record = json.loads((result_dir / "surprise.json").read_text())
    assert set(record["results"]) == {"trained"}
    assert record["pairs"][0]["violation_frame"] == 5  # found from the pixels when the metadata does not say


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: [{"frames": np.zeros((6, 32, 32, 3), np.uint8)}], "no pair_id or impossible"),
        (lambda: _user_pair(0)[:1], "has only its possible episode"),
        (lambda: _user_pair(0) + _user_pair(0)[1:], "two impossible episodes"),
    ],
    ids=["not pairs", "half a pair", "pair id twice"],
)
def test_bad_pairs_are_one_line_errors(runs, make, expected: str, tmp_path: Path):
    root, env = runs
    write_episodes(tmp_path / "pairs", {"test": make()}, episodes_per_shard=4)
    result = run_jepa(["surprise", str(_run_dir(root, "wm")), "--pairs", str(tmp_path / "pairs"), "--no-mlflow"], env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_windows_that_do_not_fit_are_refused(runs):
    root, env = runs
    result = run_jepa(["surprise", str(_run_dir(root, "wm")), "--context", "30", "--pairs-per-type", "3", "--no-mlflow"], env)
    assert result.returncode == 2 and "does not fit clips of 24 frames" in result.stderr


@pytest.mark.slow  # the notebook re-runs commands the tests above cover; make test-all runs it
def test_notebook_runs_at_tiny_size(tmp_path: Path):
    from support.notebooks import execute_notebook

    notebook = Path(__file__).resolve().parents[2] / "notebooks" / "surprise.py"
    outputs = execute_notebook(notebook, tmp_path, {"NOTEBOOK_SIZE": "tiny", "NOTEBOOK_WORKDIR": str(tmp_path)})
    assert not [o for o in outputs if o.get("output_type") == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == len(ip.VIOLATIONS)  # one pair per violation type, frames and curves
