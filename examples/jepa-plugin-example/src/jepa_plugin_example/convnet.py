"""A small ConvNet encoder: the least an encoder plugin must provide."""

from __future__ import annotations

from torch import Tensor, nn


class SmallConvNet(nn.Module):
    """A four-stage ConvNet with GroupNorm (no batch statistics), for small images and quick experiments.

    An encoder maps images ``(B, C, H, W)`` to features ``(B, num_features)``; ``forward_tokens`` gives the
    feature-map cells ``(B, H'W', num_features)`` for objectives that mask or predict tokens.
    """

    def __init__(self, width: int, in_chans: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for i in range(4):
            out = width * 2**i
            layers += [nn.Conv2d(channels, out, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(8, out), nn.GELU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.num_features = channels

    def forward_tokens(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_tokens(x).mean(dim=1)
