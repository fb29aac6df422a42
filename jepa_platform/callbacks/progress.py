"""Readable progress for logs and terminals without a progress bar (CI, SLURM, `make demo`)."""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

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
