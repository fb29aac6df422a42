"""Shared plumbing for joint-embedding objectives.

A subclass only says how embeddings of the views become a loss (``compute_loss``) and which term is its energy;
this base class runs the encoder and projector over the views, logs the loss terms and embedding statistics under
the names every objective shares, trains an online linear probe on detached features, measures kNN accuracy,
and builds the optimiser and its warmup + cosine schedule.

Distributed training: ``compute_loss`` sees this rank's embeddings. A term that needs the global batch gathers
them with :meth:`gather` (an all-gather that keeps gradients; see :mod:`jepa_platform.distributed`) and computes
the same value on every rank; a term that is a mean over samples may stay local. DDP's gradient average then
makes one step on W ranks equal one step on the concatenated batch (tested for every registered objective).

Batches: training ``{"views": [Tensor(B, C, H, W)] * V, "label": Tensor(B)}`` (label optional); validation
``{"image": Tensor(B, C, H, W), "label": Tensor(B)}`` from loader 0 (queries) and loader 1 (the kNN bank).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.classification import MulticlassAccuracy

from jepa_platform.distributed import gather_with_grad
from jepa_platform.encoders.heads import projector as make_projector
from jepa_platform.errors import ConfigError
from jepa_platform.losses.functional import LossOutput
from jepa_platform.metrics.embedding import EmbeddingStats, embedding_stats
from jepa_platform.metrics.knn import KNNAccuracy
from jepa_platform.optim import OptimizerFactory, param_groups, warmup_cosine

VAL_LOADER, BANK_LOADER = 0, 1


@dataclass
class StepOutput:
    """One training step's loss with the encoder features and projected embeddings of each view."""

    loss: LossOutput
    representations: list[Tensor]
    embeddings: list[Tensor]


class JointEmbeddingObjective(L.LightningModule):
    """Base class: encoder -> projector per view -> ``compute_loss``; probe, kNN and statistics on the side.

    Args:
        encoder: backbone with a ``num_features`` attribute, mapping images to ``(B, D)`` features.
        optimizer: partial optimiser, called with parameter groups (e.g. ``timm.optim.Lars`` or ``AdamW``).
        projector_dims: widths of the projector MLP; empty for none.
        projector_norm: normalisation of the projector's hidden layers: ``batch``, ``layer`` or ``none``.
        num_classes: classes of the labelled data, for the online probe and kNN; ``None`` disables both.
        weight_decay: decay of weight matrices (biases and norm parameters get none).
        warmup_frac: fraction of all optimiser steps spent in linear warmup.
        min_lr_ratio: final LR of the cosine schedule, relative to the peak.
        probe_lr: LR of the online probe; ``None`` uses the optimiser's.
        knn_k, knn_temperature: neighbours and temperature of the weighted kNN vote.
        stats_every_n_steps: how often (optimiser steps) to log ``repr/*`` and ``emb/*`` of a training batch;
            ``None`` follows the Trainer's ``log_every_n_steps``.
        dead_threshold: standard deviation under which a dimension counts as dead.
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
        num_classes: int | None = None,
        weight_decay: float = 1e-6,
        warmup_frac: float = 0.1,
        min_lr_ratio: float = 0.0,
        probe_lr: float | None = None,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        stats_every_n_steps: int | None = None,
        dead_threshold: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "optimizer"])
        self.encoder = encoder
        self.optimizer_factory = optimizer
        feat_dim = int(encoder.num_features)
        self.projector = make_projector(feat_dim, list(projector_dims), projector_norm)
        self.embed_dim = int(projector_dims[-1]) if projector_dims else feat_dim
        self.num_classes = num_classes
        self.probe = nn.Linear(feat_dim, num_classes) if num_classes else None
        if num_classes:
            self.val_probe_acc = MulticlassAccuracy(num_classes, average="micro")
            self.val_knn_acc = KNNAccuracy(num_classes, knn_k, knn_temperature)
        self.val_repr_stats = EmbeddingStats(feat_dim, dead_threshold)

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
    def forward(self, x: Tensor) -> Tensor:
        """Encoder features ``(B, D)``: the representation that evaluation uses."""
        return self.encoder(x)

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
        views: list[Tensor] = batch["views"]
        step = self.shared_step(views)
        out, reps, embs = step.loss, step.representations, step.embeddings
        bs = views[0].shape[0]
        # Gathered terms are equal on every rank; local ones (InfoNCE anchors, invariance) are averaged here.
        self.log("train/loss", out.total, prog_bar=True, batch_size=bs, sync_dist=True)
        for name, value in out.terms.items():
            self.log(f"train/loss/{name}", value, batch_size=bs, sync_dist=True)
        energy = self.energy(out, embs)
        if energy is not None:
            self.log("train/energy", energy, batch_size=bs, sync_dist=True)
        total = out.total
        if self.probe is not None and "label" in batch:
            probe_loss = F.cross_entropy(self.probe(reps[0].detach()), batch["label"])
            self.log("train/probe_loss", probe_loss, batch_size=bs)
            total = total + probe_loss
        every = self.hparams.stats_every_n_steps or (self._trainer.log_every_n_steps if self._trainer is not None else 0)
        if every and self.global_step % every == 0:
            for where, z in (("repr", reps[0]), ("emb", self.loss_space(embs[0].detach()))):
                for name, value in embedding_stats(z, self.hparams.dead_threshold).items():
                    self.log(f"{where}/{name}", value, batch_size=bs)
        return total

    # -- validation ---------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = VAL_LOADER) -> None:
        feats = self.encoder(batch["image"])
        labels = batch.get("label")
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
    def configure_optimizers(self) -> dict:
        # Every trainable module (encoder, projector, a subclass's predictor...) except the probe, which gets its own group.
        trained = nn.ModuleList([m for name, m in self.named_children() if name != "probe"])
        groups = param_groups(trained, self.hparams.weight_decay)
        if self.probe is not None:
            probe_group: dict = {"params": list(self.probe.parameters()), "weight_decay": 0.0}
            if self.hparams.probe_lr is not None:
                probe_group["lr"] = self.hparams.probe_lr
            groups.append(probe_group)
        optimizer = self.optimizer_factory(groups)
        total = int(self.trainer.estimated_stepping_batches)
        schedule = warmup_cosine(total, int(self.hparams.warmup_frac * total), self.hparams.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"}}
