"""EMA-JEPA: I-JEPA (Assran et al., CVPR 2023) on images and its V-JEPA form (Bardes et al. 2024) on clips.

From one image, the context encoder (a timm ViT) encodes only the visible context tokens; a narrow transformer
predictor, given the context and mask tokens at the target positions, predicts the target encoder's layer-
normalised representations of each target block. The target encoder is an EMA copy of the context encoder that
sees the whole image and gets no gradient. On clips the same happens with tube masks (V-JEPA): blocks extend
through every frame, and the encoder attends over all frames' tokens.

With ``future_mask`` (``{probability, horizon, min_context_frames}``), a share of the clip batches predicts the
next ``horizon`` frames from the frames before a cut instead of tubes: the predictor then learns what comes next,
which is what surprise on impossible events measures (``jepa surprise``).

``train/energy`` is the prediction loss (``train/loss/prediction``). ``repr/*`` are statistics of the target
encoder's pooled features (the representation that is evaluated), ``emb/*`` of the layer-normalised target
tokens the loss sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from jepa_platform.encoders.predictor import MaskedPredictor
from jepa_platform.errors import ConfigError
from jepa_platform.losses.functional import LossOutput, masked_prediction, masked_prediction_per_sample, normalised_targets
from jepa_platform.masking.collate import MaskPlan, model_input
from jepa_platform.masking.samplers import FutureMaskSampler, Masks, MaskSampler, MixtureMaskSampler, MultiBlockMaskSampler, gather_tokens
from jepa_platform.objectives.masked import MaskedJEPA
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective

#: V-JEPA's short-range tube masks: 8 blocks of 15% through every frame, context = the rest
CLIP_MASK = {"num_targets": 8, "target_scale": (0.15, 0.15), "target_aspect": (0.75, 1.5), "context_scale": None, "union_targets": True}


@register_objective("ema_jepa")
class EMAJEPA(MaskedJEPA):
    """I-JEPA / V-JEPA: predict the EMA target encoder's representations of masked blocks from the visible context.

    Args:
        encoder, optimizer: the ViT context encoder and a partial optimiser.
        predictor_dim, predictor_depth, predictor_heads: the narrow transformer predictor.
        num_targets, target_scale, target_aspect, context_scale, context_aspect: image masks
            (:class:`~jepa_platform.masking.MultiBlockMaskSampler`; defaults are I-JEPA's).
        clip_mask: clip (tube) mask arguments; default V-JEPA's short-range masks.
        future_mask: ``{probability, horizon, min_context_frames}``: the share of clip batches that predict the next
            ``horizon`` frames after a cut instead of tubes (default none: tubes only, as V-JEPA).
        **kwargs: :class:`~jepa_platform.objectives.masked.MaskedJEPA` arguments (loss, momentum schedule,
            regularisers, eval encoder) and the common ones (num_classes, weight_decay...).
    """

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        predictor_dim: int,
        predictor_depth: int,
        predictor_heads: int,
        num_targets: int,
        target_scale: Sequence[float],
        target_aspect: Sequence[float],
        context_scale: Sequence[float],
        context_aspect: Sequence[float],
        clip_mask: dict[str, Any] | None,
        future_mask: dict[str, Any] | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder, optimizer, **kwargs)
        dim = int(encoder.num_features)
        self.predictor = MaskedPredictor(dim, predictor_dim, predictor_depth, predictor_heads)
        self.image_masks = MultiBlockMaskSampler(num_targets, target_scale, target_aspect, context_scale, context_aspect)
        self.clip_masks: MaskSampler = MultiBlockMaskSampler(**{**CLIP_MASK, **(clip_mask or {})})
        self.future_horizon = 1
        if future_mask:
            spec = dict(future_mask)
            probability = float(spec.pop("probability", 0.5))
            if not 0 <= probability <= 1:
                raise ConfigError(f"objective.future_mask.probability={probability} must be in [0, 1]")
            try:
                future = FutureMaskSampler(**spec)
            except TypeError as exc:
                raise ConfigError(f"objective.future_mask: {exc}: the keys are probability, horizon, min_context_frames") from exc
            self.future_horizon = future.horizon
            self.clip_masks = MixtureMaskSampler([self.clip_masks, future], [1 - probability, probability])

    def mask_plans(self) -> dict[str, MaskPlan]:
        return {"jepa": MaskPlan(self.image_masks, self.clip_masks)}

    def surprise_window(self) -> tuple[int | None, int]:
        return None, self.future_horizon

    def predict_future_tokens(self, frames: Tensor, masks: Masks) -> tuple[Tensor, Tensor]:
        """The predictor's guess of the target tokens from the context tokens (context encoder), and the target
        encoder's layer-normalised tokens there, having seen the whole window (as in training)."""
        targets = gather_tokens(
            normalised_targets(self.target.patch_features(self.target.encode_tokens(self.target.embed_tokens(frames)))), masks.targets
        )
        context = self.encoder.patch_features(self.encoder.encode_tokens(self.encoder.embed_tokens(frames), masks.context))
        return self.predictor(context, masks.context, masks.targets, self.grid(frames)), targets

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        x = model_input(batch)
        masks = self.batch_masks(batch, x)["jepa"]
        grid = self.grid(x)
        with torch.no_grad():
            encoded = self.target.encode_tokens(self.target.embed_tokens(self.target_input(batch, x)))
            features = self.target.pool_tokens(encoded)
            targets = gather_tokens(normalised_targets(self.target.patch_features(encoded)), masks.targets)
        context = self.encoder.patch_features(self.encoder.encode_tokens(self.encoder.embed_tokens(x), masks.context))
        predictions = self.predictor(context, masks.context, masks.targets, grid)
        prediction = masked_prediction(predictions, targets, self.hparams.loss)
        terms, regularisation = self.regularisers(context.mean(dim=1))
        out = LossOutput(prediction + regularisation, {"prediction": prediction, **terms})
        bs = x.shape[0]
        self.log_loss(out, prediction, bs)
        per_sample = masked_prediction_per_sample(predictions.detach(), targets, self.hparams.loss)
        self.expose({"features": features}, {"repr": features, "emb": targets.flatten(0, -2)}, energies={"prediction": per_sample})
        return out.total
