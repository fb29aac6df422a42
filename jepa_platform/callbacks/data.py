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
        self.skipped = 0
        self._pending: Any = 0  # this rank's count since the last logged step, on the batch's device (no host sync)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, dict) or "data_skipped" not in batch:
            return
        self._pending = self._pending + batch["data_skipped"]
        if logs_this_step(trainer):
            self._settle()
            pl_module.log("data/skipped", float(self.skipped), on_step=True, on_epoch=False, reduce_fx="sum", sync_dist=trainer.world_size > 1)

    def _settle(self) -> None:
        self.skipped += int(self._pending)
        self._pending = 0

    def state_dict(self) -> dict[str, int]:
        self._settle()
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped, self._pending = int(state_dict.get("skipped", 0)), 0
