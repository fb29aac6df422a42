"""Per-step work the platform schedules: Lightning's metric dicts hold the same values, step by step, when the platform
has it copy each logged value once (jepa_platform.callbacks.cadence); garbage collection on a schedule and restored
after the fit (jepa_platform.callbacks.garbage)."""

from __future__ import annotations

import gc
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from jepa_platform.callbacks.cadence import logged_on_host


class _Logs(L.LightningModule):
    """Logs ``sparse`` on every 3rd step, ``between`` between the steps that log, ``dense`` every step, ``mean`` per
    epoch, ``bar`` to the progress bar and ``val`` per validation epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        loss = (self.w * batch[0]).pow(2).mean()
        if self.global_step % 3 == 0:
            self.log("sparse", loss * 2)
        if self.global_step % 4 == 1:  # never on a step that logs (every 4th): the next one hands it to the logger
            self.log("between", loss * 3)
        self.log("dense", loss)
        self.log("mean", loss, on_step=False, on_epoch=True)
        self.log("bar", loss + 1, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val", (self.w * batch[0]).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(40.0)[:, None]), batch_size=4)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(12.0)[:, None]), batch_size=4)


class _Snapshots(Callback):
    """The metric dicts as each step begins (after the previous step's batch end) and at the end."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def _take(self, trainer: L.Trainer) -> None:
        self.seen.append(
            {
                name: {k: float(v) for k, v in getattr(trainer, name).items()}
                for name in ("callback_metrics", "logged_metrics", "progress_bar_metrics")
            }
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._take(trainer)

    def on_train_end(self, trainer, pl_module):
        self._take(trainer)


def _run(tmp_path: Path, platform: bool) -> tuple[list[dict], str]:
    snaps = _Snapshots()
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=logger, log_every_n_steps=4, callbacks=[snaps], enable_checkpointing=False)
    if platform:
        logged_on_host(trainer)
    torch.manual_seed(0)
    trainer.fit(_Logs())
    return snaps.seen, (Path(logger.log_dir) / "metrics.csv").read_text()


def test_metric_dicts_and_logged_values_are_unchanged_when_each_value_is_copied_once(tmp_path: Path):
    (theirs, their_log), (ours, our_log) = _run(tmp_path / "lightning", platform=False), _run(tmp_path / "platform", platform=True)
    assert len(theirs) == len(ours) == 21
    assert ours == theirs
    assert {"sparse", "between", "dense", "mean", "bar", "val"} <= set(ours[-1]["callback_metrics"])
    assert our_log == their_log and "between" in our_log.splitlines()[0]


def test_a_logged_state_is_moved_only_when_it_is_elsewhere():
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection

    from jepa_platform.callbacks.cadence import _move_states_only_when_elsewhere

    results = _ResultCollection(training=True)
    _move_states_only_when_elsewhere(results)
    for value in (1.0, 3.0):
        results.log("training_step", "x", torch.tensor(value), on_step=True, on_epoch=True, batch_size=2)
    metric = results["training_step.x"]
    meta = metric.meta
    assert metric.to(torch.device("cpu")) is metric and metric.meta is meta  # already there: Lightning's walk skipped
    assert float(metric.value) == 8.0 and int(metric.cumulated_batch_size) == 4  # the values were accumulated
    metric.to(torch.device("meta"))  # elsewhere: Lightning's move
    assert metric.value.device.type == metric.cumulated_batch_size.device.type == "meta"


class _Watch(Callback):
    """Records the collector's state during training; optionally raises at a step."""

    def __init__(self, raise_at: int | None = None) -> None:
        self.enabled: list[bool] = []
        self.frozen: list[int] = []
        self.raise_at = raise_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.enabled.append(gc.isenabled())
        self.frozen.append(gc.get_freeze_count())
        if trainer.global_step == self.raise_at:
            raise RuntimeError("stopped here")


def _fit_with_gc(tmp_path: Path, watch: _Watch) -> None:
    from jepa_platform.callbacks import GarbageCollection

    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[GarbageCollection(3), watch]
    )
    trainer.fit(_Logs())


def test_garbage_collection_is_scheduled_during_training_and_restored_after(tmp_path: Path):
    watch = _Watch()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    _fit_with_gc(tmp_path, watch)
    assert watch.enabled == [False] * 10 and all(n > 0 for n in watch.frozen)  # setup's objects are frozen
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_garbage_collection_is_restored_when_training_fails(tmp_path: Path):
    watch = _Watch(raise_at=4)
    with pytest.raises(RuntimeError, match="stopped here"):
        _fit_with_gc(tmp_path, watch)
    assert watch.enabled == [False] * 5
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_unused_step_hooks_are_skipped_and_used_ones_kept():
    from jepa_platform.callbacks.cadence import STEP_HOOKS, skip_unused_step_hooks

    class _EndOnly(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends = getattr(self, "ends", 0) + 1

    cb = _EndOnly()
    skip_unused_step_hooks([cb])
    assert all(getattr(cb, hook) is None for hook in STEP_HOOKS if hook != "on_train_batch_end")
    assert callable(cb.on_train_batch_end) and callable(cb.on_fit_start)  # hooks outside a step are left alone
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[cb])
    trainer.fit(_Logs())  # Lightning skips the None hooks
    assert cb.ends == 10
