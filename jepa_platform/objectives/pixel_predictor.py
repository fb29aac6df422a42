"""The pixel-space control of the video JEPAs: ``ema_jepa``'s context encoder, predictor and masks, predicting the
masked patches' *pixels* instead of a target encoder's representation of them (a VideoMAE-style masked video model;
with future masks, a next-frame pixel predictor).

It exists to be compared with ``ema_jepa`` at the same size on the same clips: with everything else equal, does
predicting in representation space make the difference (e.g. in surprise at impossible events, ``jepa surprise``)?
There is no target encoder and no EMA; probes and ``jepa eval`` read the context encoder.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from jepa_platform.encoders.predictor import MaskedPredictor
from jepa_platform.losses.functional import LossOutput, masked_prediction, masked_prediction_per_sample
from jepa_platform.masking.collate import model_input
from jepa_platform.masking.samplers import Masks, gather_tokens
from jepa_platform.objectives.ema_jepa import EMAJEPA
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective


def patchify(x: Tensor, patch: tuple[int, int]) -> Tensor:
    """Images ``(B, C, H, W)`` or clips ``(B, T, C, H, W)`` -> patches ``(B, T*h*w, C*ph*pw)`` in the token order of
    :class:`~jepa_platform.encoders.TimmEncoder` (frame, row, column)."""
    if x.dim() == 4:
        x = x.unsqueeze(1)
    b, t, c, h, w = x.shape
    ph, pw = patch
    x = x.reshape(b, t, c, h // ph, ph, w // pw, pw).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(b, t * (h // ph) * (w // pw), c * ph * pw)


@register_objective("pixel_predictor")
class PixelPredictor(EMAJEPA):
    """Masked / future prediction in pixel space with ``ema_jepa``'s architecture (see module docstring).

    Args:
        encoder, optimizer, predictor_*, masks: as :class:`~jepa_platform.objectives.EMAJEPA`.
        loss: distance between predicted and true pixels (default ``l2``, the mean squared error).
        normalise_patches: regress each patch's pixels normalised by its own mean and variance (MAE's ``norm_pix``)
            instead of the frames' pixels.
        **kwargs: :class:`~jepa_platform.objectives.EMAJEPA` arguments (the EMA ones are unused).
    """

    def __init__(self, encoder: nn.Module, optimizer: OptimizerFactory, loss: str, normalise_patches: bool, **kwargs: Any) -> None:
        kwargs["eval_encoder"] = "context"
        super().__init__(encoder, optimizer, loss=loss, **kwargs)
        self.target = None  # no target encoder: the targets are pixels
        hp = self.hparams
        channels = int(encoder.model.patch_embed.proj.in_channels)
        pixels = channels * self.patch_size[0] * self.patch_size[1]
        self.predictor = MaskedPredictor(int(encoder.num_features), hp.predictor_dim, hp.predictor_depth, hp.predictor_heads, out_dim=pixels)

    def online_modules(self) -> list[tuple[nn.Module, nn.Module]]:
        return []

    def pixel_targets(self, x: Tensor, index: Tensor) -> Tensor:
        patches = patchify(x, self.patch_size)
        if self.hparams.normalise_patches:
            patches = F.layer_norm(patches, patches.shape[-1:], eps=1e-6)
        return gather_tokens(patches, index)

    def _predict(self, frames: Tensor, masks: Masks) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted and target pixels of the target patches, and the context tokens."""
        context = self.encoder.patch_features(self.encoder.encode_tokens(self.encoder.embed_tokens(frames), masks.context))
        return self.predictor(context, masks.context, masks.targets, self.grid(frames)), self.pixel_targets(frames, masks.targets), context

    def predict_future_tokens(self, frames: Tensor, masks: Masks) -> tuple[Tensor, Tensor]:
        return self._predict(frames, masks)[:2]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        x = model_input(batch)
        masks = self.batch_masks(batch, x)["jepa"]
        predictions, targets, context = self._predict(x, masks)
        prediction = masked_prediction(predictions, targets, self.hparams.loss)
        features = context.detach().mean(dim=1)
        out = LossOutput(prediction, {"prediction": prediction})
        self.log_loss(out, prediction, x.shape[0])
        per_sample = masked_prediction_per_sample(predictions.detach(), targets, self.hparams.loss)
        self.expose({"features": features}, {"repr": features, "emb": targets.flatten(0, -2)}, energies={"prediction": per_sample})
        return out.total
