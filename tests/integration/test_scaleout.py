"""Scale-out on CPU with gloo on loopback: DDP and FSDP2 (2 processes) against one process, sharded resume, FSDP runs
from the command line with export and evaluation, and torchrun starting two nodes.

Loss agreement: every registered objective (plugins included) steps on the same global batches (each rank on its
contiguous half) in float64, and the logged ``train/loss`` (averaged over ranks) after each of 3 optimiser steps
must agree with one process within a relative 1e-9 (measured: ~1e-16). A Barlow Twins that standardises per rank
(the negative control) must not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from support.cli import run_jepa

from jepa_platform.checkpoints import RUN_INFO, read_checkpoint
from jepa_platform.errors import CheckpointError
from jepa_platform.export import FORMAT, load_exported
from jepa_platform.parity import strategy_losses
from jepa_platform.registry import OBJECTIVES
from jepa_platform.testing import free_port
from jepa_platform.train import run_train

REL = 1e-9
NEGATIVE_CONTROL = ["objective=barlow", "objective._target_=support.controls.UngatheredBarlowTwins"]
# every registered objective (plugins included), and the negative control
CASES = {**{name: [f"objective={name}"] for name in OBJECTIVES.names()}, "negative_control": NEGATIVE_CONTROL}
STEPS = {"steps": 3, "epoch_steps": 1}  # 3 optimiser steps; a resumed run stops after the first


def _same_losses(found: list[float], expected: list[float]) -> bool:
    return len(found) == len(expected) and found == pytest.approx(expected, rel=REL, abs=1e-12)


@pytest.fixture(scope="module")
def single() -> dict:
    return strategy_losses(CASES, "single", **STEPS)


#: FSDP in the default run: a projector objective and both EMA-target objectives (with the negative control); slow: all
FSDP_SUBSET = ("vicreg", "ema_jepa", "h_jepa")


# DDP: slow (the gradients of one DDP step equal one process's for every objective in test_distributed.py)
@pytest.mark.parametrize("strategy", [pytest.param("ddp", marks=pytest.mark.slow), "fsdp", pytest.param("fsdp-all", marks=pytest.mark.slow)])
def test_every_objective_under_two_processes_matches_one_process(strategy: str, single: dict):
    """The default FSDP run also validates after fit (image objectives): Lightning calls configure_model again, and
    sharding must not run twice (it used to broadcast rank 0's tensors over the shards, which failed on DTensors)."""
    names = FSDP_SUBSET if strategy == "fsdp" else OBJECTIVES.names()
    cases = {**{name: CASES[name] for name in names}, "negative_control": NEGATIVE_CONTROL}
    fsdp = strategy.startswith("fsdp")
    found = strategy_losses(cases, "fsdp" if fsdp else strategy, validate_after=strategy == "fsdp", **STEPS)
    for name in names:
        assert _same_losses(found[name]["losses"], single[name]["losses"]), f"{name} under {strategy}: {found[name]} vs {single[name]}"
        if fsdp:  # every parameter sharded; EMA targets sharded exactly like their online encoders; validate keeps weights
            assert found[name]["sharded_fraction"] == 1.0 and found[name]["target_sharded_like_online"], name
        if strategy == "fsdp":
            assert found[name]["changed_by_validate"] == 0.0, name
    assert found["ema_jepa"]["ema_pairs"] > 0 and found["h_jepa"]["ema_pairs"] > found["ema_jepa"]["ema_pairs"]
    assert not _same_losses(found["negative_control"]["losses"], single["negative_control"]["losses"])


#: the default run resumes one objective with a projector and one with an EMA target and mask collate; slow: all
RESUME_SUBSET = ("vicreg", "ema_jepa")


# slow: the default run resumes vicreg, ema_jepa and ac_jepa from sharded checkpoints through jepa train on two processes
# (test_two_processes.py); make test-all compares their losses with an uninterrupted run here and there
@pytest.mark.parametrize("which", [pytest.param("subset", marks=pytest.mark.slow), pytest.param("all", marks=pytest.mark.slow)])
def test_every_objective_resumes_from_a_sharded_checkpoint_with_the_same_losses(which: str, single: dict):
    """Each run stops after its first step and writes a sharded checkpoint; a differently initialised model resumes
    from it (weights, optimiser state, LR schedule, EMA targets and their callback) and steps on exactly as the
    uninterrupted run."""
    names = RESUME_SUBSET if which == "subset" else OBJECTIVES.names()
    cases = {name: CASES[name] for name in names}
    resumed = strategy_losses(cases, "fsdp", resume=True, **STEPS)
    for name in cases:
        assert resumed[name]["checkpoint_is_dir"], "FSDP should write a sharded checkpoint directory"
        assert _same_losses(resumed[name]["losses"], single[name]["losses"]), f"{name}: {resumed[name]['losses']} vs {single[name]['losses']}"


@pytest.mark.slow  # the default run checks the same within test_every_objective_under_two_processes_matches_one_process[fsdp]
def test_validate_after_fit_under_fsdp_keeps_the_weights():
    """Lightning calls configure_model again for trainer.validate: sharding must not run twice (it used to broadcast
    rank 0's tensors over the shards, which failed on DTensors)."""
    cases = {name: [f"objective={name}"] for name in ("vicreg", "ema_jepa")}
    found = strategy_losses(cases, "fsdp", steps=2, epoch_steps=2, validate_after=True)
    for name in cases:
        assert found[name]["changed_by_validate"] == 0.0, name


@pytest.mark.slow
def test_clipping_and_accumulation_under_fsdp_match_one_process():
    cases = {name: [f"objective={name}"] for name in ("barlow", "ema_jepa")}
    kwargs = {"gradient_clip_val": 0.05, "accumulate_grad_batches": 2}
    reference = strategy_losses(cases, "single", steps=4, epoch_steps=4, trainer_kwargs=kwargs)
    unclipped = strategy_losses(cases, "single", steps=4, epoch_steps=4, trainer_kwargs={"accumulate_grad_batches": 2})
    found = strategy_losses(cases, "fsdp", steps=4, epoch_steps=4, trainer_kwargs=kwargs)
    for name in cases:
        assert _same_losses(found[name]["losses"], reference[name]["losses"]), name
    assert not _same_losses(unclipped["barlow"]["losses"], reference["barlow"]["losses"])  # clipping was active


@pytest.mark.slow
def test_bf16_autocast_under_fsdp_matches_one_process():
    """trainer.precision=bf16-mixed (CPU autocast) in float32: FSDP and one process agree to bf16 rounding."""
    cases = {name: [f"objective={name}"] for name in ("vicreg", "ema_jepa")}
    kwargs = {"precision": "bf16-mixed"}
    reference = strategy_losses(cases, "single", dtype="float32", trainer_kwargs=kwargs)
    found = strategy_losses(cases, "fsdp", dtype="float32", trainer_kwargs=kwargs)
    full = strategy_losses(cases, "single", dtype="float32")
    for name in cases:
        assert found[name]["losses"] == pytest.approx(reference[name]["losses"], rel=2e-2), name
    assert reference["vicreg"]["losses"] != full["vicreg"]["losses"]  # autocast was active


# -- the command line -------------------------------------------------------------------------------------------------
def _env(tmp_path: Path, data_root: Path) -> dict[str, str]:
    return {**os.environ, "JEPA_DATA_DIR": str(data_root), "JEPA_RUNS_DIR": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}


def _jepa(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jepa_platform.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


def _runs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "runs").iterdir() if (p / "checkpoints").is_dir())


@pytest.mark.slow  # 45 s; sharded save and resume of every objective stay in the default run (above)
def test_fsdp_run_from_the_command_line_resumes_exports_and_evaluates(tmp_path: Path, data_root: Path):
    env = _env(tmp_path, data_root)
    args = ["train", "debug=fast_vit", "objective=ema_jepa", "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1"]
    first = _jepa(*args, "trainer.max_epochs=1", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = _runs(tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and (ckpt / "meta.pt").is_file(), "trainer=fsdp should write a sharded checkpoint"
    first_step = torch.load(ckpt / "meta.pt", weights_only=True)["global_step"]

    wrong = run_jepa(["train", "debug=fast_vit", "objective=ema_jepa", f"ckpt_path={run}", "trainer.max_epochs=2"], env)
    assert wrong.returncode == 2 and "is a sharded (FSDP) checkpoint: resume it with trainer=fsdp" in wrong.stderr

    resumed = _jepa(*args, f"ckpt_path={run}", "trainer.max_epochs=2", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _runs(tmp_path) == [run]  # the resumed run continues in its own directory
    second = run
    meta = torch.load(second / "checkpoints" / "last.ckpt" / "meta.pt", weights_only=True)
    assert meta["global_step"] == 2 * first_step > 0

    out = tmp_path / "encoder.pt"
    exported = run_jepa(["export", str(second), "--out", str(out)], env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    record = torch.load(out, weights_only=True)
    assert record["format"] == FORMAT and record["timm_name"] == "test_vit" and record["source"]["module"] == "target"
    target, _ = read_checkpoint(second / "checkpoints" / "last.ckpt", prefix="target.model.")
    assert set(record["state_dict"]) == {k.removeprefix("target.model.") for k in target}
    for key, value in target.items():
        assert torch.equal(record["state_dict"][key.removeprefix("target.model.")], value), key
    encoder = load_exported(out)
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, record["num_features"])
    again = run_jepa(["export", str(second), "--out", str(out)], env)
    assert again.returncode == 2 and "exists" in again.stderr and torch.load(out, weights_only=True)["format"] == FORMAT

    evaluated = run_jepa(["eval", str(second), "--train-samples", "256", "--random-init", "skip", "--no-mlflow"], env)
    assert evaluated.returncode == 0 and "trained" in evaluated.stdout, evaluated.stderr[-3000:]


@pytest.mark.slow  # 18 s: two torchrun launches; the launch plumbing is also covered by tests/unit/test_launch.py
def test_torchrun_two_nodes_on_loopback(tmp_path: Path, data_root: Path):
    """Two torchrun launchers, one process each, rendezvous over c10d on 127.0.0.1 as two nodes (the command of the
    README), train with trainer=multinode (FSDP2) and write one run: one sharded checkpoint with a shard per rank."""
    env = _env(tmp_path, data_root)
    port = free_port()
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"),
        *("--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"),
        *("-m", "jepa_platform.cli", "train", "debug=fast", "trainer=multinode", "trainer.accelerator=cpu", "trainer.devices=1"),
        "trainer.max_epochs=1",
    ]
    nodes = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=400))
    finally:
        for node in nodes:
            node.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(err[-2000:] for _, err in outputs)
    (run,) = _runs(tmp_path)  # one run directory for both nodes
    shards = sorted(p.name for p in (run / "checkpoints" / "last.ckpt").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]
    assert sum("final: val/probe_acc=" in out for out, _ in outputs) == 1  # rank 0 reports
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"] or client.search_experiments()
    assert len(client.search_runs([experiment.experiment_id])) == 1  # logged once, by rank 0


def test_lr_scaling_with_the_global_batch_and_no_reuse_of_a_run_directory(make_cfg):
    """lr x (global batch / reference): debug=fast trains with 32 samples per step, so reference 64 halves the LARS
    rate of the trained groups (0.2 -> 0.1) and leaves the probe's; a new run refuses a directory with checkpoints."""
    cfg = make_cfg("objective.lr_scaling=linear", "objective.reference_batch_size=64", "trainer.max_epochs=1")
    run_train(cfg)
    info = json.loads((Path(cfg.paths.output_dir) / RUN_INFO).read_text())
    client = mlflow.MlflowClient(tracking_uri=info["tracking_uri"])
    first = {k: client.get_metric_history(info["run_id"], k)[0].value for k in client.get_run(info["run_id"]).data.metrics if k.startswith("lr-")}
    assert sorted(first.values()) == pytest.approx([0.1, 0.1])  # weights, norms/biases (scaled; the probe has its own optimiser)
    with pytest.raises(CheckpointError, match="already holds checkpoints of another run"):
        run_train(cfg)
