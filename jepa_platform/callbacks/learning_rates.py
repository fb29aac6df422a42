"""``lr-<optimiser>`` (``lr-<optimiser>/pg<i>`` for several parameter groups): the learning rate each step trained with.

Lightning's ``LearningRateMonitor`` writes these to the loggers itself, a second write to the tracking store per
logging step beside Lightning's own; here they go through ``pl_module.log`` on the steps that log, with every
other value of the step (one transfer, one write).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from jepa_platform.callbacks.cadence import logs_this_step


class LearningRates(Callback):
    """Logs the learning rate of every optimiser's parameter groups before the steps that log (module docstring)."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if not logs_this_step(trainer):
            return
        for optimizer in trainer.optimizers:
            name, groups = f"lr-{type(optimizer).__name__}", optimizer.param_groups
            for i, group in enumerate(groups):
                key = name if len(groups) == 1 else f"{name}/pg{i + 1}"
                pl_module.log(key, float(group["lr"]), on_step=True, on_epoch=False, batch_size=1)
