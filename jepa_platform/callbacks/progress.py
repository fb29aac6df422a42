"""Readable progress: one summary line per epoch for logs without a progress bar (CI, SLURM, `make demo`), and a
progress bar that does not stall an accelerator."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

from jepa_platform.callbacks.cadence import logged_on_host
from jepa_platform.masking.collate import model_input

log = logging.getLogger("jepa_platform")

SHOWN = (
    "train/loss",
    "train/energy",
    "level1/energy",
    "level2/energy",
    "emb/rank",
    "val/probe_acc",
    "val/knn_acc",
    "val/repr/rank",
    "val/rollout_energy/h1",
    "val/state_error",
)


def batch_samples(batch: dict) -> int:
    """Samples (images or clips) in a training or evaluation batch (also fits ``ThroughputMonitor(batch_size_fn=...)``)."""
    return int(model_input(batch).shape[0])


class EpochSummary(Callback):
    """One log line per epoch: time, training throughput, loss, energy, rank and probe accuracies."""

    def __init__(self) -> None:
        self._start = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._samples = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: dict, batch_idx: int) -> None:
        self._samples += batch_samples(batch)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs after the epoch's validation, so validation metrics are current
        seconds = time.perf_counter() - self._start
        metrics = trainer.callback_metrics
        shown = "  ".join(f"{k}={float(metrics[k]):.4f}" for k in SHOWN if k in metrics)
        log.info(
            "epoch %d/%d  %.0fs  %.0f samples/s/rank  %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            seconds,
            self._samples / max(seconds, 1e-9),
            shown,
        )


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, moved every step but with the loss read every ``every_n_steps`` (and at an epoch's end) on
    every device: each read waits for the step's kernels, and a wait on every step keeps the host from queueing the
    next one."""

    def __init__(self, every_n_steps: int) -> None:
        super().__init__(refresh_rate=1)
        self.every_n_steps = max(int(every_n_steps), 1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar, n = self.train_progress_bar, batch_idx + 1
        if bar is None or bar.disable:
            return
        bar.n = n
        if n % self.every_n_steps == 0 or n == bar.total:
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The run's version and the last logged ``train/loss``, from the host copy of the last logging step
        (objectives do not log it with ``prog_bar``, which Lightning would read to the host after every batch)."""
        items: dict[str, Any] = dict(super().get_metrics(trainer, pl_module))
        loss = logged_on_host(trainer).values.get("train/loss")  # the host copy: no read of the device here
        if loss is not None:
            items["train/loss"] = f"{loss:.4g}"
        return items
