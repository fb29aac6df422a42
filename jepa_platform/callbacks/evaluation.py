"""Evaluation that any objective opts into by exposing features: online linear probe, kNN, embedding statistics.

An objective exposes, on each training and validation step, the detached tensors that evaluation may look at
(:meth:`jepa_platform.objectives.base.Objective.expose`):

- ``features``: named representations ``(B, D)`` for probes, kNN and validation statistics. ``features`` itself is
  the objective's representation (``val/probe_acc``, ``val/knn_acc``, ``val/repr/*``); any other name ``n`` (an
  H-JEPA level) gets ``val/<n>/probe_acc`` and ``val/<n>/*``. Widths are declared by ``feature_widths()``.
- ``stats``: named training embeddings for the ``<name>/*`` statistics (``repr``, ``emb``, ``level1``...).
- ``pairs``: positive pairs (two views) of a ``stats`` group, for its ``<name>/alignment``.
- ``energies``: per-sample energies ``(B,)``, one entry per level, for the energy histograms of
  :class:`jepa_platform.callbacks.artifacts.EmbeddingPlots`.

The callbacks below read them after the step; an objective that exposes nothing (a world model without labels)
simply gets no such metrics, and carries none of the machinery. Why callbacks and not the base class: a second
family of objectives (world models) must not inherit SSL plumbing, and every objective gets the *same* probe
(one optimiser, one learning rate), so that probe accuracies compare across objectives.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from jepa_platform.callbacks.cadence import logs_this_step
from jepa_platform.distributed import gather_rows
from jepa_platform.metrics.alignment import AlignmentUniformity, alignment, uniformity
from jepa_platform.metrics.embedding import EmbeddingStats, embedding_stats
from jepa_platform.metrics.knn import KNNAccuracy

log = logging.getLogger(__name__)
VAL_LOADER, BANK_LOADER = 0, 1
MAIN = "features"


class Lazy:
    """An exposed value computed when a callback first reads it, under no grad, from detached inputs.

    The readers work on a sample of steps (statistics and plots on the steps that log, the probe every few steps);
    a value computed on every step for them (a standardised embedding, per-pair energies) is a handful of kernels
    that most steps would throw away."""

    __slots__ = ("_fn", "_value")

    def __init__(self, fn: Any) -> None:
        self._fn, self._value = fn, None

    def get(self) -> Tensor:
        if self._fn is not None:
            with torch.no_grad():
                self._value = self._fn().detach()
            self._fn = None
        return self._value


def _resolved(value: Any) -> Any:
    if isinstance(value, Lazy):
        return value.get()
    if isinstance(value, tuple):
        return tuple(_resolved(v) for v in value)
    return value


def exposed(pl_module: L.LightningModule, kind: str) -> dict[str, Tensor]:
    """What the objective exposed of ``kind`` (``features``, ``stats``, ``pairs``, ``energies``) on its last step
    (:class:`Lazy` values computed now, once)."""
    return {k: _resolved(v) for k, v in getattr(pl_module, "exposed", {}).get(kind, {}).items()}


def feature_widths(pl_module: L.LightningModule) -> dict[str, int]:
    widths = getattr(pl_module, "feature_widths", None)
    return dict(widths()) if callable(widths) else {}


def _val_name(name: str, metric: str, main_group: str = "") -> str:
    """``val/[<main_group>/]<metric>`` for the main features, ``val/<name>/<metric>`` for the other feature sets."""
    group = main_group if name == MAIN else name
    return f"val/{group}/{metric}" if group else f"val/{metric}"


class OnlineProbe(Callback):
    """Linear classifiers trained on the detached exposed features, one per feature set, with their own optimiser.

    Logs ``train/probe_loss`` and ``val/probe_acc`` (``val/<name>/probe_acc`` for other feature sets). Gradients are
    averaged over ranks, so every rank holds the same probe; its weights and optimiser state are saved in the
    checkpoint (exact resume).

    Args:
        num_classes: classes of the labels; ``None``: the DataModule's (``num_classes`` of its preset or manifest;
            none there: no probe).
        lr: AdamW learning rate of the probes (the same for every objective, so that accuracies compare).
        weight_decay: AdamW weight decay.
        every_n_steps: train the probes on the batch of every ``n``-th optimiser step (1: every batch); the probe's
            forward, backward and update are the largest per-step cost of the default callbacks at GPU speed.
    """

    def __init__(self, num_classes: int | None, lr: float, weight_decay: float, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError("callbacks.online_probe.every_n_steps must be >= 1")
        self.num_classes, self.lr, self.weight_decay, self.every_n_steps = num_classes, lr, weight_decay, every_n_steps
        self.heads: nn.ModuleDict | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.accuracy: dict[str, MulticlassAccuracy] = {}
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        widths = feature_widths(pl_module)
        self.num_classes = self.num_classes or data_classes(trainer)
        if not self.num_classes or not widths or self.heads is not None:
            return
        device = trainer.strategy.root_device
        with torch.random.fork_rng(devices=[]):  # the same probe initialisation whatever ran before
            torch.manual_seed(0)
            self.heads = nn.ModuleDict({name: nn.Linear(width, self.num_classes) for name, width in widths.items()}).to(device)
        # fused: one kernel for the whole update instead of a few per parameter (it runs every every_n_steps steps)
        self.optimizer = torch.optim.AdamW(self.heads.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True)
        self.accuracy = {name: MulticlassAccuracy(self.num_classes, average="micro").to(device) for name in widths}
        if self._pending is not None:
            self.load_state_dict(self._pending)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (trainer.global_step - 1) % self.every_n_steps:  # global_step already counts this step
            return
        features = exposed(pl_module, "features")
        labels = batch.get("label") if isinstance(batch, dict) else None
        if self.heads is None or labels is None or not features:
            return
        with torch.enable_grad():
            losses = {n: F.cross_entropy(self.heads[n](f.detach().float()), labels) for n, f in features.items() if n in self.heads}
            self.optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            for p in self.heads.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= trainer.world_size
        self.optimizer.step()
        if MAIN in losses and logs_this_step(trainer):
            pl_module.log("train/probe_loss", losses[MAIN].detach(), batch_size=labels.shape[0])

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        labels = batch.get("label") if isinstance(batch, dict) else None
        if self.heads is None or labels is None or dataloader_idx != VAL_LOADER:
            return
        with torch.no_grad():
            for name, f in exposed(pl_module, "features").items():
                if name in self.heads:
                    self.accuracy[name].update(self.heads[name](f.float()), labels)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, metric in self.accuracy.items():
            if not trainer.sanity_checking and metric.update_called:
                pl_module.log(_val_name(name, "probe_acc"), metric.compute())
            metric.reset()

    def state_dict(self) -> dict[str, Any]:
        if self.heads is None:
            return {}
        return {"heads": self.heads.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.heads is None:  # restored before setup built the heads: apply then
            self._pending = state_dict
            return
        self.heads.load_state_dict(state_dict["heads"])
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._pending = None


def data_classes(trainer: L.Trainer) -> int | None:
    """The class count the run's DataModule knows (its preset, or the manifest of the user's shards), if any."""
    return getattr(getattr(trainer, "datamodule", None), "num_classes", None)


class KNNMonitor(Callback):
    """``val/knn_acc``: weighted kNN accuracy of the exposed validation features against the labelled bank loader
    (loader 1 of the DataModule's validation loaders; no bank, no metric).

    Args:
        num_classes: classes of the labels; ``None``: the DataModule's (none there: no kNN).
        k: neighbours of the weighted vote.
        temperature: temperature of the vote's weights.
    """

    def __init__(self, num_classes: int | None, k: int, temperature: float) -> None:
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        self.metric: KNNAccuracy | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.num_classes = self.num_classes or data_classes(trainer)
        if self.num_classes and MAIN in feature_widths(pl_module) and self.metric is None:
            dim = feature_widths(pl_module)[MAIN]
            self.metric = KNNAccuracy(self.num_classes, self.k, self.temperature, dim=dim).to(trainer.strategy.root_device)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        labels = batch.get("label") if isinstance(batch, dict) else None
        features = exposed(pl_module, "features").get(MAIN)
        if self.metric is not None and labels is not None and features is not None:
            self.metric.update(features, labels, bank=dataloader_idx == BANK_LOADER)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.metric is None:
            return
        if not trainer.sanity_checking and self.metric.update_called:
            pl_module.log("val/knn_acc", self.metric.compute())
        self.metric.reset()


class EmbeddingMonitor(Callback):
    """Representation statistics (:mod:`jepa_platform.metrics.embedding`, :mod:`jepa_platform.metrics.alignment`):
    ``<name>/*`` of the exposed training embeddings every ``every_n_steps`` optimiser steps, and ``val/repr/*``
    (``val/<name>/*``) accumulated exactly over the whole validation set and all ranks.

    The training statistics, ``<name>/uniformity`` and ``<name>/alignment`` (when the objective exposes positive pairs:
    two views) are those of the global training batch (all ranks' rows gathered on logging steps), so every rank logs
    the same values; ``val/repr/uniformity`` is over every
    pair of the validation set (the first 4096 samples of each rank: it costs ``N^2 D``). Validation images come one
    view each, so alignment is a training statistic only.

    Args:
        every_n_steps: how often the training statistics are logged; ``None`` follows ``trainer.log_every_n_steps``.
        dead_threshold: standard deviation under which a dimension counts as dead.
        max_rows: rows of each rank's training embeddings that the training statistics read (uniformity costs
            ``N^2 D`` over the gathered rows).
    """

    def __init__(self, every_n_steps: int | None, dead_threshold: float, max_rows: int) -> None:
        self.every_n_steps, self.dead_threshold = every_n_steps, dead_threshold
        self.val_stats: dict[str, EmbeddingStats] = {}
        self.val_uniformity: dict[str, AlignmentUniformity] = {}
        self.max_rows = max_rows
        self._step = 0
        self._every = every_n_steps or 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._every = self.every_n_steps or trainer.log_every_n_steps
        device = trainer.strategy.root_device
        widths = feature_widths(pl_module)
        self.val_stats = {name: EmbeddingStats(w, self.dead_threshold).to(device) for name, w in widths.items()}
        self.val_uniformity = {name: AlignmentUniformity(dim=w).to(device) for name, w in widths.items()}

    def due(self, step: int) -> bool:
        """Whether the training statistics are computed at optimiser step ``step`` (0-based): on the steps whose values
        Lightning hands to the logger (the ``every``-th, ``2 every``-th...), so that each logged value is the one of
        its own step, and a run stopped right after a step has logged everything it computed."""
        return bool(self._every) and (step + 1) % self._every == 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.due(self._step):
            return
        # Statistics of the global batch: every rank gathers every rank's rows (at most max_rows each), so all ranks
        # log, and decide on (the collapse monitor), the same values. Every rank reaches this on the same steps.
        pairs = exposed(pl_module, "pairs")
        for where, z in sorted(exposed(pl_module, "stats").items()):
            z_all = gather_rows(z.detach()[: self.max_rows].float())
            values = embedding_stats(z_all, self.dead_threshold)
            if where in pairs:
                a, b = (gather_rows(p.detach()[: self.max_rows].float()) for p in pairs[where])
                values["alignment"] = alignment(a, b)
                values["uniformity"] = uniformity(torch.cat([a, b]))
            else:
                values["uniformity"] = uniformity(z_all)
            for name, value in values.items():
                pl_module.log(f"{where}/{name}", value, batch_size=z_all.shape[0])

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if dataloader_idx != VAL_LOADER:
            return
        for name, f in exposed(pl_module, "features").items():
            if name in self.val_stats:
                self.val_stats[name].update(f)
                self.val_uniformity[name].update(f)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, metric in self.val_stats.items():
            if not trainer.sanity_checking and (metric.n > 1 or trainer.world_size > 1):
                for stat, value in {**metric.compute(), **self.val_uniformity[name].compute()}.items():
                    pl_module.log(_val_name(name, stat, "repr"), value)
            metric.reset()
            self.val_uniformity[name].reset()
