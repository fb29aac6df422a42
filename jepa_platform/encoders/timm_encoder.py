"""One adapter over ``timm.create_model``: any timm model by name becomes a feature encoder.

We do not mirror timm's model names: ``name`` is passed through, and ``model_kwargs`` reach the model
constructor (``channels``, ``img_size``, ``patch_size``, ``drop_path_rate``...).
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import Tensor, nn

from jepa_platform.errors import ConfigError
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

    ``forward`` gives pooled features ``(B, D)``, ``forward_tokens`` the token or spatial features ``(B, N, D)``
    (for masking and hierarchical objectives)."""

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        small_stem: bool = False,
        in_chans: int = 3,
        model_kwargs: dict[str, Any] | None = None,
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

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Unpooled features as a sequence: ViT patch tokens (prefix tokens dropped) or CNN feature-map cells."""
        feats = self.model.forward_features(x)
        if feats.dim() == 4:  # B, C, H, W -> B, HW, C
            return feats.flatten(2).transpose(1, 2)
        prefix = getattr(self.model, "num_prefix_tokens", 0)
        return feats[:, prefix:]
