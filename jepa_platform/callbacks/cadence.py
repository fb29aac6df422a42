"""Which training steps reach a logger, and how their values reach the host.

Per-step values logged on the other steps are never seen, and computing, reducing and moving them costs device
work, collectives (``sync_dist``) and host syncs on every step: :func:`logs_this_step`.

On a step that logs, Lightning reads every logged value to the host one at a time (``.item()`` per metric, each a
wait on the device). :func:`logged_on_host` makes that one transfer per device, and keeps the host values for the
callbacks that decide from them (collapse monitor, progress bar), so they read no tensor themselves.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch

from jepa_platform.host_syncs import host_side


def logs_this_step(trainer: L.Trainer | None) -> bool:
    """True on the steps whose ``on_step`` values Lightning hands to the loggers (every ``log_every_n_steps``), on the
    last batch of an epoch and on the last step, so the run's final values are always logged; outside a fit: True."""
    if trainer is None or not trainer.training:
        return True
    # Lightning's own rule, read where it decides (it has no public name): the one read of its internals
    if trainer._logger_connector.should_update_logs or trainer.is_last_batch:
        return True
    return trainer.max_steps > 0 and trainer.global_step + 1 >= trainer.max_steps


@dataclass
class HostMetrics:
    """The values of the last logging step, on the host (``seq`` counts the transfers, so readers see new ones)."""

    seq: int = 0
    step: int = -1
    values: dict[str, float] = field(default_factory=dict)


_HOST: weakref.WeakKeyDictionary[Any, HostMetrics] = weakref.WeakKeyDictionary()


def _to_host(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with every one-element tensor replaced by its host copy, one transfer per device."""
    by_device: dict[torch.device, list[str]] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            by_device.setdefault(value.device, []).append(key)
    out = dict(metrics)
    for keys in by_device.values():
        # the widest float among them (Lightning keeps results in the default dtype, float32; a device may lack float64)
        dtype = torch.float64 if any(metrics[k].dtype == torch.float64 for k in keys) else torch.float32
        host = torch.stack([metrics[k].detach().reshape(()).to(dtype) for k in keys]).cpu()  # the one transfer
        out.update(zip(keys, host.unbind(), strict=True))
    return out


def logged_on_host(trainer: L.Trainer) -> HostMetrics:
    """The host values of the last logging step. The first call (a callback's ``setup``, or ``run_train``) makes
    Lightning's logger connector move the logged values in one transfer per device before it converts them."""
    host = _HOST.get(trainer)
    if host is not None:
        return host
    host = _HOST[trainer] = HostMetrics()
    # Lightning has no hook between computing a step's logged tensors and reading them one by one: the connector's
    # log_metrics is where they are read (the second and last read of its internals, beside should_update_logs)
    connector = trainer._logger_connector
    original = connector.log_metrics

    def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
        moved = _to_host(metrics)
        with host_side():  # from here on every value is a host copy
            host.values = {k: float(v) for k, v in moved.items() if isinstance(v, (int, float, torch.Tensor))}
            host.seq, host.step = host.seq + 1, trainer.global_step
            original(moved, step)

    connector.log_metrics = log_metrics
    return host
