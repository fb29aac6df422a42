"""One adapter over ``timm.create_model``: any timm model by name becomes a feature encoder.

We do not mirror timm's model names: ``name`` is passed through, and ``model_kwargs`` reach the model
constructor (``channels``, ``img_size``, ``patch_size``, ``drop_path_rate``...).
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
from torch import Tensor, nn

from jepa_platform.encoders.pos_embed import sincos_1d
from jepa_platform.errors import ConfigError
from jepa_platform.masking.samplers import gather_tokens
from jepa_platform.registry import register_encoder


def _small_image_stem(model: nn.Module, name: str) -> None:
    """Replace a ResNet-style stem (strided conv + max-pool) by a 3x3 stride-1 conv, for 32px inputs."""
    conv1 = getattr(model, "conv1", None)
    if conv1 is None or not hasattr(model, "maxpool"):
        raise ConfigError(
            f"encoder.small_stem=true needs a ResNet-style model with conv1 and maxpool; '{name}' has neither: "
            "set encoder.small_stem=false (for ViTs pass encoder.model_kwargs.img_size and patch_size instead)"
        )
    if isinstance(conv1, nn.Conv2d):
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, stride=1, padding=1, bias=False)
    else:  # deep stems ('resnet18d'...): keep the layers, drop the first stride
        first = next(m for m in conv1.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    model.maxpool = nn.Identity()


@register_encoder("timm")
class TimmEncoder(nn.Module):
    """Any timm model by name, without classifier (encoder=timm encoder.name=<model>, or a preset in conf/encoder).

    ``forward`` gives pooled features ``(B, D)``, ``forward_tokens`` the token or spatial features ``(B, N, D)``.
    ViTs also encode a subset of their patch tokens (masked prediction: the context encoder sees only the visible
    tokens) and clips ``(B, T, C, H, W)``: each frame is patch-embedded with the ViT's own position embedding, a
    fixed sin-cos embedding of the frame index is added, and the blocks attend over all frames' tokens at once."""

    def __init__(
        self,
        name: str,
        pretrained: bool,
        small_stem: bool,
        in_chans: int,
        model_kwargs: dict[str, Any] | None,
        channels_last: bool,
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"encoder.name='{name}' is not a timm model{hint}: pick one from timm.list_models()")
        self.name = name
        self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **dict(model_kwargs or {}))
        if small_stem:
            _small_image_stem(self.model, name)
        self.num_features: int = self.model.num_features
        # NHWC weights and inputs: convolutions run faster in that layout with cuDNN (tensor cores) and oneDNN
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 5:
            return self.pool_tokens(self.encode_tokens(self.embed_tokens(x)))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    # -- patch tokens (ViTs) ------------------------------------------------------------------------------------
    @property
    def is_vit(self) -> bool:
        return all(hasattr(self.model, a) for a in ("patch_embed", "blocks", "_pos_embed", "norm", "forward_head"))

    def _require_vit(self) -> None:
        if not self.is_vit:
            raise ConfigError(f"encoder '{self.name}' has no patch tokens: use a ViT (e.g. encoder=vit_tiny or encoder.name=vit_small_patch16_224)")

    @property
    def patch_size(self) -> tuple[int, int]:
        """Pixels per patch token (height, width)."""
        self._require_vit()
        return tuple(self.model.patch_embed.patch_size)  # type: ignore[return-value]

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 0))

    def embed_tokens(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` or clips ``(B, T, C, H, W)`` -> prefix tokens then patch tokens ``(B, P + T*N, D)``,
        position-embedded, before the blocks."""
        self._require_vit()
        m, prefix = self.model, self.num_prefix_tokens
        if x.dim() == 4:
            return m._pos_embed(m.patch_embed(x))
        batch, frames = x.shape[:2]
        tokens = m._pos_embed(m.patch_embed(x.flatten(0, 1))).unflatten(0, (batch, frames))  # (B, T, P+N, D)
        time = sincos_1d(torch.arange(frames, device=x.device), tokens.shape[-1]).to(tokens.dtype)
        patches = (tokens[:, :, prefix:] + time[None, :, None]).flatten(1, 2)
        return torch.cat([tokens[:, 0, :prefix], patches], dim=1)

    def encode_tokens(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        """Run the blocks on the prefix tokens and the patch tokens at ``keep`` ``(B, K)`` (all if ``None``)."""
        m, prefix = self.model, self.num_prefix_tokens
        patches = tokens[:, prefix:] if keep is None else gather_tokens(tokens[:, prefix:], keep)
        x = m.norm_pre(torch.cat([tokens[:, :prefix], patches], dim=1))
        return m.norm(m.blocks(x))

    def pool_tokens(self, encoded: Tensor) -> Tensor:
        """Pooled features ``(B, D)`` of encoded tokens (with prefix), by the model's own head (avg, cls token...)."""
        return self.model.forward_head(encoded, pre_logits=True)

    def patch_features(self, encoded: Tensor) -> Tensor:
        """The patch-token part ``(B, N, D)`` of encoded tokens."""
        return encoded[:, self.num_prefix_tokens :]

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Unpooled features as a sequence: ViT patch tokens (prefix tokens dropped) or CNN feature-map cells."""
        feats = self.model.forward_features(x)
        if feats.dim() == 4:  # B, C, H, W -> B, HW, C
            return feats.flatten(2).transpose(1, 2)
        prefix = getattr(self.model, "num_prefix_tokens", 0)
        return feats[:, prefix:]
