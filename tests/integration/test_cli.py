"""The `jepa` console script as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import run_jepa

from jepa_platform import cli


def _jepa(*args: str, cwd: Path, env_data: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "JEPA_DATA_DIR": str(env_data), "JEPA_RUNS_DIR": str(cwd / "runs")}
    return subprocess.run([sys.executable, "-m", "jepa_platform.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # one process through the CLI: the default run trains through it in test_two_processes.py and test_plugin.py
def test_train_runs_and_writes_a_run(tmp_path: Path, data_root: Path):
    result = _jepa("train", "debug=fast", "trainer.max_epochs=1", cwd=tmp_path, env_data=data_root)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir() and (p / "checkpoints").is_dir()]
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "last.ckpt").is_file()
    assert "final: val/probe_acc=" in result.stdout
    assert (tmp_path / "runs" / "mlflow.db").is_file()


def _jepa_here(*args: str, cwd: Path, env_data: Path) -> subprocess.CompletedProcess:
    """The same command in this process (no interpreter start-up): for everything but the end-to-end run above."""
    return run_jepa(list(args), {"JEPA_DATA_DIR": str(env_data), "JEPA_RUNS_DIR": str(cwd / "runs")})


def test_help_lists_groups(tmp_path: Path, data_root: Path):
    result = _jepa_here("train", "--help", cwd=tmp_path, env_data=data_root)
    assert result.returncode == 0
    lines = {line.split(": ")[0]: line.split(": ")[1].split(", ") for line in result.stdout.splitlines() if ": " in line}
    assert {"barlow", "invariance_only", "lejepa", "simclr", "vicreg", "simsiam"} <= set(lines["objective"])  # simsiam: the plugin
    assert {"resnet18", "resnet50", "resnet_test", "vit_tiny", "timm", "small_convnet"} <= set(lines["encoder"])
    assert lines["trainer"] == ["cpu", "ddp", "default", "fsdp", "gpu", "multinode"]


def test_cfg_job_prints_config(tmp_path: Path, data_root: Path):
    result = _jepa_here("train", "objective.sim_weight=10", "--cfg", "job", cwd=tmp_path, env_data=data_root)
    assert result.returncode == 0 and "sim_weight: 10" in result.stdout


def test_arguments_that_do_not_fit_exit_with_one_line(tmp_path: Path, data_root: Path):
    result = _jepa_here("train", "debug=fast", "data=images", "data.urls=x.tar", "+data.num_train=5", cwd=tmp_path, env_data=data_root)
    assert result.returncode == 2
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "cannot build data" in errors[0] and "num_train" in errors[0]


def test_missing_shards_exit_with_one_line(tmp_path: Path, data_root: Path):
    result = _jepa_here(
        "train",
        "encoder=resnet_test",
        "data=images",
        f"data.urls='{tmp_path}/none-{{0..3}}.tar'",
        "data.num_classes=10",
        cwd=tmp_path,
        env_data=data_root,
    )
    assert result.returncode == 2
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "data.urls: no shard at" in errors[0]


@pytest.mark.parametrize("args", [["train", "objective=nope"], ["train", "trainer.max_epochs=[1"], ["frobnicate"]])
def test_user_errors_exit_2(args: list[str], capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_eval_without_runs_is_a_one_line_error(tmp_path: Path, capsys):
    assert cli.main(["eval", "last", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run with checkpoints under") and "\n" not in err


# Prints which heavy packages the command imported, once it has answered (even through sys.exit).
_IMPORTS_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('IMPORTED', sorted(m for m in ('torch', 'lightning', 'mlflow', 'timm', 'kornia') if m in sys.modules)))\n"
    "from jepa_platform.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["list"], 0, "simsiam"),  # the example plugin (on PYTHONPATH in tests) is listed without being imported
        (["train", "--help"], 0, "== Config groups"),
        (["train", "objective=nope"], 2, "error: unknown objective 'nope'"),
        (["train", "trainer.max_epochs=0"], 2, "error: trainer.max_epochs=0 is not valid"),
        (["train", "trainer.max_epoch=2"], 2, "did you mean max_epochs"),
    ],
    ids=["list", "train-help", "unknown-objective", "bad-value", "unknown-trainer-argument"],
)
def test_listing_help_and_config_errors_answer_before_the_training_stack_is_imported(tmp_path: Path, args: list[str], code: int, says: str):
    """These answer in well under a second because torch, Lightning, MLflow and timm (several seconds) are not
    imported before the config is composed and checked."""
    result = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr[-2000:]
    assert says in result.stdout + result.stderr
    assert "IMPORTED []" in result.stdout, result.stdout[-500:]
