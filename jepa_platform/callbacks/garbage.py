"""Python's garbage collector on a schedule: collections on chosen steps, not whenever allocations trigger them.

A training process holds about a million long-lived Python objects (Lightning, MLflow, Hydra, timm, the model's
modules). Left automatic, the collector's passes land on random steps and, as objects age into the oldest
generation, re-scan them: about 0.2 ms a step on average for the tiny H-JEPA of ``benchmarks/framework_overhead.py``,
and under DDP or FSDP a rank that collects makes every other rank wait at the next collective. As large-scale
training code does (torchtitan's ``gc_freq``, Megatron's ``--manual-gc``), :class:`GarbageCollection` freezes what
exists when training starts (those objects are never scanned again), turns automatic collection off, collects the
young generations every ``every_n_steps`` steps (every rank on the same steps) and everything at each epoch end, and
restores the collector when the fit ends, however it ends.
"""

from __future__ import annotations

import gc

import lightning as L
from lightning.pytorch.callbacks import Callback


class GarbageCollection(Callback):
    """Scheduled garbage collection during training; see the module docstring.

    Args:
        every_n_steps: collect the young generations every this many optimiser steps (``None``: on the steps that
            log, ``trainer.log_every_n_steps``, which pay for their host transfers already).
    """

    def __init__(self, every_n_steps: int | None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError("callbacks.garbage_collection.every_n_steps must be >= 1 (or null: trainer.log_every_n_steps)")
        self.every_n_steps = every_n_steps
        self._was_enabled: bool | None = None  # the collector's state before this fit, while scheduled

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._was_enabled is not None:
            return
        self._was_enabled = gc.isenabled()
        gc.collect()  # what setup left behind, before freezing what survives it
        gc.freeze()
        gc.disable()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object, batch_idx: int) -> None:
        every = self.every_n_steps or trainer.log_every_n_steps
        if self._was_enabled is not None and trainer.global_step % max(every, 1) == 0:  # global_step counts this step
            gc.collect(1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._was_enabled is not None:
            gc.collect()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()  # a fit that raises (a signal, a guard, a bug) gets no teardown

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._was_enabled is None:
            return
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()
        self._was_enabled = None
