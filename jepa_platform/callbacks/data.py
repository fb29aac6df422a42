"""``data/skipped``: how many samples the training loaders skipped (bad bytes, truncated tars, missing shards)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from jepa_platform.callbacks.cadence import logs_this_step


class DataHealth(Callback):
    """Logs ``data/skipped``, the running total of skipped training samples summed over ranks.

    The loaders put ``data_skipped`` (samples skipped since the worker's previous batch) into every batch, because
    DataLoader workers are separate processes whose counters the trainer cannot read.
    """

    def __init__(self) -> None:
        self._loaded = 0  # the total of the checkpoint this run resumed from
        self._total: Any = 0  # this rank's skipped samples since then, on the batch's device (read at checkpoints)

    @property
    def skipped(self) -> int:
        return self._loaded + int(self._total)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, dict) or "data_skipped" not in batch:
            return
        self._total = self._total + batch["data_skipped"]
        if logs_this_step(trainer):  # a device tensor: it reaches the host with the step's other values
            value = self._total.float() + self._loaded  # float32, what Lightning keeps (it was a Python float before)
            pl_module.log("data/skipped", value, on_step=True, on_epoch=False, reduce_fx="sum", sync_dist=trainer.world_size > 1)

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._loaded, self._total = int(state_dict.get("skipped", 0)), 0
