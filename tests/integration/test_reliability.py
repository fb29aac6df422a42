"""Guards, MLflow integrity and data integrity, as a user meets them through ``jepa``."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from support.cli import run_jepa
from support.data import write_tar
from support.guards import guard_messages
from torch.utils._python_dispatch import TorchDispatchMode

from data_modules.urls import tar_has_end
from jepa_platform.callbacks import NonFiniteGuard, TrainingDiverged, guards
from jepa_platform.callbacks.guards import _grads_finite
from jepa_platform.config import build_preset

COLLAPSE = ["debug=fast", "optimizer=adamw", "optimizer.lr=5e-3", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false"]


QUICK = ("debug=fast", "trainer.enable_progress_bar=false", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1")


@pytest.fixture
def jepa_here(tmp_path: Path, data_root: Path):
    """``jepa ...`` in this process (no interpreter start-up): the exit status and what it printed."""

    def run(*args: str, run_id: str | None = None) -> tuple[int, str]:
        env = {"JEPA_RUNS_DIR": str(tmp_path), "JEPA_DATA_DIR": str(data_root), **({"JEPA_RUN_ID": run_id} if run_id else {})}
        result = run_jepa(list(args), env)
        return result.returncode, result.stdout + result.stderr

    return run


def _guard(**kwargs: object) -> NonFiniteGuard:
    """The non-finite guard as conf/callbacks/default.yaml configures it, with ``kwargs`` replacing its values."""
    return build_preset("callbacks=default", node="callbacks.nonfinite_guard", **kwargs)


def _jepa(*args: str, runs: Path, data_root: Path, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    env = dict(os.environ, JEPA_RUNS_DIR=str(runs), JEPA_DATA_DIR=str(data_root), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "jepa_platform.cli", *args]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _runs(runs: Path) -> list:
    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    return client, client.search_runs([client.get_experiment_by_name("jepa").experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.parametrize(("objective", "trips"), [("invariance_only", True), ("vicreg", False)])
def test_collapse_monitor_trips_on_the_control_only(tmp_path: Path, jepa_here, objective: str, trips: bool):
    code, out = jepa_here("train", *COLLAPSE, f"objective={objective}")
    assert code == 0, out[-2000:]
    _, (run,) = _runs(tmp_path)
    assert ("collapse.step" in run.data.tags) is trips, run.data.tags


class _Blows(L.LightningModule):
    """A one-parameter model whose loss is NaN at step ``at``."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.at = at

    def training_step(self, batch, batch_idx):
        loss = (self.w * batch[0]).pow(2).mean()
        return loss * float("nan") if self.global_step == self.at else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(64, 1)), batch_size=4)


def _fit(guard: NonFiniteGuard, tmp_path: Path, at: int, checkpoint_every: int = 0) -> tuple[L.Trainer, _Blows]:
    model = _Blows(at)
    callbacks: list = [guard]
    if checkpoint_every:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=checkpoint_every, save_top_k=-1, filename="{step}")
        )
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=bool(checkpoint_every), enable_progress_bar=False, callbacks=callbacks
    )
    trainer.fit(model)
    return trainer, model


def test_nonfinite_guard_stop_names_the_step_without_reading_every_step(tmp_path: Path):
    with pytest.raises(TrainingDiverged, match="non-finite at step 3 "):
        _fit(_guard(policy="stop", check_every_n_steps=5), tmp_path, at=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_gradient_check_finds_one_non_finite_value_in_any_dtype_and_leaves_the_gradients(bad: float | None):
    # a finite loss can still overflow in the backward pass: the guard reads the gradients themselves, grouped by dtype
    params = [torch.nn.Parameter(torch.ones(n, dtype=dtype)) for n in (3, 5, 7) for dtype in (torch.float32, torch.bfloat16, torch.float64)]
    for i, p in enumerate(params):
        p.grad = torch.arange(p.numel(), dtype=p.dtype) - i
    params.append(torch.nn.Parameter(torch.ones(2)))  # no gradient: skipped
    if bad is not None:
        params[4].grad[2] = bad
    before = [p.grad.clone() for p in params[:-1]]
    assert bool(_grads_finite(params, sharded=False)) is (bad is None)
    for a, p in zip(before, params, strict=False):
        torch.testing.assert_close(p.grad, a, rtol=0, atol=0, equal_nan=True)


class _BlowsInATerm(_Blows):
    """Exposes its loss terms as the objectives do (``last_loss``); the ``stretch`` term is NaN from step ``at``, and
    an ``extra`` term appears from step 2 (the terms an objective returns may change)."""

    def training_step(self, batch, batch_idx):
        fit = (self.w * batch[0]).pow(2).mean()
        stretch = fit * float("nan") if self.global_step >= self.at else fit
        terms = {"fit": fit, "stretch": stretch, **({"extra": fit.detach()} if self.global_step >= 2 else {})}
        self.last_loss = SimpleNamespace(total=fit + stretch, terms=terms)
        return fit + stretch


def test_nonfinite_guard_names_the_loss_term_that_went_non_finite(tmp_path: Path):
    guard = _guard(policy="stop", check_every_n_steps=5)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[guard])
    with pytest.raises(TrainingDiverged, match=r"non-finite at step 3 \(loss term stretch, loss term total NaN"):
        trainer.fit(_BlowsInATerm(at=3))


def test_nonfinite_guard_still_names_the_step_when_its_terms_are_no_longer_kept(tmp_path: Path, monkeypatch):
    # the guard keeps references to the latest steps' terms only; one that was dropped is named as "loss or gradients"
    monkeypatch.setattr(guards, "MAX_KEPT_STEPS", 1)
    guard = _guard(policy="stop", check_every_n_steps=5)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[guard])
    with pytest.raises(TrainingDiverged, match=r"non-finite at step 3 \(loss or gradients NaN"):
        trainer.fit(_BlowsInATerm(at=3))


@pytest.mark.parametrize("width", [1, 40])
def test_nonfinite_guard_stop_costs_the_same_few_operations_per_step_whatever_the_model(width: int):
    # at GPU step rates the guard's cost is its kernel count: one fused check and one add, however many gradients
    module = torch.nn.Sequential(*(torch.nn.Linear(3, 3) for _ in range(width)))
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    module.last_loss = SimpleNamespace(total=torch.tensor(1.0), terms={"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    guard = _guard(policy="stop")
    guard._record(module, 0)  # the first step allocates the flags
    with _CountOps() as ops:
        guard._record(module, 1)
    assert ops.names == ["_amp_foreach_non_finite_check_and_unscale_", "add_.Tensor"]


def test_nonfinite_guard_stops_every_rank_at_the_step_that_one_rank_saw_go_non_finite():
    # every rank takes part in the check's collectives and raises the same error, or the others wait forever
    (clean0, first), (clean1, second) = guard_messages(bad_rank=1, bad_step=3)
    assert clean0 == clean1 == ""
    assert first == second and "non-finite at step 3 (loss term stretch, loss term total NaN" in first, (first, second)


class _CountOps(TorchDispatchMode):
    """The aten operations run inside the block, by name."""

    def __enter__(self):
        self.names: list[str] = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in (torch.ops.aten.detach.default, torch.ops.aten.alias.default):  # views: no kernel
            self.names.append(str(func.name()).removeprefix("aten::"))
        return func(*args, **(kwargs or {}))


def test_nonfinite_guard_skip_stops_after_bad_steps_in_a_row_naming_the_term(tmp_path: Path):
    guard = _guard(policy="skip", max_consecutive=3)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[guard])
    with pytest.raises(TrainingDiverged, match=r"3 training steps in a row were non-finite \(last: step 5, loss term total, loss term stretch\)"):
        trainer.fit(_BlowsInATerm(at=3))


def test_nonfinite_guard_checks_before_every_checkpoint(tmp_path: Path):
    # the device flag is read only every 1000 steps, but the checkpoint at step 4 comes first: nothing is written
    with pytest.raises(TrainingDiverged, match="non-finite at step 3 "):
        _fit(_guard(policy="stop", check_every_n_steps=1000), tmp_path, at=3, checkpoint_every=2)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["step=2.ckpt"]


def test_nonfinite_guard_skip_leaves_the_weights_and_counts(tmp_path: Path):
    guard = _guard(policy="skip", max_consecutive=3)
    _trainer, model = _fit(guard, tmp_path, at=3)
    assert guard.skipped == 1 and torch.isfinite(model.w).all()
    _ref_trainer, ref = _fit(_guard(policy="skip"), tmp_path, at=-1)
    assert not torch.equal(model.w, ref.w)  # one step fewer was taken


@pytest.mark.slow  # 24 s: two subprocess runs killed by signals (benchmarks/faults.py kills runs too)
def test_sigterm_marks_the_run_killed_and_a_kill_9_is_found_later(tmp_path: Path, data_root: Path):
    args = ("train", *QUICK, "trainer.max_epochs=50")
    proc = _jepa(*args, runs=tmp_path, data_root=data_root, start_new_session=True)
    _wait_for_training(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    _client, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == ["KILLED"]

    proc = _jepa(*args, runs=tmp_path, data_root=data_root, start_new_session=True)
    _wait_for_training(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _runs(tmp_path)[1][-1].info.status == "RUNNING"  # nothing could mark it
    done = run_jepa(["train", *QUICK], {"JEPA_RUNS_DIR": str(tmp_path), "JEPA_DATA_DIR": str(data_root)})  # the next run
    assert done.returncode == 0, done.stderr[-2000:]
    statuses = [r.info.status for r in _runs(tmp_path)[1]]
    assert statuses == ["KILLED", "KILLED", "FINISHED"], statuses
    assert "jepa.died" in _runs(tmp_path)[1][1].data.tags


def _wait_for_training(proc: subprocess.Popen, timeout: float = 120) -> None:
    start = time.monotonic()
    for line in proc.stdout:
        if "Epoch" in line or "epoch 1/" in line or "Training" in line or "LR" in line:
            return
        assert time.monotonic() - start < timeout
    raise AssertionError("the run ended before training started")


def test_resume_is_tagged_and_a_failed_resume_leaves_the_run_finished(tmp_path: Path, jepa_here):
    quick = QUICK
    assert jepa_here("train", *quick, run_id="tagged")[0] == 0
    code, out = jepa_here("train", *quick, "trainer.max_epochs=2", "ckpt_path=last", run_id="tagged")
    assert code == 0, out[-2000:]
    assert jepa_here("train", *quick, "trainer.max_epochs=3", "ckpt_path=last", "trainer.accelerator=gpu", run_id="tagged")[0] == 2
    client, (run,) = _runs(tmp_path)
    tags = run.data.tags
    assert run.info.status == "FINISHED", "a failed resume flipped the finished run"
    assert tags["resume.1.from_step"] == "4" and tags["resume.1.previous_status"] == "FINISHED"
    changed = {k for k in tags if k.startswith("resume.") and k.split(".")[1] not in ("count", "1")}
    assert changed == {"resume.trainer.max_epochs"}, tags  # the one real change, no false config tags
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step"


def test_truncated_tar_without_manifest_is_counted(tmp_path: Path, jepa_here):
    buf = _png(np.zeros((32, 32, 3), dtype=np.uint8))
    shard = tmp_path / "part-000.tar"
    write_tar(shard, [{"__key__": f"s{i:04d}", "png": buf, "cls": b"1"} for i in range(96)])
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 // 512 * 512])  # cut at a header boundary: tarfile reads it without a word
    assert not tar_has_end(str(shard))
    code, out = jepa_here(
        "train", "debug=fast", "data=images", f"data.urls={shard}", "data.image_size=32", "data.batch_size=8",
        "~callbacks.collapse_monitor", "trainer.enable_progress_bar=false", "data.max_error_rate=0.5",
    )  # fmt: skip
    assert code == 0, out[-2000:]
    client, (run,) = _runs(tmp_path)
    assert client.get_metric_history(run.info.run_id, "data/skipped")[-1].value >= 1


def _png(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def test_convert_keep_verifies_images_writes_readable_data_and_its_hint_works(tmp_path: Path, jepa_here):
    src = tmp_path / "images"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(np.full((32, 32, 3), i * 3 + (cls == "b") * 100, dtype=np.uint8)).save(src / cls / f"{i}.png")
    (src / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really")
    out = tmp_path / "shards"
    code, printed = jepa_here("data", "convert", str(src), str(out), "--format", "keep", "--val-fraction", "0.2", "--workers", "1", "--no-progress")
    assert code == 0, printed[-2000:]
    assert "skipped 1 unreadable" in printed
    assert stat.S_IMODE(out.stat().st_mode) & 0o005 == 0o005, oct(out.stat().st_mode)  # others may read and enter
    hint = next(line for line in printed.splitlines() if "jepa train" in line)
    command = hint.split("train on it: ", 1)[-1].replace("<side>", "32").split()
    assert command[:2] == ["jepa", "train"]
    code, printed = jepa_here(*command[1:], "debug=fast", "data.batch_size=8", "logger=none", "trainer.enable_progress_bar=false")
    assert code == 0, printed[-2000:]
