"""Random-number generator states in every checkpoint, so that a resumed run draws what the uninterrupted one would.

Lightning checkpoints no RNG state, and ``seed_everything`` at start-up puts a resumed run back at the seed's
state. Anything that draws from the global generators during training (drop-path and dropout in timm models,
user code) would then differ after a resume. This callback stores the torch (CPU and CUDA), numpy and Python
states of every rank and restores each rank's own; after a change of world size every rank takes rank 0's.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def _portable(state: dict[str, Any]) -> dict[str, Any]:
    """numpy's state as plain values and a tensor, which ``torch.load(weights_only=True)`` reads back."""
    if "numpy" in state:
        name, keys, pos, has_gauss, gauss = state["numpy"]
        state = {**state, "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss))}
    return state


def _native(state: dict[str, Any]) -> dict[str, Any]:
    state = dict(state)
    if "numpy" in state:
        name, keys, pos, has_gauss, gauss = state["numpy"]
        state["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
    if not torch.cuda.is_available():
        state.pop("torch.cuda", None)
    return state


def _all_ranks(state: dict[str, Any]) -> list[dict[str, Any]]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [state]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, state)
    return out


class RNGStates(Callback):
    """Saves the RNG states of all ranks with each checkpoint and restores them on resume (see module docstring)."""

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Lightning builds the checkpoint on every rank before rank 0 writes it: every rank takes part in the gather.
        return {"ranks": _all_ranks(_portable(_collect_rng_states(include_cuda=torch.cuda.is_available())))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("ranks")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # applied at the start of training, after everything that set up the run drew its numbers
        if not self._pending:
            return
        rank = trainer.global_rank if len(self._pending) == trainer.world_size else 0
        if len(self._pending) != trainer.world_size:
            log.warning(
                "the checkpoint holds RNG states of %d ranks, this run has %d: every rank takes rank 0's", len(self._pending), trainer.world_size
            )
        _set_rng_states(_native(self._pending[rank]))
        self._pending = None
