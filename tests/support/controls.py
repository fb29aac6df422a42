"""Negative controls: the bugs the contracts catch, kept so that tests can show the contracts fail on them. Never
train with these."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from jepa_platform.objectives.barlow import BarlowTwins
from jepa_platform.objectives.vicreg import VICReg


class UngatheredBarlowTwins(BarlowTwins):
    """Barlow Twins with the cross-correlation computed per rank: the bug that :func:`ddp_gradient_check` catches.

    Standardising and correlating each rank's half-batch gives a different loss than the global batch, so its DDP
    gradients differ from single-process ones. Used as the negative control of the DDP test; never train with it.
    """

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x


class SyncingVICReg(VICReg):
    """VICReg that reads its loss on the host in every training step (a Python ``if`` on a tensor): the host sync the
    step's sync count catches. Never train with it."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        loss = out["loss"] if isinstance(out, dict) else out
        if loss > 1e9:  # a decision on the host: waits for the step's kernels on a GPU
            raise RuntimeError("loss exploded")
        return out


class ListStateTruthiness(Metric):
    """Mean of everything seen, written with ``if self.samples``: fine in one process, an error after a sync, where
    the list state has become one tensor. The negative control of the metric contract; never use it."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("samples", [], dist_reduce_fx="cat")

    def update(self, z: torch.Tensor) -> None:
        self.samples.append(z.detach().float())

    def compute(self) -> torch.Tensor:
        if self.samples:  # the bug
            return dim_zero_cat(self.samples).mean()
        return torch.tensor(float("nan"))


class ListStateCallback(Callback):
    """Logs :class:`ListStateTruthiness` of the validation features: the crash the platform shipped once (every
    two-process run died at its first logging step). The negative control of the callback contract."""

    def __init__(self) -> None:
        self.metric = ListStateTruthiness()

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        features = getattr(pl_module, "exposed", {}).get("features", {}).get("features")
        if features is not None:
            self.metric.update(features.cpu())

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.metric.update_called:
            pl_module.log("val/list_state_mean", self.metric.compute())
        self.metric.reset()


class SendSignalAt(Callback):
    """Sends ``signum`` (a name: ``SIGTERM``, ``SIGUSR1``...) to this process after optimiser step ``step``, as a
    scheduler would at that moment: pre-emption tests of one in-process run."""

    def __init__(self, step: int, signum: str = "SIGTERM") -> None:
        self.step, self.signum = step, signal.Signals[signum]

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
