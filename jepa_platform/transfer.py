"""Moving a batch to the model's device at GPU-scale step rates.

Lightning's default (``move_data_to_device``) walks any collection type (dataclasses, named tuples, default dicts,
objects with ``.to``) through a generic recursive apply: about 0.04 ms for the platform's nested batches (views,
labels, per-level masks) on every step, a twentieth of the whole framework's budget at 1 ms a step. The batches the
data modules hand over are dicts, lists and tuples of tensors and plain values; :func:`move_batch` walks only those
and returns ``None`` for anything else, which then takes Lightning's path. :class:`PlainBatchTransfer` is the data
modules' hook (a data module's, not the objective's: Lightning warns when only the model overrides it and a data
module is given).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

_PLAIN = (str, bytes, int, float, bool, type(None))
_UNKNOWN = object()


def _move(x: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(x, torch.Tensor):
        return x if x.device == device else x.to(device, non_blocking=non_blocking)
    if type(x) is dict:
        out = {}
        for k, v in x.items():
            out[k] = _move(v, device, non_blocking)
            if out[k] is _UNKNOWN:
                return _UNKNOWN
        return out
    if type(x) in (list, tuple):
        out = [_move(v, device, non_blocking) for v in x]
        return _UNKNOWN if any(v is _UNKNOWN for v in out) else type(x)(out)
    return x if isinstance(x, _PLAIN) else _UNKNOWN


def move_batch(batch: Any, device: torch.device) -> Any | None:
    """``batch`` with every tensor on ``device`` (non-blocking copies to an accelerator: pinned host memory then
    overlaps the copy with compute), or ``None`` if it holds a type other than dicts, lists, tuples, tensors and plain
    values."""
    moved = _move(batch, device, non_blocking=device.type not in ("cpu", "mps"))
    return None if moved is _UNKNOWN else moved


class PlainBatchTransfer(L.LightningDataModule):
    """A data module whose batches reach the device by :func:`move_batch` (other types: Lightning's generic walk)."""

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        moved = move_batch(batch, device)
        return moved if moved is not None else super().transfer_batch_to_device(batch, device, dataloader_idx)
