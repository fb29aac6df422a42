"""A small ConvNet whose features keep *where* things are: strided convolutions, then flatten and a linear map.

Global average pooling (timm's default head) throws position away, which is what a navigation world model needs
most; flattening the last feature map keeps it (the encoders of PLDM and eb_jepa keep a spatial map for the same
reason). Small enough to train a world model on a 2-core CPU in minutes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from jepa_platform.errors import ConfigError
from jepa_platform.registry import register_encoder


@register_encoder("convnet")
class ConvEncoder(nn.Module):
    """Strided 3x3 convolutions (GroupNorm, GELU), flattened, then a linear map to ``embed_dim`` features.

    Args:
        image_size: side of the (square) input images; fixes the flattened size.
        in_chans: input channels.
        channels: output channels of each stride-2 stage (each halves the resolution).
        embed_dim: width of the features (``num_features``).
    """

    def __init__(self, image_size: int, in_chans: int, channels: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        side = image_size // 2 ** len(channels)
        if side < 1 or image_size % 2 ** len(channels):
            raise ConfigError(f"encoder.image_size={image_size} must be divisible by 2^{len(channels)} (one halving per entry of encoder.channels)")
        layers: list[nn.Module] = []
        previous = in_chans
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.GroupNorm(min(8, width), width), nn.GELU()]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous * side * side, embed_dim)
        self.num_features = int(embed_dim)
        self.image_size = image_size

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` images (or ``(B, T, C, H, W)`` clips, encoded frame by frame) to ``(B[, T], D)``."""
        if x.dim() == 5:
            return self.forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ConfigError(f"encoder=convnet was built for {self.image_size}px images, got {tuple(x.shape[-2:])}: set encoder.image_size")
        return self.head(torch.flatten(self.features(x), 1))
