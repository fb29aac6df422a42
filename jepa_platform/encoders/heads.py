"""Heads that objectives put on top of an encoder."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.ops import MLP


def projector(in_dim: int, dims: Sequence[int], batch_norm: bool = True) -> nn.Module:
    """Expander/projector MLP: Linear-BN-ReLU for each hidden layer, a plain Linear last (as in VICReg).

    ``dims`` are the output widths of each layer, e.g. ``[2048, 2048, 2048]``; an empty ``dims`` is the identity.
    """
    if not dims:
        return nn.Identity()
    norm = nn.BatchNorm1d if batch_norm else None
    return MLP(in_dim, list(dims), norm_layer=norm, activation_layer=nn.ReLU, inplace=True)
