"""Shared plumbing for self-supervised objectives.

:class:`SelfSupervisedObjective` holds what every objective shares: the encoder, an online linear probe on
detached features, kNN accuracy and representation statistics on the validation set, logging of loss terms and
embedding statistics under the names of DESIGN.md, and the optimiser with its warmup + cosine schedule.
Parameters with ``requires_grad=False`` (an EMA target encoder) are left out of the optimiser.

:class:`JointEmbeddingObjective` adds the multi-view path: a subclass only says how embeddings of the views become
a loss (``compute_loss``) and which term is its energy; the base runs the encoder and projector over the views.

Distributed training: ``compute_loss`` sees this rank's embeddings. A term that needs the global batch gathers
them with :meth:`gather` (an all-gather that keeps gradients; see :mod:`jepa_platform.distributed`) and computes
the same value on every rank; a term that is a mean over samples may stay local. DDP's gradient average then
makes one step on W ranks equal one step on the concatenated batch (tested for every registered objective).

Batches: training ``{"views": [Tensor(B, C, H, W)] * V, "label": Tensor(B)}`` (label optional); validation
``{"image": Tensor(B, C, H, W), "label": Tensor(B)}`` (or clip ``frames`` (B, T, C, H, W) for objectives that take
clips) from loader 0 (queries) and loader 1 (the kNN bank).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.classification import MulticlassAccuracy

from jepa_platform.distributed import gather_with_grad
from jepa_platform.encoders.heads import projector as make_projector
from jepa_platform.errors import ConfigError
from jepa_platform.losses.functional import LossOutput
from jepa_platform.masking.collate import model_input
from jepa_platform.metrics.embedding import EmbeddingStats, embedding_stats
from jepa_platform.metrics.knn import KNNAccuracy
from jepa_platform.optim import LR_SCALING, OptimizerFactory, lr_scale, param_groups, warmup_cosine
from jepa_platform.parallel import FSDP2Strategy, shard_objective

VAL_LOADER, BANK_LOADER = 0, 1
log = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """One training step's loss with the encoder features and projected embeddings of each view."""

    loss: LossOutput
    representations: list[Tensor]
    embeddings: list[Tensor]


class SelfSupervisedObjective(L.LightningModule):
    """Base of every objective: encoder, online probe, kNN, statistics, logging and optimiser (see module docstring).

    Args:
        encoder: backbone with a ``num_features`` attribute, mapping images to ``(B, D)`` features.
        optimizer: partial optimiser, called with parameter groups (e.g. ``timm.optim.Lars`` or ``AdamW``).
        num_classes: classes of the labelled data, for the online probe and kNN; ``None`` disables both.
        weight_decay: decay of weight matrices (biases and norm parameters get none).
        warmup_frac: fraction of all optimiser steps spent in linear warmup.
        min_lr_ratio: final LR of the cosine schedule, relative to the peak.
        probe_lr: LR of the online probe; ``None`` uses the optimiser's.
        knn_k, knn_temperature: neighbours and temperature of the weighted kNN vote.
        stats_every_n_steps: how often (optimiser steps) to log ``repr/*`` and ``emb/*`` of a training batch;
            ``None`` follows the Trainer's ``log_every_n_steps``.
        dead_threshold: standard deviation under which a dimension counts as dead.
        feature_dim: width of the representation that probes and statistics see (default: the encoder's).
        lr_scaling: ``none``, ``linear`` or ``sqrt``: the optimiser's learning rate is the configured one times
            ``(global batch / reference_batch_size)`` (or its square root), with global batch = per-rank batch x
            ranks x gradient-accumulation steps; the online probe keeps its own rate.
        reference_batch_size: the global batch size that the configured learning rate is meant for.
    """

    #: the objective takes clips (``frames``) as well as images
    accepts_clips: bool = False
    #: the objective needs an encoder with patch tokens (a ViT); contract tests then give it one
    needs_token_encoder: bool = False

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int | None = None,
        weight_decay: float = 1e-6,
        warmup_frac: float = 0.1,
        min_lr_ratio: float = 0.0,
        probe_lr: float | None = None,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        stats_every_n_steps: int | None = None,
        dead_threshold: float = 1e-3,
        feature_dim: int | None = None,
        lr_scaling: str = "none",
        reference_batch_size: int = 256,
    ) -> None:
        if lr_scaling not in LR_SCALING:
            raise ConfigError(f"objective.lr_scaling={lr_scaling!r} is not one of {', '.join(LR_SCALING)}")
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "optimizer"])
        self.encoder = encoder
        self.optimizer_factory = optimizer
        self.feature_dim = int(feature_dim or encoder.num_features)
        self.num_classes = num_classes
        self.probe = nn.Linear(self.feature_dim, num_classes) if num_classes else None
        if num_classes:
            self.val_probe_acc = MulticlassAccuracy(num_classes, average="micro")
            self.val_knn_acc = KNNAccuracy(num_classes, knn_k, knn_temperature)
        self.val_repr_stats = EmbeddingStats(self.feature_dim, dead_threshold)

    # -- hooks --------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Features ``(B, feature_dim)``: the representation that probes, kNN and ``jepa eval`` use."""
        if x.dim() == 5 and not self.accepts_clips:
            raise ConfigError(f"{type(self).__name__} takes images, got clips {tuple(x.shape)}: use an image DataModule")
        return self.encoder(x)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record which objective wrote the checkpoint, so that resuming with another one is refused."""
        from jepa_platform.checkpoints import RECORD_KEY, class_path

        checkpoint[RECORD_KEY] = {"objective": class_path(self)}

    def export_encoder(self) -> nn.Module:
        """The encoder that ``jepa export`` writes for downstream use (the online encoder by default)."""
        return self.encoder

    def train_collate(self, inner: Callable[[list[Any]], dict]) -> Callable[[list[Any]], dict]:
        """The DataModule's training collate, wrapped with what this objective samples per batch in the DataLoader
        workers (masks); ``jepa train`` installs it. Default: unchanged."""
        return inner

    def configure_model(self) -> None:
        """Shard encoders per block and heads with FSDP2 under ``trainer=fsdp`` (:mod:`jepa_platform.parallel`);
        nothing under other strategies."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, FSDP2Strategy):
            shard_objective(self, strategy.shard_mesh, strategy.reshard_after_forward, strategy.mp_policy)
        elif self.device_mesh is not None:  # a plain ModelParallelStrategy: shard over its data-parallel dimension
            shard_objective(self, self.device_mesh["data_parallel"])

    # -- shared logging -----------------------------------------------------------------------------------------
    def log_loss(self, out: LossOutput, energy: Tensor | None, batch_size: int) -> None:
        """``train/loss``, ``train/loss/<term>`` and ``train/energy`` (averaged over ranks). The step's loss stays on
        ``last_loss`` for callbacks that inspect it (the non-finite guard)."""
        self.last_loss = out
        self.log("train/loss", out.total, prog_bar=True, batch_size=batch_size, sync_dist=True)
        for name, value in out.terms.items():
            self.log(f"train/loss/{name}", value, batch_size=batch_size, sync_dist=True)
        if energy is not None:
            self.log("train/energy", energy, batch_size=batch_size, sync_dist=True)

    def probe_loss(self, batch: Mapping[str, Any], features: Tensor) -> Tensor | None:
        """Cross-entropy of the online probe on detached features (``None`` without labels or probe)."""
        if self.probe is None or "label" not in batch:
            return None
        loss = F.cross_entropy(self.probe(features.detach()), batch["label"])
        self.log("train/probe_loss", loss, batch_size=features.shape[0])
        return loss

    def stats_due(self, step: int | None = None) -> bool:
        """Whether the training statistics are logged at optimiser step ``step`` (default: the current one)."""
        every = self.hparams.stats_every_n_steps or (self._trainer.log_every_n_steps if self._trainer is not None else 0)
        return bool(every) and (self.global_step if step is None else step) % every == 0

    def log_stats(self, groups: Mapping[str, Tensor], batch_size: int) -> None:
        """``<where>/<stat>`` for each ``{where: embeddings}`` (e.g. ``repr``, ``emb``), when statistics are due."""
        if self.stats_due():
            for where, z in groups.items():
                for name, value in embedding_stats(z.detach(), self.hparams.dead_threshold).items():
                    self.log(f"{where}/{name}", value, batch_size=batch_size)

    # -- validation ---------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = VAL_LOADER) -> None:
        self.update_val_metrics(self(model_input(batch)), batch.get("label"), dataloader_idx)

    def update_val_metrics(self, feats: Tensor, labels: Tensor | None, dataloader_idx: int = VAL_LOADER) -> None:
        """Representation statistics, probe and kNN accuracy of one validation (or kNN-bank) batch's features."""
        if dataloader_idx == BANK_LOADER:
            if self.num_classes:
                self.val_knn_acc.update(feats, labels, bank=True)
            return
        self.val_repr_stats.update(feats)
        if self.num_classes and labels is not None:
            self.val_probe_acc.update(self.probe(feats), labels)
            self.val_knn_acc.update(feats, labels, bank=False)

    def on_validation_epoch_end(self) -> None:
        metrics = [self.val_repr_stats] + ([self.val_probe_acc, self.val_knn_acc] if self.num_classes else [])
        if not self.trainer.sanity_checking:
            if self.val_repr_stats.n > 1 or self.trainer.world_size > 1:
                for name, value in self.val_repr_stats.compute().items():
                    self.log(f"val/repr/{name}", value)
            if self.num_classes:
                self.log("val/probe_acc", self.val_probe_acc.compute())
                self.log("val/knn_acc", self.val_knn_acc.compute())
        for metric in metrics:
            metric.reset()

    # -- optimisation -------------------------------------------------------------------------------------------
    def global_batch_size(self) -> int | None:
        """Samples per optimiser step over all ranks (``None`` when the per-rank batch size is unknown)."""
        per_rank = _per_rank_batch_size(self.trainer)
        return per_rank * self.trainer.world_size * self.trainer.accumulate_grad_batches if per_rank else None

    def lr_factor(self) -> float:
        """The learning-rate scaling factor of ``lr_scaling`` for this run's global batch size (1 for ``none``)."""
        rule = self.hparams.lr_scaling
        if rule == "none":
            return 1.0
        global_batch = self.global_batch_size()
        if global_batch is None:
            raise ConfigError(f"objective.lr_scaling={rule} needs the batch size: use a DataModule with a batch_size attribute, or lr_scaling=none")
        factor = lr_scale(rule, global_batch, self.hparams.reference_batch_size)
        if self.trainer.is_global_zero:
            log.info("lr scaling %s: global batch %d / reference %d -> lr x %.4g", rule, global_batch, self.hparams.reference_batch_size, factor)
        return factor

    def configure_optimizers(self) -> dict:
        # Every trainable module (encoder, projector, a subclass's predictor...) except the probe, which gets its own
        # group; frozen parameters (an EMA target) are skipped by param_groups.
        trained = nn.ModuleList([m for name, m in self.named_children() if name != "probe"])
        groups = param_groups(trained, self.hparams.weight_decay)
        scaled = len(groups)  # lr_scaling applies to these groups, not to the probe's
        if self.probe is not None:
            probe_group: dict = {"params": list(self.probe.parameters()), "weight_decay": 0.0}
            if self.hparams.probe_lr is not None:
                probe_group["lr"] = self.hparams.probe_lr
            groups.append(probe_group)
        optimizer = self.optimizer_factory(groups)
        factor = self.lr_factor()
        for group in optimizer.param_groups[:scaled]:
            group["lr"] *= factor
        total = int(self.trainer.estimated_stepping_batches)
        schedule = warmup_cosine(total, int(self.hparams.warmup_frac * total), self.hparams.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"}}


def _per_rank_batch_size(trainer: L.Trainer) -> int | None:
    datamodule = getattr(trainer, "datamodule", None)
    size = getattr(datamodule, "batch_size", None)
    if size is None:
        loader = getattr(trainer.fit_loop, "_combined_loader", None)
        flat = loader.flattened if loader is not None else []
        size = getattr(flat[0], "batch_size", None) if flat else None
    return int(size) if size else None


class JointEmbeddingObjective(SelfSupervisedObjective):
    """Base class: encoder -> projector per view -> ``compute_loss``; probe, kNN and statistics on the side.

    Args:
        encoder, optimizer: see :class:`SelfSupervisedObjective` (which also takes its remaining keyword arguments).
        projector_dims: widths of the projector MLP; empty for none.
        projector_norm: normalisation of the projector's hidden layers: ``batch``, ``layer`` or ``none``.
    """

    #: the loss term logged as ``train/energy`` (override :meth:`energy` for anything else)
    energy_term: str = ""
    #: views per training sample that the objective accepts (``None``: any number >= 2)
    num_views: int | None = 2

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        projector_dims: Sequence[int] = (2048, 2048, 2048),
        projector_norm: str = "batch",
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder, optimizer, **kwargs)
        self.projector = make_projector(self.feature_dim, list(projector_dims), projector_norm)
        self.embed_dim = int(projector_dims[-1]) if projector_dims else self.feature_dim

    # -- to implement -------------------------------------------------------------------------------------------
    def compute_loss(self, embeddings: list[Tensor], representations: list[Tensor]) -> LossOutput:
        """Loss of one batch from the projected embeddings (and encoder features) of each view."""
        raise NotImplementedError

    def energy(self, loss: LossOutput, embeddings: list[Tensor]) -> Tensor | None:
        """``train/energy``: the prediction error on observed pairs; by default the term named ``energy_term``."""
        return loss.terms[self.energy_term] if self.energy_term else None

    def loss_space(self, z: Tensor) -> Tensor:
        """The embeddings as the loss sees them, for the ``emb/*`` statistics (e.g. normalised or standardised)."""
        return z

    def gather(self, x: Tensor) -> Tensor:
        """``x`` from every rank, concatenated along dim 0, with gradients (the identity on one process)."""
        return gather_with_grad(x)

    # -- training -----------------------------------------------------------------------------------------------
    def shared_step(self, views: Sequence[Tensor]) -> StepOutput:
        """Encoder, projector and loss for a list of views (no logging, no probe)."""
        if self.num_views is not None and len(views) != self.num_views:
            raise ConfigError(f"{type(self).__name__} takes {self.num_views} views per sample, got {len(views)}: set data.num_views={self.num_views}")
        if len(views) < 2:
            raise ConfigError(f"{type(self).__name__} needs at least 2 views per sample, got {len(views)}: set data.num_views=2 or more")
        reps = [self.encoder(v) for v in views]
        embs = [self.projector(r) for r in reps]
        return StepOutput(self.compute_loss(embs, reps), reps, embs)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if "views" not in batch:
            raise ConfigError(
                f"{type(self).__name__} trains on multi-view image batches, got keys {', '.join(batch)}: use data=shapes or data=images"
            )
        views: list[Tensor] = batch["views"]
        step = self.shared_step(views)
        out, reps, embs = step.loss, step.representations, step.embeddings
        bs = views[0].shape[0]
        # Gathered terms are equal on every rank; local ones (InfoNCE anchors, invariance) are averaged here.
        self.log_loss(out, self.energy(out, embs), bs)
        total = out.total
        probe_loss = self.probe_loss(batch, reps[0])
        if probe_loss is not None:
            total = total + probe_loss
        self.log_stats({"repr": reps[0], "emb": self.loss_space(embs[0].detach())}, bs)
        return total
