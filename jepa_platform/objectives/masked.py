"""Shared machinery of the masked-prediction JEPAs (``ema_jepa``, ``h_jepa``): a ViT context encoder that sees only
visible tokens, its EMA copy as target encoder, masks sampled in DataLoader workers, optional regularisers.

The target encoder is a deep copy of the online encoder with ``requires_grad=False``; it never enters the
optimiser and moves only through :meth:`MaskedJEPA.update_target`, which the :class:`EMATargetUpdate` callback
(returned by :meth:`configure_callbacks`, so it is always present) calls after every optimiser step. Both are
ordinary submodules, so checkpoints hold the target and resume restores it.

Masks: :meth:`train_collate` wraps the DataModule's collate with a :class:`MaskCollate` over this objective's
:class:`MaskPlan` s, so masks are drawn in the workers. A batch without masks (a custom DataModule that drops the
hook) gets them drawn in the training step instead, with a warning; validation draws them from a generator
seeded by the batch index, so validation energies compare across epochs.

Surprise (``jepa surprise``): :meth:`MaskedJEPA.future_errors` masks every token after the first ``context`` frames of
a window and scores the predictor's error on each of the following frames, as V-JEPA's intuitive-physics evaluation
does; subclasses say how they predict those tokens (:meth:`MaskedJEPA.predict_future_tokens`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from jepa_platform.callbacks.ema import EMATargetUpdate, ema_update
from jepa_platform.distributed import gather_with_grad
from jepa_platform.errors import ConfigError
from jepa_platform.losses.functional import PREDICTION_LOSSES, prediction_error_per_token
from jepa_platform.losses.regularisers import Regulariser
from jepa_platform.masking.collate import MaskCollate, MaskPlan, sample_masks, token_grid
from jepa_platform.masking.samplers import Grid, Masks, future_masks
from jepa_platform.objectives.base import SelfSupervisedObjective
from jepa_platform.optim import OptimizerFactory

EVAL_ENCODERS = ("target", "context")


class MaskedJEPA(SelfSupervisedObjective):
    """Base of the masked-prediction JEPAs (see module docstring).

    Args:
        encoder: a ViT :class:`~jepa_platform.encoders.TimmEncoder` (patch tokens); the context encoder.
        optimizer: partial optimiser.
        loss: prediction distance: ``smooth_l1`` (I-JEPA), ``l2`` or ``l1`` (V-JEPA).
        momentum_start, momentum_end: EMA momentum schedule of the target encoder over the run.
        eval_encoder: representation for probes, kNN and ``jepa eval``: ``target`` (I-JEPA evaluates its target
            encoder) or ``context``.
        regulariser: optional anti-collapse terms (VICReg variance / covariance, SIGReg) on the pooled context
            features, gathered over ranks (:class:`~jepa_platform.losses.regularisers.Regulariser`); ``None``: none.
        target_view: the view of an image batch that the target encoder sees: 0, the context's own view (I-JEPA),
            or another view of the same image that shares its geometry (``data.shared_transform``) and differs
            in colour, as the target view of MSN (Assran et al. 2022): the predicted targets then carry what the
            colour augmentations leave unchanged instead of the colours themselves.
        **kwargs: :class:`SelfSupervisedObjective` arguments (num_classes, weight_decay, warmup...).
    """

    accepts_clips = True
    needs_token_encoder = True

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        loss: str,
        momentum_start: float,
        momentum_end: float,
        eval_encoder: str,
        regulariser: Regulariser | None,
        target_view: int,
        **kwargs: Any,
    ) -> None:
        if not getattr(encoder, "is_vit", False):
            name = getattr(encoder, "name", type(encoder).__name__)
            raise ConfigError(
                f"{type(self).__name__} needs a ViT encoder with patch tokens, got '{name}': add encoder=vit_tiny "
                "(or encoder=timm encoder.name=vit_small_patch16_224 encoder.model_kwargs.img_size=...)"
            )
        if "projector_dims" in kwargs:
            raise ConfigError(
                f"{type(self).__name__} has no projector: drop objective.projector_dims (for a quick run use debug=fast_vit, not debug=fast)"
            )
        if loss not in PREDICTION_LOSSES:
            raise ConfigError(f"objective.loss={loss!r} is not one of {', '.join(PREDICTION_LOSSES)}")
        if eval_encoder not in EVAL_ENCODERS:
            raise ConfigError(f"objective.eval_encoder={eval_encoder!r} is not one of {', '.join(EVAL_ENCODERS)}")
        if target_view < 0:
            raise ConfigError(f"objective.target_view={target_view} must be 0 (the context's view) or the index of another view")
        super().__init__(encoder, optimizer, **kwargs)
        EMATargetUpdate(momentum_start, momentum_end)  # validate the schedule now
        # Masked prediction trains the tokens, not timm's pooling head (fc_norm, attention pool): freeze it, so that
        # it stays what it was initialised to instead of being left out of the gradient silently.
        for name in ("fc_norm", "attn_pool"):
            head = getattr(encoder.model, name, None)
            if isinstance(head, nn.Module):
                head.requires_grad_(False)
        self.target = copy.deepcopy(encoder).requires_grad_(False)
        self.regulariser = regulariser
        self.patch_size = tuple(encoder.patch_size)
        self._warned_masks = False

    # -- target encoder -------------------------------------------------------------------------------------------
    def online_modules(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(target, online)`` pairs that the EMA update moves; subclasses with more levels extend it."""
        return [(self.target, self.encoder)]

    def update_target(self, momentum: float) -> None:
        ema_update(self.online_modules(), momentum)

    def configure_callbacks(self) -> list:
        return [EMATargetUpdate(self.hparams.momentum_start, self.hparams.momentum_end)]

    def train(self, mode: bool = True) -> MaskedJEPA:
        super().train(mode)
        for target, _ in self.online_modules():
            target.eval()  # no dropout / drop-path in the targets
        return self

    # -- masks ----------------------------------------------------------------------------------------------------
    def mask_plans(self) -> dict[str, MaskPlan]:
        raise NotImplementedError

    def train_collate(self, inner: Callable[[list[Any]], dict]) -> Callable[[list[Any]], dict]:
        return MaskCollate(self.mask_plans(), self.patch_size, inner)

    def target_input(self, batch: Mapping[str, Any], x: Tensor) -> Tensor:
        """What the target encoder sees: ``x`` (the context's input), or view ``target_view`` of an image batch."""
        view = self.hparams.target_view
        if not view:
            return x
        views = batch.get("views") or []
        if view >= len(views):
            raise ConfigError(
                f"objective.target_view={view} needs image batches with at least {view + 1} views (this one has {len(views)}; clips have "
                "none): set data.num_views, with a data.shared_transform so that the views are pixel-aligned"
            )
        return views[view]

    def grid(self, x: Tensor) -> Grid:
        return token_grid(x, self.patch_size)

    def batch_masks(self, batch: Mapping[str, Any], x: Tensor, seed: int | None = None) -> dict[str, Masks]:
        """The batch's masks (from the workers), else drawn here (seeded by ``seed`` if given, else by the batch's
        ``batch_seed`` when its views were made on the device)."""
        found = batch.get("masks")
        if found is None:
            seed = seed if seed is not None else batch.get("batch_seed")
            if seed is None and not self._warned_masks:
                warnings.warn(
                    "batch has no masks: drawing them in the training step (install objective.train_collate as the data collate)", stacklevel=2
                )
                self._warned_masks = True
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            found = sample_masks(self.mask_plans(), self.grid(x), x.shape[0], generator)
        return {name: Masks(m["context"].to(x.device), m["targets"].to(x.device)) for name, m in found.items()}

    # -- representation -------------------------------------------------------------------------------------------
    @property
    def eval_module(self) -> nn.Module:
        return self.target if self.hparams.eval_encoder == "target" else self.encoder

    def export_encoder(self) -> nn.Module:
        """The evaluation encoder (the EMA target by default), as I-JEPA releases its target encoder."""
        return self.eval_module

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features ``(B, D)`` of images or clips from the evaluation encoder (target by default)."""
        return self.eval_module(x)

    # -- surprise ---------------------------------------------------------------------------------------------------
    def surprise_window(self) -> tuple[int | None, int]:
        """``(context, horizon)`` frames of the windows that surprise is scored on; ``None``: the clip length the run
        trained on minus the horizon."""
        return None, 1

    def predict_future_tokens(self, frames: Tensor, masks: Masks) -> tuple[Tensor, Tensor]:
        """Predictions and targets ``(B, 1, Nt, D)`` of the target tokens of ``masks`` (subclasses)."""
        raise NotImplementedError

    @torch.no_grad()
    def future_errors(self, frames: Tensor, context: int) -> Tensor:
        """Prediction error ``(B, L - context)`` of each frame after the first ``context`` of windows
        ``(B, L, C, H, W)``: the tokens of those frames are masked and predicted from the context frames' tokens."""
        grid = self.grid(frames)
        masks = future_masks(frames.shape[0], grid, context, frames.device)
        predictions, targets = self.predict_future_tokens(frames, masks)
        errors = prediction_error_per_token(predictions, targets, self.hparams.loss)[:, 0]  # (B, Nt)
        return errors.unflatten(1, (grid[0] - context, -1)).mean(dim=-1)

    # -- optional regularisers ------------------------------------------------------------------------------------
    def regularisers(self, pooled: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Unweighted terms and their weighted sum on pooled context features ``(B, D)``, over the global batch."""
        if self.regulariser is None or not self.regulariser.active:
            return {}, pooled.new_zeros(())
        return self.regulariser(gather_with_grad(pooled), self.global_step)
