"""Fixed sine-cosine position embeddings for token grids of any size (images, clips, pooled levels).

Fixed rather than learned so that one predictor serves any grid (I-JEPA's predictor uses fixed 2-D sin-cos too).
timm builds 2-D ones; clips need a time axis, hence these few lines.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def sincos_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """``(N,)`` positions -> ``(N, dim)``: sines then cosines of geometrically spaced frequencies (``dim`` even)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = temperature ** (-torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim // 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_grid(grid: tuple[int, int, int], dim: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(T*H*W, dim)`` embeddings of a ``(T, H, W)`` grid in flat order; each axis gets an even third of ``dim``
    (the rest is zero). On images (T = 1) the time part is a constant.

    Computed once per grid, width, device and dtype and then shared (read-only: callers index or add, never write):
    a predictor calls it on every forward, and the two dozen small kernels of a fresh table, in float64, cost more
    than a tiny model's whole block at GPU step rates."""
    return _cached_grid(tuple(int(n) for n in grid), int(dim), torch.device(device) if device is not None else torch.device("cpu"), dtype)


@functools.lru_cache(maxsize=64)
def _cached_grid(grid: tuple[int, ...], dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor even when first asked for under inference mode
        axis_dim = 2 * (dim // 6)
        coords = torch.meshgrid(*(torch.arange(n, device=device) for n in grid), indexing="ij")
        out = torch.cat([sincos_1d(c.flatten(), axis_dim) for c in coords], dim=1)
        return torch.nn.functional.pad(out, (0, dim - out.shape[1])).to(dtype)
