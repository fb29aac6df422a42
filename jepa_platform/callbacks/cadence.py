"""Which training steps reach a logger, and how their values reach the host.

Per-step values logged on the other steps are never seen, and computing, reducing and moving them costs device
work, collectives (``sync_dist``) and host syncs on every step: :func:`logs_this_step`.

On a step that logs, Lightning reads every logged value to the host one at a time (``.item()`` per metric, each a
wait on the device). :func:`logged_on_host` makes that one transfer per device, and keeps the host values for the
callbacks that decide from them (collapse monitor, progress bar), so they read no tensor themselves, has
Lightning copy each value into its metric dicts once, not again on every later step, and skips Lightning's move of
a logged name's state to the device it is already on.

:func:`skip_unused_step_hooks` keeps Lightning from calling, on every step, the hooks a callback does not define.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

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
    # log_metrics is where they are read (a read of its internals, as should_update_logs and the batch end below)
    connector = trainer._logger_connector
    original = connector.log_metrics

    def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
        moved = _to_host(metrics)
        with host_side():  # from here on every value is a host copy
            host.values = {k: float(v) for k, v in moved.items() if isinstance(v, (int, float, torch.Tensor))}
            host.seq, host.step = host.seq + 1, trainer.global_step
            original(moved, step)

    connector.log_metrics = log_metrics
    _publish_step_values_once(trainer)
    for results in (trainer.fit_loop.epoch_loop._results, trainer.fit_loop.epoch_loop.val_loop._results):
        _move_states_only_when_elsewhere(results)
    return host


def _move_states_only_when_elsewhere(results: Any) -> None:
    """Each ``self.log`` has Lightning move the name's stored state to the value's device (``_ResultMetric.to``), by
    a generic walk of the whole module's attributes that deep-copies its metadata: about 0.17 ms a call, 5-6 ms of
    an H-JEPA logging step (33 values), and as much per validation batch. Once a name is registered, its metric's
    ``to`` returns at once when every tensor it holds is already on the target device (a move there changes
    nothing) and otherwise does Lightning's move. A read of Lightning's internals, as the connector's above."""
    original = results.log
    registered = 0  # names seen so far: Lightning only adds names, so a longer collection holds new ones

    def log(*args: Any, **kwargs: Any) -> None:
        nonlocal registered
        original(*args, **kwargs)
        if len(results) != registered:
            for metric in results.values():
                if "to" not in vars(metric):
                    object.__setattr__(metric, "to", _cheap_move(metric))  # found before Module.to, a plain method
            registered = len(results)

    results.log = log


def _cheap_move(metric: Any) -> Any:
    lightning_to = metric.to

    def to(*args: Any, **kwargs: Any) -> Any:
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is None and device is not None and metric._cache is None:
            tensors = [v for v in (*vars(metric).values(), *metric._defaults.values()) if isinstance(v, torch.Tensor)]
            if all(t.device == device for t in tensors):
                return metric
        return lightning_to(*args, **kwargs)

    return to


def _publish_step_values_once(trainer: L.Trainer) -> None:
    """After each batch, Lightning copies every value logged so far in the epoch into its metric dicts, also those
    logged on an earlier step and unchanged since: about 0.07 ms a step for H-JEPA's 30 values, on the steps that log
    nothing. Once a step has handed its values to the loggers, the values logged per step only (not per epoch) are
    marked as copied; a new ``log`` of a name unmarks it, so it is copied (and reaches the next logging step) as
    before, and the dicts (``callback_metrics``, ``logged_metrics``, ``progress_bar_metrics``) keep the copied
    values: what they hold, and what the loggers receive, is unchanged. Per-epoch values are left to Lightning's
    epoch-end reduction."""
    connector = trainer._logger_connector
    original = connector.update_train_step_metrics

    def update_train_step_metrics() -> None:
        handed_over = (connector.should_update_logs or trainer.fast_dev_run) and not trainer.fit_loop._should_accumulate()
        original()
        results = trainer._results
        if not handed_over or results is None:
            return
        for item in results.values():
            if not item.has_reset and item.is_tensor and not item.meta.on_epoch:
                item.has_reset = True  # Lightning's "nothing to copy" flag, which its next log of the name clears

    connector.update_train_step_metrics = update_train_step_metrics


#: the hooks Lightning calls on every training or validation batch
STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_zero_grad",
    "on_before_optimizer_step",
    "on_train_batch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
)


def skip_unused_step_hooks(callbacks: list[Callback]) -> None:
    """Set each per-batch hook that a callback's class leaves as ``Callback``'s no-op to ``None`` on the instance.

    Lightning calls every callback's hook in turn and skips an attribute that is not callable. A no-op call still
    costs its turn (a profiler label with the callback's ``state_key``, the module looked up), about 1 us each, and
    with the default callbacks most of the 6 hooks of a training step are no-ops for most of the 17 callbacks: a
    tenth of a millisecond a step, a tenth of the framework's budget at GPU step rates."""
    for callback in callbacks:
        for hook in STEP_HOOKS:
            if getattr(type(callback), hook, None) is getattr(Callback, hook) and hook not in vars(callback):
                setattr(callback, hook, None)
