"""Built-in video dataset: one shape of the ten shape classes gliding across a textured background.

Each episode is ``length`` frames: a shape (class = ``label``) of random size, colour and spin moves in a straight
line in one of eight directions (``motion``, 0 = east, counter-clockwise in 45-degree steps) at a constant speed
chosen so that it stays inside the frame. Actions are the per-frame displacement (dx, dy) and states the centre
position, so the data also serves action-conditioned models. Every episode is a pure function of
``(seed, split, index)``, like :mod:`data_modules.builtin.shapes`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

import data_modules.builtin.shapes as shapes
from data_modules.builtin.videos import GeneratedVideoDataModule, generated_videos
from jepa_platform.errors import ConfigError

log = logging.getLogger(__name__)

VERSION = "v1"
MOTIONS: tuple[str, ...] = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
CLASSES = {"label": list(shapes.CLASSES), "motion": list(MOTIONS)}


def episode(seed: int, split: str, index: int, size: int = 32, length: int = 16) -> dict:
    """``{"frames": (length, size, size, 3) uint8, "actions": (length, 2), "states": (length, 2), "label", "motion"}``."""
    rng = np.random.default_rng([seed, 100 + shapes.SPLIT_IDS[split], index])
    label, motion = int(rng.integers(len(shapes.CLASSES))), int(rng.integers(len(MOTIONS)))
    scale = rng.uniform(0.18, 0.26) * size
    margin = scale * 1.0
    direction = np.array([math.cos(motion * math.pi / 4), -math.sin(motion * math.pi / 4)])  # image y points down
    travel_room = size - 2 * margin
    speed = rng.uniform(0.4, 0.9) * travel_room / max(length - 1, 1)
    path = speed * (length - 1) * direction
    low = np.maximum(margin, margin - path)
    high = np.minimum(size - margin, size - margin - path)
    start = rng.uniform(low, high)
    angle0, spin = rng.uniform(0, 2 * math.pi), rng.uniform(-0.15, 0.15)
    background = shapes._background(rng, size)
    colour = shapes._random_colour(rng)
    while np.abs(colour - background.mean(axis=(0, 1))).max() < 60:
        colour = shapes._random_colour(rng)
    frames, states = [], []
    for t in range(length):
        cx, cy = start + t * speed * direction
        alpha = shapes.shape_alpha(shapes.CLASSES[label], cx, cy, scale, angle0 + spin * t, size)
        frame = background * (1 - alpha) + alpha * colour
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
        states.append((cx, cy))
    actions = np.tile(speed * direction, (length, 1)).astype(np.float32)
    return {"frames": np.stack(frames), "actions": actions, "states": np.asarray(states, np.float32), "label": label, "motion": motion}


# -- the DataModule: generated into the cache on first use -------------------------------------------------------
def moving_shapes_dir(root: str | os.PathLike, seed: int, num_train: int, num_val: int, image_size: int, length: int) -> Path:
    return Path(root).expanduser() / f"moving-shapes-{VERSION}-seed{seed}-{num_train}-{num_val}-{image_size}px-{length}f"


def ensure_moving_shapes_dataset(
    root: str | os.PathLike,
    seed: int = 0,
    num_train: int = 4000,
    num_val: int = 1000,
    image_size: int = 32,
    length: int = 16,
    episodes_per_shard: int = 250,
) -> Path:
    """Generate the moving-shapes video dataset under ``root`` once (PNG frames); later calls return at once."""
    target = moving_shapes_dir(root, seed, num_train, num_val, image_size, length)
    args = (seed, num_train, num_val, image_size, length, episodes_per_shard)
    return generated_videos(target, episode, *args, CLASSES, "moving-shapes videos")


class MovingShapesDataModule(GeneratedVideoDataModule):
    """The built-in moving-shapes videos (see :mod:`data_modules.builtin.moving_shapes`), written as shards on first use;
    clips are labelled by shape class (``label_key=label``) or motion direction (``label_key=motion``)."""

    dataset_dir = staticmethod(moving_shapes_dir)
    ensure_dataset = staticmethod(ensure_moving_shapes_dataset)

    def __init__(self, label_key: str, **kwargs) -> None:
        """``label_key`` (``label`` or ``motion``) and :class:`GeneratedVideoDataModule`'s arguments."""
        if label_key not in CLASSES:
            raise ConfigError(f"data.label_key={label_key!r}: the moving-shapes episodes are labelled by {' or '.join(CLASSES)}")
        if kwargs.get("num_classes") is None:
            kwargs["num_classes"] = len(CLASSES[label_key])
        super().__init__(label_key=label_key, **kwargs)
