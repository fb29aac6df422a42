"""Launch plumbing: the shared run directory name, rank detection, overrides for ranks > 0, the SLURM launcher config
(the sbatch script submitit would submit) and the learning-rate scaling rule."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from jepa_platform import launch
from jepa_platform.config import compose_config
from jepa_platform.optim import lr_scale

LAUNCH_VARS = ("JEPA_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NTASKS", "SLURM_PROCID")
LAUNCH_VARS += ("RANK", "LOCAL_RANK", "NODE_RANK")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    launch.run_stamp.cache_clear()
    yield monkeypatch
    launch.run_stamp.cache_clear()


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, None),
        ({"TORCHELASTIC_RUN_ID": "none"}, None),  # torchrun without --rdzv-id
        ({"TORCHELASTIC_RUN_ID": "job7"}, "job7"),
        ({"SLURM_JOB_ID": "123", "SLURM_NTASKS": "1"}, None),  # a single-task job: each run stamps its own time
        ({"SLURM_JOB_ID": "123", "SLURM_NTASKS": "16", "SLURM_STEP_ID": "0"}, "slurm123.0"),
        ({"JEPA_RUN_ID": "mine", "TORCHELASTIC_RUN_ID": "job7"}, "mine"),
    ],
)
def test_shared_run_id(env, variables: dict[str, str], expected: str | None):
    for key, value in variables.items():
        env.setenv(key, value)
    assert launch.shared_run_id() == expected
    stamp = launch.run_stamp()
    assert stamp == expected if expected else len(stamp) == len("2026-01-01_00-00-00")


def test_run_directory_uses_the_shared_id(env, tmp_path: Path):
    env.setenv("TORCHELASTIC_RUN_ID", "job7")
    cfg = compose_config([f"paths.runs_dir={tmp_path}", "objective=barlow"])
    assert cfg.hydra.run.dir == f"{tmp_path}/job7_barlow"


@pytest.mark.parametrize(
    ("variables", "rank"),
    [
        ({}, 0),
        ({"RANK": "3"}, 3),
        ({"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}, 2),
        ({"LOCAL_RANK": "1"}, 1),
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, 1),
    ],
)
def test_global_rank_from_the_launcher(env, variables: dict[str, str], rank: int):
    for key, value in variables.items():
        env.setenv(key, value)
    assert launch.global_rank() == rank


def test_other_ranks_write_no_config_and_their_own_log(env):
    assert launch.rank_overrides(["objective=vicreg"]) == []  # rank 0
    env.setenv("RANK", "1")
    env.setenv("TORCHELASTIC_RUN_ID", "job7")
    assert launch.rank_overrides([]) == ["hydra.output_subdir=null", "hydra.job.name=train_rank1"]
    env.setenv("TORCHELASTIC_RUN_ID", "none")  # no shared id: a throw-away Hydra directory, not a stray run
    extra = launch.rank_overrides([])
    run_dir = Path(extra[-1].split("=", 1)[1])
    assert extra[-1].startswith("hydra.run.dir=") and run_dir.is_dir() and "jepa-rank1-" in run_dir.name
    run_dir.rmdir()
    assert launch.rank_overrides(['hydra.run.dir="/x"']) == []  # started by Lightning's launcher, which sets it


def test_slurm_launcher_config_becomes_the_sbatch_script(env, tmp_path: Path):
    """The config maps onto submitit's sbatch script as the Hydra submitit plugin passes it: nodes from
    trainer.num_nodes, one task per GPU, setup lines before srun."""
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    env.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")  # submitit insists on finding srun
    overrides = ["hydra/launcher=slurm", "trainer=multinode", "trainer.num_nodes=4", "hydra.launcher.partition=gpu"]
    cfg = compose_config([*overrides, "hydra.launcher.setup=[module load cuda]"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    executor = submitit.AutoExecutor(folder=str(tmp_path / "sub"), cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    expected = ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu", "module load cuda")
    for line in (*expected, "#SBATCH --signal=USR1@120"):  # SLURM's warning, which jepa train turns into a checkpoint
        assert line in script
    assert script.index("module load cuda") < script.index("srun ")


def test_lr_scaling_rules():
    assert lr_scale("none", 4096, 256) == 1.0
    assert lr_scale("linear", 4096, 256) == 16.0
    assert math.isclose(lr_scale("sqrt", 4096, 256), 4.0)
    with pytest.raises(ValueError, match="not one of"):
        lr_scale("cubic", 4096, 256)
