"""Built-in dataset: procedurally generated, labelled 32x32 shape images.

Ten shape classes drawn with nuisance factors (position, scale, rotation, shape and background colours,
textured background, clutter strokes), so that a linear probe on raw pixels or colour statistics does poorly
and invariance learning matters. Every image is a pure function of ``(seed, split, index)``: the same seed
always yields byte-identical shards, on any machine and with any number of worker processes.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_modules.builtin.cache import cache_root
from data_modules.images import ImageDataModule
from data_modules.shards import shard_pattern, write_dataset_atomically, write_split

log = logging.getLogger(__name__)

# Bump when the images change: it names the cache directory, so no run reads shards of an older generator.
VERSION = "v2"

CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "crescent",
    "heart",
    "arrow",
    "tee",
)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_SUPERSAMPLE = 4  # draw masks at 4x and downsample, for anti-aliased edges

Polygon = list[tuple[float, float]]


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> Polygon:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star() -> Polygon:
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.42
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart() -> Polygon:
    ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(ts) ** 3
    y = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
    return list(zip((x / 17).tolist(), ((y + 2.5) / 17).tolist(), strict=True))


# Each class: list of (polygon, fill) drawn in order on a mask; fill 0 cuts a hole.
_SHAPES: dict[str, list[tuple[Polygon, int]]] = {
    "circle": [(_regular(40), 255)],
    "square": [(_regular(4, 1.0, math.pi / 4), 255)],
    "triangle": [(_regular(3, 1.0), 255)],
    "star": [(_star(), 255)],
    "cross": [
        (
            [
                (-0.3, -1),
                (0.3, -1),
                (0.3, -0.3),
                (1, -0.3),
                (1, 0.3),
                (0.3, 0.3),
                (0.3, 1),
                (-0.3, 1),
                (-0.3, 0.3),
                (-1, 0.3),
                (-1, -0.3),
                (-0.3, -0.3),
            ],
            255,
        )
    ],
    "ring": [(_regular(40), 255), (_regular(40, 0.55), 0)],
    "crescent": [(_regular(40), 255), ([(x + 0.45, y - 0.1) for x, y in _regular(40, 0.85)], 0)],
    "heart": [(_heart(), 255)],
    "arrow": [([(-1, -0.25), (0.1, -0.25), (0.1, -0.7), (1, 0), (0.1, 0.7), (0.1, 0.25), (-1, 0.25)], 255)],
    "tee": [([(-1, -1), (1, -1), (1, -0.45), (0.28, -0.45), (0.28, 1), (-0.28, 1), (-0.28, -0.45), (-1, -0.45)], 255)],
}


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth low-contrast two-colour texture plus pixel noise, float32 HxWx3 in [0, 255]."""
    c0 = _random_colour(rng)
    c1 = np.clip(c0 + rng.uniform(-50, 50, size=3), 0, 255)
    grid = rng.uniform(0, 1, size=(4, 4)).astype(np.float32)
    t = np.asarray(Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32) / 255
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img += rng.normal(0, rng.uniform(2, 14), size=img.shape)
    return img


def _clutter(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """Draw a few random strokes and dots that are not class shapes."""
    canvas = Image.new("L", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 3))):
        x0, y0, x1, y1 = rng.uniform(0, size * _SUPERSAMPLE, size=4)
        draw.line([(x0, y0), (x1, y1)], fill=255, width=int(rng.integers(2, 4)))
    alpha = np.asarray(canvas.resize((size, size), Image.BOX), np.float32)[..., None] / 255
    img *= 1 - alpha
    img += alpha * _random_colour(rng)


def _shape_mask(cls_name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    big = size * _SUPERSAMPLE
    scale = rng.uniform(0.26, 0.44) * big
    angle = rng.uniform(0, 2 * math.pi)
    margin = scale * 0.9
    cx, cy = rng.uniform(margin, big - margin, size=2)
    return shape_alpha(cls_name, cx / _SUPERSAMPLE, cy / _SUPERSAMPLE, scale / _SUPERSAMPLE, angle, size)


def shape_alpha(cls_name: str, cx: float, cy: float, scale: float, angle: float, size: int) -> np.ndarray:
    """Anti-aliased coverage ``(size, size, 1)`` in [0, 1] of a class shape centred at ``(cx, cy)`` pixels."""
    big = size * _SUPERSAMPLE
    cx, cy, scale = cx * _SUPERSAMPLE, cy * _SUPERSAMPLE, scale * _SUPERSAMPLE
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, fill in _SHAPES[cls_name]:
        pts = [(cx + scale * (x * cos_a - y * sin_a), cy + scale * (x * sin_a + y * cos_a)) for x, y in poly]
        draw.polygon(pts, fill=fill)
    return np.asarray(canvas.resize((size, size), Image.BOX), np.float32)[..., None] / 255


def render(seed: int, split: str, index: int, size: int = 32) -> tuple[np.ndarray, int]:
    """Return ``(uint8 HxWx3 image, label)`` for one sample; deterministic in its arguments."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    label = int(rng.integers(len(CLASSES)))
    img = _background(rng, size)
    if rng.uniform() < 0.7:
        _clutter(rng, img, size)
    alpha = _shape_mask(CLASSES[label], rng, size)
    colour = _random_colour(rng)
    while np.abs(colour - img.mean(axis=(0, 1))).max() < 60:  # keep the shape visible against its background
        colour = _random_colour(rng)
    shade = 1 + rng.uniform(-0.25, 0.25) * np.linspace(-1, 1, size, dtype=np.float32)[None, :, None]
    img = img * (1 - alpha) + alpha * np.clip(colour * shade, 0, 255)
    return np.clip(img, 0, 255).astype(np.uint8), label


def encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def sample(index: int, seed: int, split: str, size: int = 32) -> dict:
    """One WebDataset sample dict (PNG image and class index)."""
    img, label = render(seed, split, index, size)
    return {"__key__": f"{split}-{index:08d}", "png": encode_png(img), "cls": label}


def make_sample_fn(seed: int, split: str, size: int = 32) -> Callable[[int], dict]:
    """Picklable ``index -> sample`` for the shard writer's worker processes."""
    return partial(sample, seed=seed, split=split, size=size)


# -- the DataModule: generated into the cache on first use -------------------------------------------------------
def shapes_dir(root: str | os.PathLike, seed: int, num_train: int, num_val: int, image_size: int) -> Path:
    return Path(root).expanduser() / f"shapes10-{VERSION}-seed{seed}-{num_train}-{num_val}-{image_size}px"


def ensure_shapes_dataset(
    root: str | os.PathLike,
    seed: int = 0,
    num_train: int = 20000,
    num_val: int = 5000,
    image_size: int = 32,
    samples_per_shard: int = 1000,
    workers: int | None = None,
) -> Path:
    """Generate the shapes dataset under ``root`` once; later calls find it complete and return at once."""
    target = shapes_dir(root, seed, num_train, num_val, image_size)
    workers = workers or min(os.cpu_count() or 1, 8)

    def write(tmp: Path) -> dict:
        start = time.perf_counter()
        log.info("generating the built-in shapes dataset into %s (%d workers)", target, workers)
        splits = {
            split: write_split(make_sample_fn(seed, split, image_size), tmp, split, n, samples_per_shard, workers, mtime=0.0)
            for split, n in (("train", num_train), ("val", num_val))
        }
        log.info("generated %d samples in %.1fs", num_train + num_val, time.perf_counter() - start)
        return {"dataset": f"shapes10-{VERSION}", "seed": seed, "classes": list(CLASSES), "image_size": image_size, "splits": splits}

    write_dataset_atomically(target, write)
    return target


class ShapesDataModule(ImageDataModule):
    """The built-in 10-class shapes dataset (see :mod:`data_modules.builtin.shapes`), written as shards on first use."""

    def __init__(
        self,
        root: str | None,
        dataset_seed: int,
        num_train: int,
        num_val: int,
        image_size: int,
        samples_per_shard: int,
        **kwargs,
    ) -> None:
        self.root = cache_root(root)
        self.gen = {"seed": dataset_seed, "num_train": num_train, "num_val": num_val, "image_size": image_size}
        self.samples_per_shard = samples_per_shard
        directory = shapes_dir(self.root, **self.gen)
        kwargs.setdefault("num_classes", len(CLASSES))
        super().__init__(
            urls=shard_pattern(directory, "train", -(-num_train // samples_per_shard)),
            val_urls=shard_pattern(directory, "val", -(-num_val // samples_per_shard)),
            image_size=image_size,
            **kwargs,
        )

    def prepare_data(self) -> None:
        ensure_shapes_dataset(self.root, samples_per_shard=self.samples_per_shard, **self.gen)
