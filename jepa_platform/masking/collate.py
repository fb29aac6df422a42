"""Masks sampled with the batch, in DataLoader workers: the collate hook of the streaming DataModules.

An objective that predicts masked tokens describes its masks as :class:`MaskPlan` s (one per level) and hands a
:class:`MaskCollate` to the DataModule (``jepa train`` does this through ``objective.train_collate``). Each batch
then arrives with ``batch["masks"][name] = {"context": (B, Nc), "targets": (B, M, Nt)}`` flat token indices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate

from jepa_platform.errors import ConfigError
from jepa_platform.masking.samplers import Grid, Masks, MaskSampler


def effective_pool(pool: Sequence[int], frames: int) -> tuple[int, int, int]:
    """A pool ``(t, h, w)`` on a grid of ``frames`` time steps: images (one step) are not pooled over time."""
    return (1 if frames == 1 else int(pool[0]), int(pool[1]), int(pool[2]))


def pooled_grid(tokens: Grid, pool: Sequence[int]) -> Grid:
    """The grid of cells of ``pool`` tokens (:func:`effective_pool`) over a ``tokens`` grid; it must divide evenly."""
    pool = effective_pool(pool, tokens[0])
    cells = tuple(n // p for n, p in zip(tokens, pool, strict=True))
    if min(cells) < 1 or any(n % p for n, p in zip(tokens, pool, strict=True)):
        raise ConfigError(f"a token grid of {tokens} does not divide into cells of {pool}: change the level's pool or the input size")
    return cells  # type: ignore[return-value]


@dataclass
class MaskPlan:
    """The masks of one prediction level: a sampler for images and one for clips, on the token grid pooled by ``pool``
    (``(t, h, w)`` tokens per cell, ``t`` ignored on images; ``(1, 1, 1)`` is the encoder's own patch grid)."""

    image: MaskSampler | None
    clip: MaskSampler | None
    pool: tuple[int, int, int] = (1, 1, 1)

    def grid(self, tokens: Grid) -> Grid:
        """This level's grid from the encoder's token grid."""
        return pooled_grid(tokens, self.pool)

    def sample(self, batch_size: int, tokens: Grid, generator: torch.Generator | None = None) -> Masks:
        is_clip = tokens[0] > 1
        sampler = self.clip if is_clip else self.image
        if sampler is None:
            raise ConfigError(f"this objective has no mask sampler for {'clips' if is_clip else 'images'}: set one in its config")
        return sampler.sample(batch_size, self.grid(tokens), generator)


def model_input(batch: Mapping[str, Any]) -> Tensor:
    """The tensor an encoder sees: clip ``frames`` (B, T, C, H, W), else the first view or ``image`` (B, C, H, W)."""
    if "frames" in batch:
        return batch["frames"]
    if "views" in batch:
        return batch["views"][0]
    if "image" in batch:
        return batch["image"]
    raise ConfigError(f"batch has none of frames, views, image (keys: {', '.join(batch)}): use an image or sequence DataModule")


def token_grid(x: Tensor, patch_size: Sequence[int], tubelet: int = 1) -> Grid:
    """The encoder's token grid ``(T, H, W)`` for an image batch (T = 1) or a clip batch."""
    frames = x.shape[1] // tubelet if x.dim() == 5 else 1
    height, width = x.shape[-2] // patch_size[0], x.shape[-1] // patch_size[1]
    return frames, height, width


def sample_masks(
    plans: Mapping[str, MaskPlan], tokens: Grid, batch_size: int, generator: torch.Generator | None = None
) -> dict[str, dict[str, Tensor]]:
    return {name: vars(plan.sample(batch_size, tokens, generator)) for name, plan in plans.items()}


class MaskCollate:
    """``inner`` collate (default: torch's), then masks of every plan for the batch (picklable, for workers)."""

    def __init__(self, plans: Mapping[str, MaskPlan], patch_size: Sequence[int], inner: Callable[[list[Any]], dict] | None = None) -> None:
        self.plans, self.patch_size, self.inner = dict(plans), tuple(patch_size), inner or default_collate

    def __call__(self, samples: list[Any]) -> dict:
        batch = self.inner(samples)
        if "raw" in batch:  # views are made later on the device (data.augment_on=device): masks are drawn there too
            return batch
        x = model_input(batch)
        batch["masks"] = sample_masks(self.plans, token_grid(x, self.patch_size), x.shape[0], batch_generator(batch))
        return batch


def batch_generator(batch: Mapping[str, Any]) -> torch.Generator | None:
    """A generator seeded by the batch's sample keys, so that a batch gets the same masks whenever it is collated: in
    a resumed run too, whose global RNG state was saved after the loader had already prefetched (and drawn masks for)
    the next batch. ``None`` (the global RNG) for batches without keys."""
    keys = batch.get("__key__")
    if not isinstance(keys, list | tuple) or not keys:
        return None
    digest = hashlib.blake2b("\n".join(map(str, keys)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
