"""Shared plumbing for objectives.

:class:`Objective` holds what every objective shares, world models included: the encoder, logging of loss terms
under the names of DESIGN.md, the features it exposes to evaluation callbacks, and the optimiser with its warmup +
cosine schedule. Parameters with ``requires_grad=False`` (an EMA target encoder) are left out of the optimiser.
:class:`SelfSupervisedObjective` adds the validation step of representation learners (features of validation
images for the online probe, kNN and statistics callbacks of :mod:`jepa_platform.callbacks.evaluation`).

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
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from jepa_platform.callbacks.cadence import logs_this_step, skip_unused_step_hooks
from jepa_platform.callbacks.evaluation import BANK_LOADER, VAL_LOADER, Lazy
from jepa_platform.distributed import gather_with_grad
from jepa_platform.encoders.heads import projector as make_projector
from jepa_platform.errors import ConfigError
from jepa_platform.losses.functional import LossOutput
from jepa_platform.masking.collate import model_input
from jepa_platform.optim import LR_SCALING, OptimizerFactory, lr_scale, param_groups, warmup_cosine
from jepa_platform.parallel import FSDP2Strategy, shard_objective

log = logging.getLogger(__name__)
__all__ = ["BANK_LOADER", "VAL_LOADER", "JointEmbeddingObjective", "Objective", "SelfSupervisedObjective", "StepOutput"]


Exposed = Tensor | Lazy


def _detached(value: Exposed) -> Exposed:
    return value if isinstance(value, Lazy) else value.detach()


@dataclass
class StepOutput:
    """One training step's loss with the encoder features and projected embeddings of each view."""

    loss: LossOutput
    representations: list[Tensor]
    embeddings: list[Tensor]


def _is_part(value: Any) -> bool:
    """A module or builder passed in (or a mapping or list of them), as opposed to a plain setting."""
    if isinstance(value, Mapping):
        return any(_is_part(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_is_part(v) for v in value)
    return isinstance(value, nn.Module) or callable(value)


#: attributes set on the objective during every step that only ever hold plain values (never a parameter, buffer or
#: module): Lightning names the running hook (``_current_fx_name``) around each hook call, about 45 times a step
_PLAIN_STEP_ATTRIBUTES = frozenset({"_current_fx_name", "exposed", "last_loss"})


class Objective(L.LightningModule):
    r"""Base of every objective, self-supervised or world model: encoder, loss logging, the features it exposes to
    evaluation callbacks, FSDP sharding, and the optimiser with its warmup + cosine schedule.

    Evaluation (online probe, kNN, embedding statistics) is not here: it lives in callbacks
    (:mod:`jepa_platform.callbacks.evaluation`) that read what the objective :meth:`expose`\ s.

    Args:
        encoder: backbone with a ``num_features`` attribute, mapping images to ``(B, D)`` features.
        optimizer: partial optimiser, called with parameter groups (e.g. ``timm.optim.Lars`` or ``AdamW``).
        weight_decay: decay of weight matrices (biases and norm parameters get none).
        warmup_frac: fraction of all optimiser steps spent in linear warmup.
        min_lr_ratio: final LR of the cosine schedule, relative to the peak.
        feature_dim: width of the representation that probes and statistics see (default: the encoder's); set by
            subclasses whose representation is not the encoder's output (H-JEPA's concatenated levels), not by configs.
        lr_scaling: ``none``, ``linear`` or ``sqrt``: the optimiser's learning rate is the configured one times
            ``(global batch / reference_batch_size)`` (or its square root), with global batch = per-rank batch x
            ranks x gradient-accumulation steps.
        reference_batch_size: the global batch size that the configured learning rate is meant for.
        batch_size: the per-rank batch size (the config hands it ``data.batch_size``), for ``lr_scaling``.
        compile_encoder: ``torch.compile`` the encoder (in place: checkpoints keep their keys) once the model is
            built (after FSDP sharding); the first steps then pay the compilation.
        compile_loss: ``torch.compile`` the objective's loss (``compute_loss``) as well.
    """

    #: the objective takes clips (``frames``) as well as images
    accepts_clips: bool = False
    #: the objective needs an encoder with patch tokens (a ViT); contract tests then give it one
    needs_token_encoder: bool = False

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        weight_decay: float,
        warmup_frac: float,
        min_lr_ratio: float,
        lr_scaling: str,
        reference_batch_size: int,
        batch_size: int,
        compile_encoder: bool,
        compile_loss: bool,
        feature_dim: int | None = None,
    ) -> None:
        if lr_scaling not in LR_SCALING:
            raise ConfigError(f"objective.lr_scaling={lr_scaling!r} is not one of {', '.join(LR_SCALING)}")
        if compile_loss and not callable(getattr(type(self), "compute_loss", None)):
            raise ConfigError(f"objective.compile_loss=true: {type(self).__name__} has no separate loss (compute_loss): use compile_encoder")
        super().__init__()
        with warnings.catch_warnings():  # parts passed in are taken out just below
            warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module` and is already saved during checkpointing.*")
            self.save_hyperparameters(ignore=["encoder", "optimizer"])
        # parts passed in (a regulariser, a predictor factory) are modules, not hyper-parameters: checkpoints keep
        # their weights, and their settings are in the run's config.yaml
        for store in (self._hparams, self._hparams_initial):
            for key in [k for k, v in store.items() if _is_part(v)]:
                del store[key]
        self.encoder = encoder
        self.optimizer_factory = optimizer
        self.feature_dim = int(feature_dim or encoder.num_features)
        self.exposed: dict[str, dict[str, Any]] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        # Module's own setter first looks for a parameter, buffer or submodule of that name (1.7 us a call here, 0.3 us
        # this way); the per-step attributes skip it, as it would end in object's setter for them anyway
        if name in _PLAIN_STEP_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints written before the online probes moved to callbacks: their probe weights are dropped."""
        from jepa_platform.checkpoints import drop_moved_weights

        if isinstance(checkpoint.get("state_dict"), dict):
            checkpoint["state_dict"] = drop_moved_weights(checkpoint["state_dict"])

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
        self.compile_parts()

    def compile_parts(self) -> None:
        """Apply ``compile_encoder`` / ``compile_loss`` (once; ``configure_model`` runs it, plain loops may call it)."""
        if self.hparams.get("compile_encoder") and not getattr(self.encoder, "_compiled_call_impl", None):
            self.encoder.compile()
        if self.hparams.get("compile_loss") and "compute_loss" not in self.__dict__:
            self.compute_loss = torch.compile(self.compute_loss)

    # -- what evaluation callbacks see --------------------------------------------------------------------------
    def feature_widths(self) -> dict[str, int]:
        """Widths of the feature sets this objective exposes (see :mod:`jepa_platform.callbacks.evaluation`)."""
        return {"features": self.feature_dim}

    def expose(
        self,
        features: Mapping[str, Exposed] | None = None,
        stats: Mapping[str, Exposed] | None = None,
        pairs: Mapping[str, tuple[Exposed, Exposed]] | None = None,
        energies: Mapping[str, Exposed] | None = None,
    ) -> None:
        """Hand this step's detached tensors to the evaluation callbacks, which read them after the step:
        representations (``features``), training embeddings (``stats``), positive pairs of a ``stats`` group
        (``pairs``: two views, for alignment) and per-sample energies ``(B,)`` (``energies``: one entry per level).
        A value only some steps' readers need is better handed as a :class:`~jepa_platform.callbacks.evaluation.Lazy`
        (computed if read)."""
        self.exposed = {
            "features": {k: _detached(v) for k, v in (features or {}).items()},
            "stats": {k: _detached(v) for k, v in (stats or {}).items()},
            "pairs": {k: (_detached(a), _detached(b)) for k, (a, b) in (pairs or {}).items()},
            "energies": {k: _detached(v) for k, v in (energies or {}).items()},
        }

    def on_fit_start(self) -> None:
        # here the list is final (the Trainer's, Lightning's defaults and configure_callbacks'), and every run has it
        skip_unused_step_hooks(self.trainer.callbacks)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.exposed = {}

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.exposed = {}

    # -- shared logging -----------------------------------------------------------------------------------------
    def log_step_values(self, values: dict[str, Tensor], batch_size: int) -> None:
        """Training values averaged over ranks, on the steps that log only: the one way objectives log per step
        (logged on every step, each value costs Lightning's bookkeeping and, under DDP, an all-reduce)."""
        if not logs_this_step(self._trainer):
            return
        for name, value in values.items():
            self.log(name, value, batch_size=batch_size, sync_dist=True)

    def log_loss(self, out: LossOutput, energy: Tensor | None, batch_size: int) -> None:
        """``train/loss``, ``train/loss/<term>`` and ``train/energy`` (averaged over ranks) on the steps that log. The
        step's loss stays on ``last_loss`` for callbacks that inspect it (the non-finite guard)."""
        self.last_loss = out
        # not prog_bar: Lightning reads progress-bar values to the host at every batch's end (ProgressBar shows it)
        values = {"train/loss": out.total, **{f"train/loss/{name}": value for name, value in out.terms.items()}}
        self.log_step_values({**values, **({"train/energy": energy} if energy is not None else {})}, batch_size)

    # -- optimisation -------------------------------------------------------------------------------------------
    def global_batch_size(self) -> int:
        """Samples per optimiser step over all ranks."""
        return self.hparams.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def lr_factor(self) -> float:
        """The learning-rate scaling factor of ``lr_scaling`` for this run's global batch size (1 for ``none``)."""
        rule = self.hparams.lr_scaling
        if rule == "none":
            return 1.0
        global_batch = self.global_batch_size()
        factor = lr_scale(rule, global_batch, self.hparams.reference_batch_size)
        if self.trainer.is_global_zero:
            log.info("lr scaling %s: global batch %d / reference %d -> lr x %.4g", rule, global_batch, self.hparams.reference_batch_size, factor)
        return factor

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimiser over every trainable module (encoder, projector, a subclass's predictor...), with
        weight decay on weight matrices only; frozen parameters (an EMA target) are left out. No LR scaling or
        schedule: :meth:`configure_optimizers` adds those; loops without a Trainer (benchmarks) use this as it is."""
        return self.optimizer_factory(param_groups(nn.ModuleList(self.children()), self.hparams.weight_decay))

    def configure_optimizers(self) -> dict:
        optimizer = self.make_optimizer()
        factor = self.lr_factor()
        for group in optimizer.param_groups:
            group["lr"] *= factor
        total = int(self.trainer.estimated_stepping_batches)
        schedule = warmup_cosine(total, int(self.hparams.warmup_frac * total), self.hparams.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"}}


class SelfSupervisedObjective(Objective):
    """Base of the self-supervised (representation) objectives: validation batches are encoded and their features
    exposed to the evaluation callbacks (probe, kNN, statistics) of :mod:`jepa_platform.callbacks.evaluation`.

    Args: see :class:`Objective`.
    """

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = VAL_LOADER) -> None:
        self.expose({"features": self(model_input(batch))})


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
        projector_dims: Sequence[int],
        projector_norm: str,
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

    def pair_energy(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Per-sample energy ``(B,)`` of two views' embeddings in the loss space (for the energy histogram): the
        mean squared difference over dimensions by default, whose batch mean is the invariance term."""
        return (z1 - z2).float().pow(2).mean(dim=-1)

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
        self.log_loss(out, self.energy(out, embs) if logs_this_step(self._trainer) else None, bs)
        e1, e2 = (e.detach() for e in embs[:2])
        z1, z2 = Lazy(lambda: self.loss_space(e1)), Lazy(lambda: self.loss_space(e2))
        self.expose(
            {"features": reps[0]},
            {"repr": reps[0], "emb": z1},
            pairs={"repr": (reps[0], reps[1]), "emb": (z1, z2)},
            energies={"energy": Lazy(lambda: self.pair_energy(z1.get(), z2.get()))},
        )
        return out.total
