"""View augmentations run on a whole batch on the model's device (``data.augment_on=device``), with kornia.

The per-sample path runs the configured torchvision v2 pipeline in the DataLoader workers, once per view and
sample; on a GPU that CPU work, not the model, sets the pace. Here the workers only decode, and one uint8 batch
crosses to the device, where each view's pipeline draws its random parameters per sample and applies them to the
batch at once.

The device pipeline is *translated* from the same torchvision config (:func:`translate`), not configured a second
time: the config stays the one place that says which crops and colours a view gets, and switching
``data.augment_on`` changes where they are computed, not what they are (tests/unit/test_batched_augment.py
compares the two paths' statistics). A transform with no device counterpart is a one-line config error.

Why kornia: it is maintained, differentiable, runs on any torch device, and its ``ColorJitter`` uses
torchvision's formulas. DALI is CUDA-only and would be a second data loader; torchvision v2 transforms draw one
set of parameters per call, i.e. per batch, not per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from jepa_platform.errors import ConfigError

__all__ = ["BatchedViews", "translate"]


class _ApplyAll(nn.Module):
    """``RandomApply`` of several transforms: each sample gets all of them (probability ``p``) or none."""

    def __init__(self, modules: list[nn.Module], p: float) -> None:
        super().__init__()
        self.body, self.p = nn.Sequential(*modules), p

    def forward(self, x: Tensor) -> Tensor:
        chosen = torch.rand(x.shape[0], device=x.device) < self.p
        return torch.where(chosen.view(-1, 1, 1, 1), self.body(x), x)


class _Cast(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return x.to(self.dtype)


def _pair(value: Any) -> tuple[int, int]:
    value = list(value) if isinstance(value, Sequence) else [value]
    return (int(value[0]), int(value[-1]))


def _range(value: Any) -> tuple[float, float] | float:
    """torchvision keeps jitter factors as ``[min, max]`` (or ``None``); kornia takes the same ranges."""
    return 0.0 if value is None else (float(value[0]), float(value[1]))


class _Translator:
    """One torchvision v2 pipeline -> kornia modules, tracking whether values are still on the uint8 scale (where
    torchvision thresholds such as ``RandomSolarize(threshold=128)`` are given) or already scaled to [0, 1]."""

    def __init__(self, where: str) -> None:
        self.where, self.uint8_scale = where, True

    def __call__(self, t: Any, p: float = 1.0) -> list[nn.Module]:
        import kornia.augmentation as K

        if isinstance(t, v2.Compose):
            return [m for inner in t.transforms for m in self(inner)]
        if isinstance(t, v2.RandomApply):
            if len(t.transforms) == 1:
                return self(t.transforms[0], p=t.p)
            return [_ApplyAll([m for inner in t.transforms for m in self(inner)], t.p)]
        if isinstance(t, v2.RandomResizedCrop):
            # "resample": one batched warp for every sample's own box ("slice" loops over the batch)
            return [
                K.RandomResizedCrop(_pair(t.size), scale=tuple(t.scale), ratio=tuple(t.ratio), cropping_mode="resample", align_corners=False, p=p)
            ]
        if isinstance(t, v2.RandomHorizontalFlip):
            return [K.RandomHorizontalFlip(p=t.p * p)]
        if isinstance(t, v2.RandomVerticalFlip):
            return [K.RandomVerticalFlip(p=t.p * p)]
        if isinstance(t, v2.RandomChannelPermutation):
            return [K.RandomChannelShuffle(p=p)]
        if isinstance(t, v2.ColorJitter):
            return [K.ColorJitter(_range(t.brightness), _range(t.contrast), _range(t.saturation), _range(t.hue), p=p)]
        if isinstance(t, v2.RandomGrayscale):
            return [K.RandomGrayscale(p=t.p * p)]
        if isinstance(t, v2.Grayscale) and t.num_output_channels == 3:
            return [K.RandomGrayscale(p=p)]
        if isinstance(t, v2.GaussianBlur):
            kernel = _pair(t.kernel_size)
            return [K.RandomGaussianBlur(kernel, sigma=(float(t.sigma[0]), float(t.sigma[1])), p=p)]
        if isinstance(t, v2.RandomSolarize):
            threshold = t.threshold / 255.0 if self.uint8_scale else float(t.threshold)
            return [K.RandomSolarize(thresholds=(threshold, threshold), additions=0.0, p=t.p * p)]
        if isinstance(t, v2.ToDtype):
            dtype = t.dtype.get(torch.Tensor, None) if isinstance(t.dtype, dict) else t.dtype
            if dtype is None or not dtype.is_floating_point or not t.scale:
                raise ConfigError(f"{self.where}: ToDtype({dtype}, scale={t.scale}) has no device version: use a float dtype, scale=true")
            self.uint8_scale = False
            return [_Cast(dtype)] if dtype != torch.float32 else []
        if isinstance(t, v2.Normalize):
            return [K.Normalize(mean=torch.tensor(t.mean), std=torch.tensor(t.std))]
        if isinstance(t, v2.Resize) and t.size is not None:
            return [K.Resize(t.size[0] if len(t.size) == 1 else tuple(t.size), antialias=bool(t.antialias))]
        if isinstance(t, v2.CenterCrop):
            return [K.CenterCrop(_pair(t.size))]
        if isinstance(t, v2.Identity):
            return []
        raise ConfigError(
            f"{self.where}: {type(t).__name__} has no batched device version: remove it, or set data.augment_on=workers "
            "(supported: Compose, RandomApply, RandomResizedCrop, flips, RandomChannelPermutation, ColorJitter, grayscale, "
            "GaussianBlur, RandomSolarize, ToDtype, Normalize, Resize, CenterCrop)"
        )


def translate(transform: Any, where: str = "data.view_transform") -> nn.Sequential:
    """The kornia pipeline of a torchvision v2 ``transform``; it takes float images in [0, 1], shape (B, C, H, W)."""
    if transform is None:
        return nn.Sequential()
    return nn.Sequential(*_Translator(where)(transform))


class BatchedViews(nn.Module):
    """uint8 images ``(B, C, H, W)`` on any device -> one augmented float batch per view.

    The random parameters come from a generator seeded with ``seed`` alone (the caller derives it from the run's
    seed, rank and batch position), so a batch's views do not depend on what else used the RNG, and a resumed run
    draws the same views as an uninterrupted one.
    """

    def __init__(self, transforms: Sequence[Any], names: Sequence[str], shared: Any = None) -> None:
        super().__init__()
        self.shared = translate(shared, "data.shared_transform")  # once per batch, before every view's pipeline
        self.pipelines = nn.ModuleList(translate(t, where) for t, where in zip(transforms, names, strict=True))

    def forward(self, images: Tensor, seed: int) -> list[Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"BatchedViews takes uint8 (B, C, H, W) images, not {images.dtype} {tuple(images.shape)}")
        x = images.float().div_(255.0)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=images.device.type if devices else "cuda"):
            torch.random.default_generator.manual_seed(seed)
            if devices:
                with torch.cuda.device(images.device):
                    torch.cuda.manual_seed(seed)
            x = self.shared(x)
            return [pipeline(x) for pipeline in self.pipelines]
