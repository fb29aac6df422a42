"""Built-in intuitive-physics videos: a ball under gravity bounces on the floor, passes behind an occluder and
rebounds from a wall; for every possible clip, matched impossible versions that differ from it only from one frame on.

Violation types (one impossible version of a scene per type; the variant is drawn from the scene's seed):

- ``permanence``: the ball vanishes behind the occluder and never comes out (``vanish``), or a second ball appears
  from nowhere in open view (``appear``);
- ``continuity``: the ball jumps to another place in open view and moves on from there (``teleport``);
- ``solidity``: the ball passes through the wall instead of rebounding (``pass_through``);
- ``gravity``: from one frame on the ball floats (``float``) or falls upward (``fall_up``);
- ``constancy``: the ball comes out of the occluder with another colour (``colour``) or shape (``shape``).

A pair's two clips are rendered from the same scene and the same simulation up to the violation; ``violation_frame``
is the first frame whose pixels differ (for ``vanish``, the frame where the ball should have come out). Every clip is
a pure function of ``(seed, split, index)`` and the violation type, like :mod:`data_modules.builtin.shapes`. Training data
holds possible clips only (:func:`possible_clip`); evaluation uses :func:`pair`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import data_modules.builtin.shapes as shapes
from data_modules.builtin.videos import GeneratedVideoDataModule, generated_videos
from data_modules.sequences import write_episodes
from data_modules.urls import MANIFEST

log = logging.getLogger(__name__)

VERSION = "v1"
VIOLATIONS: dict[str, tuple[str, ...]] = {
    "permanence": ("vanish", "appear"),
    "continuity": ("teleport",),
    "solidity": ("pass_through",),
    "gravity": ("float", "fall_up"),
    "constancy": ("colour", "shape"),
}
MIN_CONTEXT = 4  # frames before a violation: enough to see the motion it breaks
#: episode labels of the possible clips, for probes: the ball's horizontal speed in three equal bins
CLASSES = {"speed": ["slow", "medium", "fast"]}
_SPEED = (1.1, 1.5)  # horizontal speed range, pixels per frame at 32 px


@dataclass(frozen=True)
class Scene:
    """Everything a clip is rendered from (pixels; y grows downwards)."""

    size: int
    length: int
    radius: float
    colour: tuple[float, float, float]
    square: bool
    start: tuple[float, float]
    velocity: tuple[float, float]
    gravity: float
    restitution: float
    floor: float
    wall_x: float
    occluder: tuple[float, float]  # left and right edge; it spans from the top to the floor
    background: np.ndarray


@dataclass
class Ball:
    x: float
    y: float
    vx: float
    vy: float
    visible: bool = True
    colour: tuple[float, float, float] | None = None
    square: bool | None = None


def make_scene(rng: np.random.Generator, size: int = 32, length: int = 24) -> Scene:
    """A scene whose ball goes behind the occluder and reaches the wall within the clip (at 32 px, 24 frames)."""
    u = size / 32
    colour = tuple(float(c) for c in shapes._random_colour(rng))
    occluder_centre = rng.uniform(12, 16) * u
    background = np.full((size, size, 3), rng.uniform(200, 235), np.float32)
    return Scene(
        size=size,
        length=length,
        radius=rng.uniform(2.4, 3.2) * u,
        colour=colour,  # type: ignore[arg-type]
        square=False,
        start=(rng.uniform(3.5, 6.0) * u, rng.uniform(8, 16) * u),
        velocity=(rng.uniform(*_SPEED) * u, rng.uniform(-1.0, 0.3) * u),
        gravity=rng.uniform(0.18, 0.3) * u,
        restitution=rng.uniform(0.7, 0.85),
        floor=size - 3 * u,
        wall_x=rng.uniform(25, 28) * u,
        occluder=(occluder_centre - 3.5 * u, occluder_centre + 3.5 * u),
        background=background,
    )


def step(ball: Ball, scene: Scene, solid_wall: bool = True, gravity: float | None = None) -> None:
    """One frame of motion: gravity, then the floor and the wall push the ball back (with ``restitution``)."""
    g = scene.gravity if gravity is None else gravity
    ball.vy += g
    ball.x += ball.vx
    ball.y += ball.vy
    if ball.y + scene.radius > scene.floor and ball.vy > 0:
        ball.y = scene.floor - scene.radius
        ball.vy = -ball.vy * scene.restitution
    if solid_wall and ball.x + scene.radius > scene.wall_x and ball.vx > 0:
        ball.x = scene.wall_x - scene.radius
        ball.vx = -ball.vx * scene.restitution
    if ball.y - scene.radius < 0 and ball.vy < 0:  # the ceiling
        ball.y, ball.vy = scene.radius, -ball.vy


def hidden(ball: Ball, scene: Scene) -> bool:
    """Whether the occluder covers the whole ball."""
    left, right = scene.occluder
    return left <= ball.x - scene.radius and ball.x + scene.radius <= right


def _alpha(scene: Scene, x: float, y: float, square: bool) -> np.ndarray:
    yy, xx = np.mgrid[0 : scene.size, 0 : scene.size].astype(np.float32) + 0.5
    dist = np.maximum(np.abs(xx - x), np.abs(yy - y)) if square else np.hypot(xx - x, yy - y)
    return np.clip(scene.radius + 0.5 - dist, 0.0, 1.0)[..., None]


def render(scene: Scene, balls: list[Ball]) -> np.ndarray:
    """Background, floor and wall, the balls, then the occluder in front."""
    s = scene.size
    frame = scene.background.copy()
    frame[round(scene.floor) :] = (120, 110, 100)
    wall = round(scene.wall_x)
    frame[:, wall : wall + max(round(2 * s / 32), 1)] = (90, 90, 110)
    for ball in balls:
        if ball.visible:
            alpha = _alpha(scene, ball.x, ball.y, scene.square if ball.square is None else ball.square)
            colour = np.asarray(ball.colour or scene.colour, np.float32)
            frame = frame * (1 - alpha) + alpha * colour
    left, right = (round(v) for v in scene.occluder)
    frame[: round(scene.floor), left:right] = (60, 120, 70)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _run(scene: Scene, violation: str | None, at: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Frames and ball states of a clip; ``violation`` (a variant) takes effect from frame ``at`` on."""
    ball = Ball(*scene.start, *scene.velocity)
    extra: Ball | None = None
    frames, states = [], []
    for t in range(scene.length):
        active = violation is not None and at is not None and t >= at
        if t > 0:
            gravity = {"float": 0.0, "fall_up": -scene.gravity}.get(violation or "") if active else None
            if active and violation == "float" and t == at:
                ball.vy = 0.0
            step(ball, scene, solid_wall=not (active and violation == "pass_through"), gravity=gravity)
            if extra is not None:
                step(extra, scene)
        if active and t == at:
            if violation == "teleport":
                ball.x += -8 * scene.size / 32 if ball.x > scene.size / 2 else 8 * scene.size / 32
            elif violation == "appear":
                extra = Ball(scene.wall_x - 6 * scene.size / 32, scene.radius + 2, -0.5, 0.0)
            elif violation == "colour":
                ball.colour = tuple(255.0 - c for c in scene.colour)  # type: ignore[assignment]
            elif violation == "shape":
                ball.square = not scene.square
        if active and violation == "vanish":
            ball.visible = False
        frames.append(render(scene, [ball] + ([extra] if extra else [])))
        states.append((ball.x, ball.y))
    return np.stack(frames), np.asarray(states, np.float32)


def _onset(scene: Scene, variant: str) -> int | None:
    """The frame a variant starts at in this scene, or ``None`` if the scene has no such moment with enough context."""
    ball, behind, seen_behind = Ball(*scene.start, *scene.velocity), [], False
    wall_hit = None
    for t in range(scene.length):
        if t > 0:
            vx = ball.vx
            step(ball, scene)
            if wall_hit is None and vx > 0 and ball.vx < 0:
                wall_hit = t
        behind.append(hidden(ball, scene))
        seen_behind = seen_behind or behind[-1]
    first_hidden = next((t for t, h in enumerate(behind) if h), None)
    out = next((t for t in range(first_hidden or 0, scene.length) if first_hidden is not None and not behind[t]), None)
    in_view = [t for t in range(MIN_CONTEXT, scene.length - 3) if not behind[t]]
    onset = {
        "vanish": first_hidden,
        "colour": first_hidden,
        "shape": first_hidden,
        "pass_through": wall_hit,
        "teleport": in_view[len(in_view) // 3] if in_view else None,
        "appear": in_view[len(in_view) // 2] if in_view else None,
        "float": in_view[len(in_view) // 4] if in_view else None,
        "fall_up": in_view[len(in_view) // 4] if in_view else None,
    }[variant]
    needs_exit = variant in ("vanish", "colour", "shape")
    if onset is None or onset < MIN_CONTEXT or onset > scene.length - 3 or (needs_exit and out is None):
        return None
    return onset


def _rng(seed: int, split: str, index: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, 300 + shapes.SPLIT_IDS[split], index, salt])


def possible_clip(seed: int, split: str, index: int, size: int = 32, length: int = 24) -> dict:
    """``{"frames": (length, size, size, 3) uint8, "states": (length, 2), "speed": int}``: physics as it is, for
    training; ``speed`` is the bin of the ball's starting horizontal speed (:data:`CLASSES`)."""
    scene = make_scene(_rng(seed, split, index), size, length)
    frames, states = _run(scene, None, None)
    low, high = _SPEED
    fraction = (scene.velocity[0] * 32 / size - low) / (high - low)
    return {"frames": frames, "states": states, "speed": min(int(fraction * len(CLASSES["speed"])), len(CLASSES["speed"]) - 1)}


def pair(seed: int, split: str, index: int, violation: str, size: int = 32, length: int = 24) -> dict:
    """A possible clip and its impossible twin for violation type ``violation`` (a key of :data:`VIOLATIONS`):
    ``{"possible", "impossible": (length, size, size, 3) uint8, "possible_states", "impossible_states": (length, 2)
    ball centres, "violation", "variant", "violation_frame", "scene"}``.
    Scenes are drawn from the pair's seed until one has the moment the violation needs (e.g. the ball going behind the
    occluder and out again), with at least :data:`MIN_CONTEXT` frames before it."""
    if violation not in VIOLATIONS:
        raise ValueError(f"unknown violation type {violation!r}: use one of {', '.join(VIOLATIONS)}")
    rng = _rng(seed, split, index, salt=1 + list(VIOLATIONS).index(violation))
    for _ in range(200):
        scene = make_scene(rng, size, length)
        variant = str(rng.choice(VIOLATIONS[violation]))
        if variant == "shape":
            scene = replace(scene, square=bool(rng.integers(2)))
        onset = _onset(scene, variant)
        if onset is None:
            continue
        possible, possible_states = _run(scene, None, None)
        impossible, impossible_states = _run(scene, variant, onset)
        differs = np.flatnonzero((possible != impossible).any(axis=(1, 2, 3)))
        if len(differs) and differs[0] >= MIN_CONTEXT:
            return {
                "possible": possible,
                "impossible": impossible,
                "possible_states": possible_states,
                "impossible_states": impossible_states,
                "violation": violation,
                "variant": variant,
                "violation_frame": int(differs[0]),
                "scene": scene,
            }
    raise RuntimeError(f"no scene for {violation} in 200 draws (seed {seed}, {split} {index}): the scene ranges are too narrow")


# -- the DataModule: generated into the cache on first use -------------------------------------------------------
def intuitive_physics_dir(root: str | os.PathLike, seed: int, num_train: int, num_val: int, image_size: int, length: int) -> Path:
    return Path(root).expanduser() / f"intuitive-physics-{VERSION}-seed{seed}-{num_train}-{num_val}-{image_size}px-{length}f"


def ensure_intuitive_physics_dataset(
    root: str | os.PathLike,
    seed: int = 0,
    num_train: int = 4000,
    num_val: int = 1000,
    image_size: int = 32,
    length: int = 24,
    episodes_per_shard: int = 250,
) -> Path:
    """Generate the possible intuitive-physics clips (training and validation; no impossible ones) under ``root`` once."""
    target = intuitive_physics_dir(root, seed, num_train, num_val, image_size, length)
    args = (seed, num_train, num_val, image_size, length, episodes_per_shard)
    return generated_videos(target, possible_clip, *args, CLASSES, "intuitive-physics videos")


def ensure_intuitive_physics_pairs(
    root: str | os.PathLike,
    seed: int = 0,
    pairs_per_type: int = 200,
    image_size: int = 32,
    length: int = 24,
    episodes_per_shard: int = 250,
) -> Path:
    """Write the evaluation pairs once (split ``test``, PNG frames): for each violation type, ``pairs_per_type`` pairs
    as two consecutive episodes, the possible clip then its impossible twin, each with ``pair_id``, ``violation``
    (index into the manifest's ``classes.violation``), ``variant``, ``violation_frame`` and ``impossible``. The scenes
    are drawn from the ``test`` split's seeds, so they are not the training scenes."""
    name = f"intuitive-physics-pairs-{VERSION}-seed{seed}-{pairs_per_type}x{len(VIOLATIONS)}"
    target = Path(root).expanduser() / f"{name}-{image_size}px-{length}f"
    if (target / MANIFEST).is_file():
        return target

    def episodes():
        pair_id = 0
        for v, violation in enumerate(VIOLATIONS):
            for i in range(pairs_per_type):
                p = pair(seed, "test", i, violation, image_size, length)
                meta = {"pair_id": pair_id, "violation": v, "variant": p["variant"], "violation_frame": p["violation_frame"]}
                yield {"frames": p["possible"], "states": p["possible_states"], **meta, "impossible": False}
                yield {"frames": p["impossible"], "states": p["impossible_states"], **meta, "impossible": True}
                pair_id += 1

    classes = {"violation": list(VIOLATIONS)}
    write_episodes(
        target,
        {"test": episodes()},
        episodes_per_shard,
        frame_format="png",
        classes=classes,
        extra={"pairs": pairs_per_type * len(classes["violation"])},
    )
    return target


class IntuitivePhysicsDataModule(GeneratedVideoDataModule):
    """The built-in intuitive-physics videos (see :mod:`data_modules.builtin.intuitive_physics`): possible clips only, written
    as shards on first use, for video objectives that later score surprise on impossible twins. Clips are labelled by
    the ball's speed bin (``label``: ``speed``)."""

    dataset_dir = staticmethod(intuitive_physics_dir)
    ensure_dataset = staticmethod(ensure_intuitive_physics_dataset)

    def __init__(self, **kwargs) -> None:
        """:class:`GeneratedVideoDataModule`'s arguments; the class count follows the speed bins unless given."""
        if kwargs.get("num_classes") is None:
            kwargs["num_classes"] = len(CLASSES["speed"])
        super().__init__(**kwargs)
