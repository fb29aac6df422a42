"""Lightning's ``ModelCheckpoint`` with two changes that make every checkpoint a place a run resumes from exactly.

* A step-triggered checkpoint that falls on the last batch of an epoch whose validation is still to run is
  written after that validation instead: Lightning resumes such a checkpoint in the next epoch, so the epoch's
  validation (its ``val/*`` metrics) would be skipped.
* The end of training is always checkpointed (``last``), so the final weights are on disk whatever the period.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


def _validation_follows(trainer: L.Trainer) -> bool:
    if not getattr(trainer, "enable_validation", False):
        return False
    every = trainer.check_val_every_n_epoch
    return every is None or (trainer.current_epoch + 1) % every == 0


class ModelCheckpoint(LightningModelCheckpoint):
    """``lightning.pytorch.callbacks.ModelCheckpoint`` (same arguments); see the module docstring."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        if last_batch and _validation_follows(trainer) and self._every_n_train_steps >= 1:
            if trainer.global_step % self._every_n_train_steps == 0 and not self._should_skip_saving_checkpoint(trainer):
                self._defer_save_until_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
