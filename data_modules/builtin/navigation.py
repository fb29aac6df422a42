"""The built-in navigation datasets: exploratory trajectories of two_rooms or the maze, collected into the cache on
first use (``jepa data collect`` writes the same from the command line)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from data_modules.builtin.cache import cache_root
from data_modules.sequences import SequenceDataModule
from data_modules.shards import shard_pattern
from data_modules.urls import MANIFEST

log = logging.getLogger(__name__)


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
        self.root = cache_root(root)
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
