"""Mask samplers for masked prediction in representation space (I-JEPA, V-JEPA, H-JEPA levels).

A sampler draws, for a batch on a token grid ``(T, H, W)`` (``T = 1`` for images), the indices of the *context*
tokens the encoder sees and of the *target* tokens the predictor must predict. Indices are flat positions in the
grid (``t * H * W + h * W + w``) and every sample of a batch gets the same counts, so that masks stack into
tensors: ``context (B, Nc)`` and ``targets (B, M, Nt)`` for ``M`` target sets.

Counts are made equal the way I-JEPA does it: the size of each block is drawn once per batch and only its
position per sample, so target sets have equal sizes; the context (what is left after removing the targets)
varies and is cut to the smallest count in the batch by dropping a random subset of each sample's surplus.

Samplers run in DataLoader workers through :class:`jepa_platform.masking.MaskCollate`; they draw from the
generator they are given (default: torch's global RNG, which the data stream seeds per batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from jepa_platform.errors import ConfigError

Grid = tuple[int, int, int]


@dataclass
class Masks:
    """Flat token indices of a batch: ``context (B, Nc)`` and ``targets (B, M, Nt)``, both sorted per row."""

    context: Tensor
    targets: Tensor

    def to(self, device: torch.device | str) -> Masks:
        return Masks(self.context.to(device), self.targets.to(device))


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """``tokens (B, N, D)`` at flat indices ``index (B, ...)`` -> ``(B, ..., D)``."""
    flat = index.flatten(1)
    picked = tokens.gather(1, flat.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return picked.unflatten(1, index.shape[1:])


def _uniform(lo_hi: Sequence[float], generator: torch.Generator | None) -> float:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _check_range(name: str, value: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
        raise ConfigError(f"{name}={list(value)} must be [min, max] with {lo} <= min <= max <= {hi}")
    return float(value[0]), float(value[1])


def block_size(grid_hw: tuple[int, int], scale: float, aspect: float) -> tuple[int, int]:
    """Height and width (in tokens) of a block covering ``scale`` of an ``H x W`` grid with ratio ``h / w = aspect``."""
    height, width = grid_hw
    area = scale * height * width
    h = max(1, min(height, round(math.sqrt(area * aspect))))
    w = max(1, min(width, round(math.sqrt(area / aspect))))
    return h, w


def _block(grid_hw: tuple[int, int], size: tuple[int, int], generator: torch.Generator | None) -> Tensor:
    """A boolean ``H x W`` map with one block of ``size`` at a uniformly random position."""
    (height, width), (h, w) = grid_hw, size
    top = int(torch.randint(0, height - h + 1, (), generator=generator))
    left = int(torch.randint(0, width - w + 1, (), generator=generator))
    block = torch.zeros(height, width, dtype=torch.bool)
    block[top : top + h, left : left + w] = True
    return block


def _subset(indices: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """``count`` of ``indices`` chosen at random, sorted (all of them if there are exactly ``count``)."""
    if len(indices) == count:
        return indices
    keep = torch.randperm(len(indices), generator=generator)[:count]
    return indices[keep].sort().values


class MaskSampler:
    """Interface: ``sample(batch_size, grid, generator) -> Masks``."""

    def sample(self, batch_size: int, grid: Grid, generator: torch.Generator | None = None) -> Masks:
        raise NotImplementedError


class MultiBlockMaskSampler(MaskSampler):
    """I-JEPA's multi-block masks; on clips (``T > 1``) every block is a tube through all frames (V-JEPA).

    ``num_targets`` target blocks, each covering ``target_scale`` of the (spatial) grid with aspect ratio in
    ``target_aspect``; the context is one block of ``context_scale`` and ``context_aspect`` with every target token
    removed, or, with ``context_scale=None``, everything that is not a target (V-JEPA). ``union_targets`` predicts
    the union of the blocks as one target set (V-JEPA) instead of each block separately (I-JEPA).

    Defaults are I-JEPA's: 4 targets of scale 0.15-0.2 and aspect 0.75-1.5, a context block of scale 0.85-1.0.
    A sample whose context keeps fewer than ``min_context`` tokens is redrawn (at most ``max_tries`` times).
    """

    def __init__(
        self,
        num_targets: int = 4,
        target_scale: Sequence[float] = (0.15, 0.2),
        target_aspect: Sequence[float] = (0.75, 1.5),
        context_scale: Sequence[float] | None = (0.85, 1.0),
        context_aspect: Sequence[float] = (1.0, 1.0),
        union_targets: bool = False,
        min_context: int = 4,
        max_tries: int = 20,
    ) -> None:
        if num_targets < 1:
            raise ConfigError(f"num_targets={num_targets} must be >= 1")
        self.num_targets = num_targets
        self.target_scale = _check_range("target_scale", target_scale, 0.0, 1.0)
        self.target_aspect = _check_range("target_aspect", target_aspect, 1e-3, 1e3)
        self.context_scale = None if context_scale is None else _check_range("context_scale", context_scale, 0.0, 1.0)
        self.context_aspect = _check_range("context_aspect", context_aspect, 1e-3, 1e3)
        self.union_targets, self.min_context, self.max_tries = union_targets, min_context, max_tries

    def sample(self, batch_size: int, grid: Grid, generator: torch.Generator | None = None) -> Masks:
        frames, height, width = grid
        hw = (height, width)
        target_size = block_size(hw, _uniform(self.target_scale, generator), _uniform(self.target_aspect, generator))
        context_size = None
        if self.context_scale is not None:
            context_size = block_size(hw, _uniform(self.context_scale, generator), _uniform(self.context_aspect, generator))
        contexts, targets = [], []
        for _ in range(batch_size):
            for _attempt in range(self.max_tries):
                blocks = [_block(hw, target_size, generator) for _ in range(self.num_targets)]
                covered = torch.stack(blocks).any(0)
                visible = _block(hw, context_size, generator) if context_size else torch.ones(hw, dtype=torch.bool)
                visible &= ~covered
                if int(visible.sum()) * frames >= self.min_context:
                    break
            else:
                raise ConfigError(
                    f"masks on a {height}x{width} grid leave fewer than {self.min_context} context tokens after {self.max_tries} tries: "
                    "lower num_targets or target_scale, or use a finer patch grid"
                )
            contexts.append(visible.flatten().nonzero().squeeze(1))
            sets = [covered] if self.union_targets else blocks
            targets.append([b.flatten().nonzero().squeeze(1) for b in sets])
        # Equal counts: cut each spatial set to the batch's smallest, then extend it through the frames (tubes).
        n_context = min(len(c) for c in contexts)
        n_target = min(len(t) for sample in targets for t in sample)
        plane = height * width
        context = torch.stack([_tubes(_subset(c, n_context, generator), frames, plane) for c in contexts])
        target = torch.stack([torch.stack([_tubes(_subset(t, n_target, generator), frames, plane) for t in sample]) for sample in targets])
        return Masks(context, target)


def _tubes(spatial: Tensor, frames: int, plane: int) -> Tensor:
    """Flat indices of spatial positions (indices into one ``plane``) repeated through ``frames`` frames."""
    offsets = torch.arange(frames).unsqueeze(1) * plane
    return (offsets + spatial).flatten()


class FutureMaskSampler(MaskSampler):
    """Predict the future of a clip: context = the frames before a cut, targets = the next ``horizon`` frames.

    The cut is drawn once per batch, uniformly from ``[min_context_frames, T - horizon]``, so counts agree. On a
    coarser level (frames pooled into windows) the same sampler predicts ``horizon`` windows ahead.
    """

    def __init__(self, horizon: int = 1, min_context_frames: int = 1) -> None:
        if horizon < 1 or min_context_frames < 1:
            raise ConfigError(f"horizon ({horizon}) and min_context_frames ({min_context_frames}) must be >= 1")
        self.horizon, self.min_context_frames = horizon, min_context_frames

    def sample(self, batch_size: int, grid: Grid, generator: torch.Generator | None = None) -> Masks:
        frames, height, width = grid
        last_cut = frames - self.horizon
        if last_cut < self.min_context_frames:
            raise ConfigError(
                f"future prediction of {self.horizon} step(s) after at least {self.min_context_frames} needs "
                f"{self.horizon + self.min_context_frames} time steps, the grid has {frames}: use longer clips (data.clip_length)"
            )
        cut = int(torch.randint(self.min_context_frames, last_cut + 1, (), generator=generator))
        per_frame = height * width
        context = torch.arange(cut * per_frame).expand(batch_size, -1)
        target = torch.arange(cut * per_frame, (cut + self.horizon) * per_frame).expand(batch_size, 1, -1)
        return Masks(context.clone(), target.clone())


def future_masks(batch_size: int, grid: Grid, context_frames: int, device: torch.device | str = "cpu") -> Masks:
    """Context = every token of the first ``context_frames`` time steps, targets = every token after them (one target
    set): what surprise scoring asks a video JEPA to predict."""
    frames, height, width = grid
    if not 1 <= context_frames < frames:
        raise ConfigError(f"a context of {context_frames} frame(s) leaves nothing to predict in a window of {frames}: use 1..{frames - 1}")
    per_frame = height * width
    context = torch.arange(context_frames * per_frame, device=device).expand(batch_size, -1)
    target = torch.arange(context_frames * per_frame, frames * per_frame, device=device).expand(batch_size, 1, -1)
    return Masks(context.clone(), target.clone())


class MixtureMaskSampler(MaskSampler):
    """One of several samplers per batch, drawn with probabilities ``weights`` (e.g. V-JEPA's tubes and, half of the
    time, the future frames, so that a video JEPA learns to predict what comes next as well as what is hidden)."""

    def __init__(self, samplers: Sequence[MaskSampler], weights: Sequence[float]) -> None:
        if len(samplers) != len(weights) or not samplers or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"a mask mixture needs one non-negative weight per sampler, with a positive sum: got {list(weights)}")
        self.samplers, self.weights = list(samplers), torch.tensor([float(w) for w in weights])

    def sample(self, batch_size: int, grid: Grid, generator: torch.Generator | None = None) -> Masks:
        choice = int(torch.multinomial(self.weights, 1, generator=generator))
        return self.samplers[choice].sample(batch_size, grid, generator)
