"""Count the tensor-to-host conversions of a training step on the CPU, where they cost nothing but are as many as
on a GPU, where each one waits for every kernel queued before it.

Counted (by call site): reads of a value (``item``, ``bool(t)``, ``float(t)``, ``int(t)``, ``tolist``, ``numpy``,
``cpu``, formatting) and ops whose output shape depends on the data (``nonzero``, ``masked_select``, ``unique``,
``torch.where(condition)``, boolean-mask indexing). Left out: reads marked
:func:`jepa_platform.host_syncs.host_side` (those tensors live on the host by design) and torch's optimisers
reading their step count (a CPU tensor unless ``capturable``).

:class:`HostSyncCounter` is a callback: add it to a ``trainer.fit`` and read :attr:`HostSyncCounter.steps`, one
record per step window (from a step's ``on_train_batch_start`` to the next one's: the step, its callbacks,
Lightning's bookkeeping and the next batch's transfer), with whether the step logged or validated.
"""

from __future__ import annotations

import json
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.overrides import TorchFunctionMode

from jepa_platform.callbacks.cadence import logs_this_step
from jepa_platform.host_syncs import in_host_side

#: reads of a value by the host
CONVERSIONS = frozenset({"item", "__bool__", "__float__", "__int__", "__index__", "__format__", "__array__", "tolist", "numpy", "cpu"})
#: ops whose output shape depends on the data (the host must learn the size)
DATA_DEPENDENT = frozenset({"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"})
#: where a call site is named from (the innermost frame in one of these)
PACKAGES = ("jepa_platform", "data_modules", "lightning", "torchmetrics", "timm", "kornia")


def _bool_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def sync_kind(name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> str | None:
    """The name under which a torch call counts as a host sync, or ``None``."""
    if name in CONVERSIONS or name in DATA_DEPENDENT:
        return name
    if name == "where" and len(args) == 1 and not kwargs:
        return "where(condition)"
    if name in ("__getitem__", "__setitem__") and len(args) > 1 and _bool_index(args[1]):
        return "boolean-mask indexing"
    return None


def _in_optimizer_bookkeeping(frames: list[traceback.FrameSummary]) -> bool:
    """torch's optimisers read their step count, a CPU tensor by design (unless ``capturable``): not a device sync."""
    inner = next((f.filename.replace("\\", "/") for f in reversed(frames) if not f.filename.endswith("testing/host_syncs.py")), "")
    return "/torch/optim/" in inner


def call_site(frames: list[traceback.FrameSummary]) -> str:
    """``package/module.py:line`` of the innermost frame outside torch and this module."""
    for frame in reversed(frames):
        path = frame.filename.replace("\\", "/")
        if "/torch/" in path or path.endswith("testing/host_syncs.py"):
            continue
        for package in PACKAGES:
            marker = f"/{package}/"
            if marker in path:
                return f"{package}/{path.rsplit(marker, 1)[1]}:{frame.lineno}"
        return f"{Path(path).name}:{frame.lineno}"
    return "?"


class SyncCountingMode(TorchFunctionMode):
    """Counts host syncs by call site while active (``host_side`` reads left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kind = sync_kind(getattr(func, "__name__", ""), args, kwargs)
        if kind is not None and not in_host_side():
            frames = traceback.extract_stack()[:-1]
            if not _in_optimizer_bookkeeping(frames):
                self.counts[f"{kind} at {call_site(frames)}"] += 1
        return func(*args, **(kwargs or {}))

    def take(self) -> Counter[str]:
        """The counts since the last ``take``."""
        out, self.counts = self.counts, Counter()
        return out


@dataclass
class StepSyncs:
    """The host syncs of one step window."""

    step: int
    logs: bool
    validates: bool = False
    syncs: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.syncs.values())


class HostSyncCounter(Callback):
    """Counts host syncs per training step window (module docstring). Put it first in the callback list, so that
    the window opens before the other callbacks' ``on_train_batch_start``.

    Args:
        path: where to write the records as JSON when training ends (``None``: keep them in :attr:`steps`).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.steps: list[StepSyncs] = []
        self._mode: SyncCountingMode | None = None
        self._current: StepSyncs | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mode = SyncCountingMode()
        self._mode.__enter__()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._close()
        self._current = StepSyncs(step=trainer.global_step, logs=logs_this_step(trainer))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._current is not None:
            self._current.validates = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        if self.path and trainer.is_global_zero:
            Path(self.path).write_text(json.dumps([asdict(s) for s in self.steps], indent=1))

    def _close(self) -> None:
        if self._mode is None:
            return
        counts = self._mode.take()
        if self._current is not None:
            self._current.syncs = dict(counts)
            self.steps.append(self._current)
        self._current = None

    def quiet_steps(self) -> list[StepSyncs]:
        """Windows of steps that neither logged nor validated."""
        return [s for s in self.steps if not s.logs and not s.validates]
