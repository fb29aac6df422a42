"""``jepa train`` on two CPU processes (gloo on 127.0.0.1) through the command line, with the default callbacks and
logger: validation, final evaluation, a checkpoint, a resume from it, ``jepa eval`` and ``jepa export`` of the result;
pre-emption by SIGTERM; and every platform metric synced over two processes as one process computes it.

The default run covers a joint-embedding objective, a masked JEPA and a world model under ``trainer=ddp`` and
``trainer=fsdp`` (``vicreg`` under DDP is the pre-emption test's run); ``make test-all`` covers every registered
objective, plugins included, with the resumed run compared with an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support.cli import run_jepa
from support.controls import ListStateTruthiness
from support.runs import metric_history, same_training
from torchmetrics.classification import MulticlassAccuracy

from jepa_platform.export import FORMAT, load_exported
from jepa_platform.metrics.alignment import AlignmentUniformity
from jepa_platform.metrics.embedding import EmbeddingStats
from jepa_platform.metrics.knn import KNNAccuracy
from jepa_platform.registry import OBJECTIVES
from jepa_platform.testing import encoder_overrides, objective_class
from jepa_platform.testing.two_processes import (
    TWO_CPU_PROCESSES,
    check_callback_under_two_processes,
    jepa_two_processes,
    metrics_under_two_processes,
)

#: a short epoch: 4 steps of 2 x 32 images (2 x 16 clips for world models), 2 validation batches per loader
SHORT = ("trainer.limit_train_batches=4", "trainer.limit_val_batches=2")
#: the two default callbacks that the debug presets leave out for speed: back, so every default callback runs
ALL_CALLBACKS = ("callbacks=default",)
#: the default suite's cases: both strategies, an image objective, a masked JEPA with its EMA target and a world model
#: (every objective under both strategies: the slow matrix, ALL_CASES)
DEFAULT_CASES = [("ema_jepa", "ddp"), ("ac_jepa", "ddp"), ("vicreg", "fsdp"), ("ema_jepa", "fsdp"), ("ac_jepa", "fsdp")]
ALL_CASES = [(name, strategy) for name in OBJECTIVES.names() for strategy in ("ddp", "fsdp")]


def _env(tmp_path: Path, data_root: Path, run_id: str) -> dict[str, str]:
    return {"JEPA_DATA_DIR": str(data_root), "JEPA_RUNS_DIR": str(tmp_path / "runs"), "JEPA_RUN_ID": run_id}


def _train_args(objective: str, strategy: str, *extra: str) -> list[str]:
    overrides = [*encoder_overrides(objective), f"objective={objective}", f"trainer={strategy}", *TWO_CPU_PROCESSES, *SHORT, *ALL_CALLBACKS]
    return ["train", *overrides, *extra]


def _steps(run: Path) -> int:
    from jepa_platform.checkpoints import checkpoint_step

    return checkpoint_step(run / "checkpoints" / "last.ckpt")


def _check_export_and_eval(run: Path, objective: str, tmp_path: Path, env: dict[str, str], evaluate: bool = True) -> None:
    """``jepa eval`` (labelled data) and ``jepa export`` of a two-process run, and the exported encoder on images."""
    if evaluate and not getattr(objective_class([f"objective={objective}"]), "needs_actions", False):
        evaluated = run_jepa(["eval", str(run), "--train-samples", "256", "--random-init", "skip", "--no-mlflow"], env)
        assert evaluated.returncode == 0 and "trained" in evaluated.stdout, evaluated.stderr[-3000:]
    out = tmp_path / f"{run.name}.pt"
    exported = run_jepa(["export", str(run), "--out", str(out)], env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    record = torch.load(out, weights_only=True)
    assert record["format"] == FORMAT and record["source"]["global_step"] == _steps(run)
    encoder, preprocess = load_exported(out, with_preprocessing=True)
    channels, height, width = record["input"]["input_size"]
    images = torch.randint(0, 256, (2, channels, height + 8, width + 8), dtype=torch.uint8)  # as a user's images come
    with torch.no_grad():
        features = encoder(preprocess(images))
    assert features.shape[0] == 2 and torch.isfinite(features).all()


def _train_resume_and_use(objective: str, strategy: str, tmp_path: Path, data_root: Path, store) -> dict[str, object]:
    env = _env(tmp_path, data_root, f"{objective}-{strategy}")
    store(tmp_path / "runs")
    first = jepa_two_processes(_train_args(objective, strategy, "trainer.max_epochs=1", "final_eval=true"), env)
    assert first.returncode == 0, first.stderr[-4000:]
    run = tmp_path / "runs" / f"{objective}-{strategy}_{objective}"
    assert "final:" in first.stdout and (run / "checkpoints" / "last.ckpt").exists()
    labelled = not getattr(objective_class([f"objective={objective}"]), "needs_actions", False)
    if labelled:  # final evaluation: frozen probe next to the random init
        assert "frozen-encoder evaluation" in first.stdout and (run / "eval.json").is_file()
    else:  # a world model's final evaluation: open-loop prediction error on held-out episodes
        assert list(run.glob("predict/*/predict.json")), first.stdout[-2000:]
    one_epoch = _steps(run)
    assert list(run.glob("plots/epoch000/*.png")), "rank 0 draws the figures of the first validation"

    resumed = jepa_two_processes(_train_args(objective, strategy, "trainer.max_epochs=2", "ckpt_path=last"), env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert _steps(run) == 2 * one_epoch > 0
    status, history, tags = metric_history(tmp_path / "runs")
    assert status == "FINISHED" and tags.get("resume.count") == "1"
    assert all(len({s for s, _ in v}) == len(v) for v in history.values()), "a step logged twice"
    _check_export_and_eval(run, objective, tmp_path, env, evaluate=strategy == "fsdp")  # jepa eval reads the shards
    found = {"exit": first.returncode, "resume": resumed.returncode, "steps": _steps(run)}
    found.update({k: v[-1][1] for k, v in history.items() if k in ("val/probe_acc", "train/energy", "val/rollout_energy/h1")})
    return found


@pytest.mark.parametrize(("objective", "strategy"), DEFAULT_CASES, ids=[f"{o}-{s}" for o, s in DEFAULT_CASES])
def test_two_process_run_validates_evaluates_checkpoints_resumes_and_exports(
    objective: str, strategy: str, tmp_path: Path, data_root: Path, migrated_store
):
    _train_resume_and_use(objective, strategy, tmp_path, data_root, migrated_store)


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "strategy"), ALL_CASES, ids=[f"{o}-{s}" for o, s in ALL_CASES])
def test_every_objective_under_two_processes_resumes_exactly(objective: str, strategy: str, tmp_path: Path, data_root: Path, migrated_store):
    """Two epochs uninterrupted (with the final evaluation) against the same command stopped by SIGTERM at step 2
    (mid-epoch) and resumed with ckpt_path=last: the same weights, tensor for
    tensor, and the same MLflow histories; then jepa eval and jepa export of the resumed run."""
    reference_env, env = _env(tmp_path / "reference", data_root, "x"), _env(tmp_path, data_root, "x")
    for runs in (tmp_path / "runs", tmp_path / "reference" / "runs"):
        migrated_store(runs)
    reference = jepa_two_processes(_train_args(objective, strategy, "trainer.max_epochs=2", "final_eval=true"), reference_env)
    assert reference.returncode == 0, reference.stderr[-4000:]
    signal_at = ("+callbacks.signal_at._target_=support.controls.SendSignalAt", "+callbacks.signal_at.step=2")
    stopped = jepa_two_processes(_train_args(objective, strategy, "trainer.max_epochs=2", *signal_at), env)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-4000:]
    run = tmp_path / "runs" / f"x_{objective}"
    stopped_at = _steps(run)
    resumed = jepa_two_processes(_train_args(objective, strategy, "trainer.max_epochs=2", "ckpt_path=last"), env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    _check_export_and_eval(run, objective, tmp_path, env)
    _, history, _ = metric_history(tmp_path / "reference" / "runs")
    found = {"exit": reference.returncode, "stopped": stopped.returncode, "stopped_at": stopped_at, "resume": resumed.returncode}
    found.update({k: round(v[-1][1], 4) for k, v in history.items() if k in ("val/probe_acc", "train/energy", "val/rollout_energy/h1")})
    found["eval"] = (
        json.loads((tmp_path / "reference" / "runs" / run.name / "eval.json").read_text())
        if (tmp_path / "reference" / "runs" / run.name / "eval.json").is_file()
        else None
    )
    found["resume_exact"] = same_training(run, tmp_path / "reference" / "runs" / run.name) or "exact"
    print(json.dumps({"objective": objective, "strategy": strategy, **found}))
    assert found["resume_exact"] == "exact", found["resume_exact"]


# -- pre-emption --------------------------------------------------------------------------------------------------
PREEMPTIBLE = (
    "debug=fast",
    "trainer=ddp",
    *TWO_CPU_PROCESSES,
    "trainer.max_epochs=2",
    "data.num_workers=1",  # workers get the scheduler's signal too: they must leave it to the main process
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.model_checkpoint.every_n_epochs=0",
    *ALL_CALLBACKS,
)


def _preempt(args: list[str], env: dict[str, str], runs: Path) -> subprocess.CompletedProcess:
    """Start a two-process run and, once it has written its first step checkpoint (mid-epoch), send SIGTERM to its
    whole process group (both ranks and their loader workers), as SLURM does."""
    cmd = [sys.executable, "-m", "jepa_platform.cli", *args]
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not list(runs.glob("*/checkpoints/epoch000-step0000002.ckpt")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # a rank left waiting: take the whole group down, then fail
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += "\ntimed out after SIGTERM: a rank probably waits in a collective"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_sigterm_saves_at_a_step_boundary_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path: Path, data_root: Path, migrated_store):
    """The DDP case of the joint-embedding objective: validation, checkpoints, a resume and jepa export as above (its
    final evaluation is the FSDP case's), with a SIGTERM mid-epoch and an exact comparison."""
    for runs in (tmp_path / "runs", tmp_path / "reference" / "runs"):
        migrated_store(runs)
    reference_env = _env(tmp_path / "reference", data_root, "pre")
    reference = jepa_two_processes(["train", *PREEMPTIBLE], reference_env)
    assert reference.returncode == 0, reference.stderr[-4000:]
    epoch_steps = _steps(tmp_path / "reference" / "runs" / "pre_vicreg") // 2

    env = _env(tmp_path, data_root, "pre")
    stopped = _preempt(["train", *PREEMPTIBLE], env, tmp_path / "runs")
    run = tmp_path / "runs" / "pre_vicreg"
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-4000:]
    last = stopped.stderr.strip().splitlines()[-1]
    step = _steps(run)
    assert last.startswith("jepa train: stopped by SIGTERM; checkpoint saved at step") and f"step {step}:" in last, last
    assert "Traceback" not in stopped.stderr and "killed by signal" not in stopped.stderr, stopped.stderr[-4000:]
    assert 2 <= step < 2 * epoch_steps
    status, _, tags = metric_history(tmp_path / "runs")
    assert status == "KILLED" and tags["preempted.step"] == str(step) and tags["preempted.signal"] == "SIGTERM"

    resumed = jepa_two_processes(["train", *PREEMPTIBLE, "ckpt_path=last"], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert same_training(run, tmp_path / "reference" / "runs" / "pre_vicreg") == ""
    _check_export_and_eval(run, "vicreg", tmp_path, env, evaluate=False)


# -- metrics and callbacks: the contracts a plugin author runs ------------------------------------------------------
def _embeddings(n: int, d: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, d, generator=g) for _ in range(n)]


def test_every_platform_metric_syncs_over_two_processes_as_one_process_computes_it():
    z, w = _embeddings(4), _embeddings(4, seed=1)
    labels = [torch.arange(8) % 3 for _ in range(4)]
    problems = metrics_under_two_processes(
        {
            "embedding_stats": (functools.partial(EmbeddingStats, 6), [(x,) for x in z]),
            "alignment_uniformity": (functools.partial(AlignmentUniformity, dim=6), list(zip(z, w, strict=True))),
            "knn": (functools.partial(KNNAccuracy, 3, k=3, dim=6), [(x, y, i % 2 == 0) for i, (x, y) in enumerate(zip(z, labels, strict=True))]),
            "probe_accuracy": (functools.partial(MulticlassAccuracy, 3, average="micro"), [(x[:, :3], y) for x, y in zip(z, labels, strict=True)]),
            "negative_control": (ListStateTruthiness, [(x,) for x in z]),  # `if self.samples` on a synced state
        }
    )
    assert problems.pop("negative_control"), "the contract should catch a metric that tests a list state's truth"
    assert problems == dict.fromkeys(problems, "")


@pytest.mark.slow  # the default callbacks already run in every two-process run above
def test_callback_contract_passes_a_good_callback_and_catches_a_broken_one(tmp_path: Path, data_root: Path):
    check_callback_under_two_processes("jepa_platform.callbacks.EpochSummary", workdir=tmp_path / "good", data_dir=data_root)
    with pytest.raises(AssertionError, match="exited"):
        check_callback_under_two_processes("support.controls.ListStateCallback", workdir=tmp_path / "bad", data_dir=data_root)


def test_slurm_time_limit_warning_requeues_and_the_requeued_job_resumes_by_itself(tmp_path: Path, data_root: Path):
    """SIGUSR1 in a SLURM job (one process, in this one; ``scontrol`` is a stand-in that records its arguments):
    checkpoint, ``scontrol requeue <job id>``, exit 128 + SIGUSR1; the requeued job (``SLURM_RESTART_COUNT=1``, the same
    command) resumes from that checkpoint without being told."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**_env(tmp_path, data_root, "slurm"), "SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    args = ["train", "debug=fast", "trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.enable_progress_bar=false"]
    signal_at = ["+callbacks.signal_at._target_=support.controls.SendSignalAt", "+callbacks.signal_at.step=2"]
    stopped = run_jepa([*args, *signal_at, "+callbacks.signal_at.signum=SIGUSR1"], env)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1].endswith("the job was requeued and will resume from it")
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    run = tmp_path / "runs" / "slurm_vicreg"
    assert _steps(run) == 2  # the record is read after every other callback of the step, the sender's included

    again = run_jepa(args, {**env, "SLURM_RESTART_COUNT": "1"})  # the same command, as SLURM reruns it
    assert again.returncode == 0, again.stderr[-3000:]
    _, _, tags = metric_history(tmp_path / "runs")
    assert tags["resume.1.from_step"] == "2" and _steps(run) == 8
