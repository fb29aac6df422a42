"""Heads that objectives put on top of an encoder."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.ops import MLP

from jepa_platform.errors import ConfigError

NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm, "none": None}


def projector(in_dim: int, dims: Sequence[int], norm: str = "batch") -> nn.Module:
    """Expander/projector MLP: Linear-Norm-ReLU for each hidden layer, a plain Linear last (as in VICReg).

    ``dims`` are the output widths of each layer, e.g. ``[2048, 2048, 2048]``; an empty ``dims`` is the identity.
    ``norm`` is ``batch`` (the papers' choice), ``layer`` or ``none``. BatchNorm statistics are per rank under DDP
    unless the Trainer converts them (``trainer.sync_batchnorm=true``, GPU only); ``layer`` has no batch dependence.
    """
    if norm not in NORMS:
        raise ConfigError(f"objective.projector_norm={norm!r} is not one of {', '.join(NORMS)}")
    if not dims:
        return nn.Identity()
    return MLP(in_dim, list(dims), norm_layer=NORMS[norm], activation_layer=nn.ReLU, inplace=True)
