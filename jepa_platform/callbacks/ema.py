"""The EMA target encoder's update, as a callback: momentum schedule and position survive checkpoints.

After every optimiser step the objective's target moves toward the online weights,
``target <- m * target + (1 - m) * online``, with ``m`` rising linearly from ``momentum_start`` to
``momentum_end`` over the run's optimiser steps (I-JEPA: 0.996 -> 1.0). The position in the schedule is the
Trainer's ``global_step``, which checkpoints restore; the callback also stores the last step it applied, so a
resumed run neither repeats nor skips an update. Under gradient accumulation it updates once per optimiser step.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from jepa_platform.callbacks.cadence import logs_this_step
from jepa_platform.parallel import paired_local_tensors


def momentum_at(step: int, total_steps: int, start: float, end: float) -> float:
    """Linear schedule from ``start`` (step 0) to ``end`` (step ``total_steps``), constant afterwards."""
    return start + (end - start) * min(step / max(total_steps, 1), 1.0)


#: each module's submodules, listed on its first update: walking the module tree every step costs more than the
#: update itself for a small model (the tree does not change during training; its tensors are read at every update)
_SUBMODULES: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, ...]] = weakref.WeakKeyDictionary()


def _state_tensors(module: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """``module.parameters()`` and ``module.buffers()``, in their order and without repeats, from the submodules
    listed once. The tensors are read from the submodules every time: FSDP swaps sharded and unsharded ones."""
    modules = _SUBMODULES.get(module)
    if modules is None:
        modules = _SUBMODULES[module] = tuple(module.modules())
    params = [p for m in modules for p in m._parameters.values() if p is not None]
    buffers = [b for m in modules for b in m._buffers.values() if b is not None]
    return list(dict.fromkeys(params)), list(dict.fromkeys(buffers))  # a tied weight is updated once


@torch.no_grad()
def ema_update(pairs: Iterable[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for every parameter of every ``(target, online)``
    pair; buffers are copied.

    All pairs in one fused call (``lerp`` toward the online weights: one pass over the weights instead of a multiply
    and an add, one kernel per step for the whole model on a GPU). Under FSDP2 each target and its online module are
    sharded by the same plan, and the update runs on each rank's local shards (no communication, no gathered copy)."""
    targets, onlines, t_buffers, o_buffers = [], [], [], []
    for target, online in pairs:
        (t_params, t_bufs), (o_params, o_bufs) = _state_tensors(target), _state_tensors(online)
        if len(t_params) != len(o_params):
            raise ValueError(f"target has {len(t_params)} parameters, online {len(o_params)}: the target must be a copy of the online module")
        t_local, o_local = paired_local_tensors(t_params, o_params)
        targets += t_local
        onlines += o_local
        t_local, o_local = paired_local_tensors(t_bufs, o_bufs)
        t_buffers += t_local
        o_buffers += o_local
    if targets:
        torch._foreach_lerp_(targets, onlines, 1.0 - momentum)
    if t_buffers:
        torch._foreach_copy_(t_buffers, o_buffers)


class EMATargetUpdate(Callback):
    """Calls ``pl_module.update_target(momentum)`` after each optimiser step and logs ``train/ema_momentum``."""

    def __init__(self, momentum_start: float = 0.996, momentum_end: float = 1.0) -> None:
        if not 0.0 <= momentum_start <= momentum_end <= 1.0:
            raise ValueError(f"EMA momentum must satisfy 0 <= start ({momentum_start}) <= end ({momentum_end}) <= 1")
        self.start, self.end = momentum_start, momentum_end
        self.last_step = 0
        self._total_steps: int | None = None
        # built once: Lightning formats it into a profiler label at every hook call, six a step
        self._state_key = self._generate_state_key(momentum_start=self.start, momentum_end=self.end)

    @property
    def state_key(self) -> str:
        return self._state_key

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._total_steps = int(trainer.estimated_stepping_batches)  # read once a fit: Lightning recomputes it per read

    def momentum(self, trainer: L.Trainer, step: int) -> float:
        total = self._total_steps if self._total_steps is not None else int(trainer.estimated_stepping_batches)
        return momentum_at(step, total, self.start, self.end)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self.last_step:  # accumulating gradients: no optimiser step yet
            return
        momentum = self.momentum(trainer, step - 1)
        pl_module.update_target(momentum)
        self.last_step = step
        if logs_this_step(trainer):  # a Python float becomes a device tensor: only where a logger reads it
            pl_module.log("train/ema_momentum", momentum, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = int(state_dict["last_step"])
