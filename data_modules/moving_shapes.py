"""Built-in video dataset: one shape of the ten shape classes gliding across a textured background.

Each episode is ``length`` frames: a shape (class = ``label``) of random size, colour and spin moves in a straight
line in one of eight directions (``motion``, 0 = east, counter-clockwise in 45-degree steps) at a constant speed
chosen so that it stays inside the frame. Actions are the per-frame displacement (dx, dy) and states the centre
position, so the data also serves action-conditioned models. Every episode is a pure function of
``(seed, split, index)``, like :mod:`data_modules.shapes`.
"""

from __future__ import annotations

import math

import numpy as np

import data_modules.shapes as shapes

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
