"""Lightning's ``ModelCheckpoint`` with two changes that make every checkpoint a place a run resumes from exactly.

* A step-triggered checkpoint that falls on the last batch of an epoch whose validation is still to run is
  written after that validation instead: Lightning resumes such a checkpoint in the next epoch, so the epoch's
  validation (its ``val/*`` metrics) would be skipped.
* The end of training is always checkpointed (``last``), so the final weights are on disk whatever the period.
* :meth:`ModelCheckpoint.save_last_now` writes ``last`` on demand (pre-emption, :mod:`.preemption`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


def validation_follows(trainer: L.Trainer) -> bool:
    """Whether this training epoch ends with a validation (still to run while its batches are being trained)."""
    if not getattr(trainer, "enable_validation", False):
        return False
    every = trainer.check_val_every_n_epoch
    return every is None or (trainer.current_epoch + 1) % every == 0


class ModelCheckpoint(LightningModelCheckpoint):
    """``lightning.pytorch.callbacks.ModelCheckpoint`` (same arguments); see the module docstring."""

    @property
    def state_key(self) -> str:
        """Lightning's key (its arguments do not change after ``__init__``), built once: Lightning formats it into a
        profiler label at every hook call, six a step."""
        key = self.__dict__.get("_cached_state_key")
        if key is None:
            key = self.__dict__["_cached_state_key"] = super().state_key
        return key

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._every_n_train_steps < 1 and self._train_time_interval is None:
            return  # epoch checkpoints only (the default): nothing to decide after a batch, as in Lightning's own hook
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        if last_batch and validation_follows(trainer) and self._every_n_train_steps >= 1:
            if trainer.global_step % self._every_n_train_steps == 0 and not self._should_skip_saving_checkpoint(trainer):
                self._defer_save_until_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def save_last_now(self, trainer: L.Trainer) -> Path:
        """Write ``last.ckpt`` now (every rank must call it: a pre-emption at a step boundary) and return its path."""
        if not self.save_last:  # save_last=false still leaves the pre-empted state where ckpt_path=last finds it
            path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            trainer.save_checkpoint(path)
            return path
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return Path(self.last_model_path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
