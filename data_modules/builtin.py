"""The built-in datasets (shape images, moving-shapes videos, intuitive-physics clips, two-rooms trajectories) as shards
in a cache directory, generated on first use."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import data_modules.intuitive_physics as intuitive_physics
import data_modules.moving_shapes as moving_shapes
import data_modules.shapes as shapes
from data_modules.images import ImageDataModule
from data_modules.sequences import SequenceDataModule, write_episodes
from data_modules.shards import shard_pattern, write_dataset_atomically, write_split
from data_modules.urls import MANIFEST
from jepa_platform.errors import ConfigError

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("JEPA_DATA_DIR", Path.home() / ".cache" / "jepa_platform"))


def shapes_dir(root: str | os.PathLike, seed: int, num_train: int, num_val: int, image_size: int) -> Path:
    return Path(root).expanduser() / f"shapes10-{shapes.VERSION}-seed{seed}-{num_train}-{num_val}-{image_size}px"


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
            split: write_split(shapes.make_sample_fn(seed, split, image_size), tmp, split, n, samples_per_shard, workers, mtime=0.0)
            for split, n in (("train", num_train), ("val", num_val))
        }
        log.info("generated %d samples in %.1fs", num_train + num_val, time.perf_counter() - start)
        return {"dataset": f"shapes10-{shapes.VERSION}", "seed": seed, "classes": list(shapes.CLASSES), "image_size": image_size, "splits": splits}

    write_dataset_atomically(target, write)
    return target


class ShapesDataModule(ImageDataModule):
    """The built-in 10-class shapes dataset (see :mod:`data_modules.shapes`), written as shards on first use."""

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
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.gen = {"seed": dataset_seed, "num_train": num_train, "num_val": num_val, "image_size": image_size}
        self.samples_per_shard = samples_per_shard
        directory = shapes_dir(self.root, **self.gen)
        kwargs.setdefault("num_classes", len(shapes.CLASSES))
        super().__init__(
            urls=shard_pattern(directory, "train", -(-num_train // samples_per_shard)),
            val_urls=shard_pattern(directory, "val", -(-num_val // samples_per_shard)),
            image_size=image_size,
            **kwargs,
        )

    def prepare_data(self) -> None:
        ensure_shapes_dataset(self.root, samples_per_shard=self.samples_per_shard, **self.gen)


def _generated_videos(
    target: Path, episode: Callable[..., dict], seed: int, num_train: int, num_val: int, image_size: int, length: int, episodes_per_shard: int,
    classes: dict[str, list[str]], what: str,
) -> Path:  # fmt: skip
    """Write ``episode(seed, split, index, image_size, length)`` for the train and val splits under ``target`` once
    (PNG frames); later calls find the manifest and return at once."""
    if (target / MANIFEST).is_file():
        return target
    start = time.perf_counter()
    log.info("generating the built-in %s into %s", what, target)
    splits = {split: (episode(seed, split, i, image_size, length) for i in range(n)) for split, n in (("train", num_train), ("val", num_val))}
    write_episodes(target, splits, episodes_per_shard, frame_format="png", classes=classes)
    log.info("generated %d episodes in %.1fs", num_train + num_val, time.perf_counter() - start)
    return target


def moving_shapes_dir(root: str | os.PathLike, seed: int, num_train: int, num_val: int, image_size: int, length: int) -> Path:
    return Path(root).expanduser() / f"moving-shapes-{moving_shapes.VERSION}-seed{seed}-{num_train}-{num_val}-{image_size}px-{length}f"


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
    return _generated_videos(target, moving_shapes.episode, *args, moving_shapes.CLASSES, "moving-shapes videos")


class GeneratedVideoDataModule(SequenceDataModule):
    """A built-in video dataset generated into a cache directory on first use (``prepare_data``): subclasses name
    its directory and writer (``dataset_dir``, ``ensure_dataset``). ``episodes_per_shard``: episodes per shard."""

    dataset_dir: Callable[..., Path]
    ensure_dataset: Callable[..., Path]

    def __init__(
        self,
        root: str | None,
        dataset_seed: int,
        num_train: int,
        num_val: int,
        image_size: int,
        length: int,
        episodes_per_shard: int,
        **kwargs,
    ) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.gen = {"seed": dataset_seed, "num_train": num_train, "num_val": num_val, "image_size": image_size, "length": length}
        self.episodes_per_shard = episodes_per_shard
        directory = type(self).dataset_dir(self.root, **self.gen)
        super().__init__(
            urls=shard_pattern(directory, "train", -(-num_train // episodes_per_shard)),
            val_urls=shard_pattern(directory, "val", -(-num_val // episodes_per_shard)),
            image_size=image_size,
            **kwargs,
        )

    def prepare_data(self) -> None:
        type(self).ensure_dataset(self.root, episodes_per_shard=self.episodes_per_shard, **self.gen)


class MovingShapesDataModule(GeneratedVideoDataModule):
    """The built-in moving-shapes videos (see :mod:`data_modules.moving_shapes`), written as shards on first use;
    clips are labelled by shape class (``label_key=label``) or motion direction (``label_key=motion``)."""

    dataset_dir = staticmethod(moving_shapes_dir)
    ensure_dataset = staticmethod(ensure_moving_shapes_dataset)

    def __init__(self, label_key: str, **kwargs) -> None:
        """``label_key`` (``label`` or ``motion``) and :class:`GeneratedVideoDataModule`'s arguments."""
        if label_key not in moving_shapes.CLASSES:
            raise ConfigError(f"data.label_key={label_key!r}: the moving-shapes episodes are labelled by {' or '.join(moving_shapes.CLASSES)}")
        if kwargs.get("num_classes") is None:
            kwargs["num_classes"] = len(moving_shapes.CLASSES[label_key])
        super().__init__(label_key=label_key, **kwargs)


def intuitive_physics_dir(root: str | os.PathLike, seed: int, num_train: int, num_val: int, image_size: int, length: int) -> Path:
    return Path(root).expanduser() / f"intuitive-physics-{intuitive_physics.VERSION}-seed{seed}-{num_train}-{num_val}-{image_size}px-{length}f"


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
    return _generated_videos(target, intuitive_physics.possible_clip, *args, intuitive_physics.CLASSES, "intuitive-physics videos")


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
    name = f"intuitive-physics-pairs-{intuitive_physics.VERSION}-seed{seed}-{pairs_per_type}x{len(intuitive_physics.VIOLATIONS)}"
    target = Path(root).expanduser() / f"{name}-{image_size}px-{length}f"
    if (target / MANIFEST).is_file():
        return target

    def episodes():
        pair_id = 0
        for v, violation in enumerate(intuitive_physics.VIOLATIONS):
            for i in range(pairs_per_type):
                p = intuitive_physics.pair(seed, "test", i, violation, image_size, length)
                meta = {"pair_id": pair_id, "violation": v, "variant": p["variant"], "violation_frame": p["violation_frame"]}
                yield {"frames": p["possible"], "states": p["possible_states"], **meta, "impossible": False}
                yield {"frames": p["impossible"], "states": p["impossible_states"], **meta, "impossible": True}
                pair_id += 1

    classes = {"violation": list(intuitive_physics.VIOLATIONS)}
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
    """The built-in intuitive-physics videos (see :mod:`data_modules.intuitive_physics`): possible clips only, written
    as shards on first use, for video objectives that later score surprise on impossible twins. Clips are labelled by
    the ball's speed bin (``label``: ``speed``)."""

    dataset_dir = staticmethod(intuitive_physics_dir)
    ensure_dataset = staticmethod(ensure_intuitive_physics_dataset)

    def __init__(self, **kwargs) -> None:
        """:class:`GeneratedVideoDataModule`'s arguments; the class count follows the speed bins unless given."""
        if kwargs.get("num_classes") is None:
            kwargs["num_classes"] = len(intuitive_physics.CLASSES["speed"])
        super().__init__(**kwargs)


def two_rooms_dir(
    root: str | os.PathLike, seed: int, num_train: int, num_val: int, image_size: int, length: int, env_tag: str, environment: str = "two_rooms"
) -> Path:
    name = environment.replace("_", "-")
    return Path(root).expanduser() / f"{name}-v1-seed{seed}-{num_train}-{num_val}-{image_size}px-{length}f-{env_tag}"


class NavigationDataModule(SequenceDataModule):
    """Exploratory trajectories of a navigation environment (``jepa data collect two_rooms``, or ``maze``), collected
    into the cache on first use; clips carry ``actions`` and ``states`` for world models. ``episodes_per_shard``
    counts episodes.

    Args:
        root: cache directory (default: the platform's cache).
        dataset_seed: seed of the collection.
        num_train, num_val: episodes per split.
        length: frames per episode.
        policy: exploration policy (``mixed``, ``random``, ``noisy_directional``).
        env: the environment's parameters (:class:`jepa_platform.world_model.envs.TwoRoomsEnv`,
            :class:`~jepa_platform.world_model.envs.MazeEnv`); ``image_size`` is the DataModule's.
        environment: the registered environment the episodes come from (``two_rooms``, ``maze``).
        **kwargs: :class:`~data_modules.sequences.SequenceDataModule` arguments.
    """

    def __init__(
        self,
        root: str | None,
        dataset_seed: int,
        num_train: int,
        num_val: int,
        image_size: int,
        length: int,
        policy: str,
        env: dict | None,
        episodes_per_shard: int,
        environment: str,
        **kwargs,
    ) -> None:
        self.environment = environment
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.env_kwargs = {**(env or {}), "image_size": image_size}
        tag = hashlib.blake2b(json.dumps(self.env_kwargs, sort_keys=True).encode(), digest_size=4).hexdigest()
        self.directory = two_rooms_dir(self.root, dataset_seed, num_train, num_val, image_size, length, f"{policy}-{tag}", environment)
        self.gen = {"episodes": num_train, "val_episodes": num_val, "length": length, "policy": policy, "seed": dataset_seed}
        self.episodes_per_shard = episodes_per_shard
        kwargs.setdefault("label_key", None)
        super().__init__(
            urls=shard_pattern(self.directory, "train", -(-num_train // episodes_per_shard)),
            val_urls=shard_pattern(self.directory, "val", -(-num_val // episodes_per_shard)),
            image_size=image_size,
            **kwargs,
        )

    def prepare_data(self) -> None:
        from data_modules.collect import collect

        if (self.directory / MANIFEST).is_file():
            return
        start = time.perf_counter()
        log.info("collecting %s trajectories into %s", self.environment, self.directory)
        collect(self.environment, self.directory, env_kwargs=self.env_kwargs, episodes_per_shard=self.episodes_per_shard, progress=False, **self.gen)
        log.info("collected %d episodes in %.1fs", self.gen["episodes"] + self.gen["val_episodes"], time.perf_counter() - start)


#: the name runs recorded before it served the maze too: their config.yaml still builds (jepa plan, jepa eval)
TwoRoomsDataModule = NavigationDataModule
