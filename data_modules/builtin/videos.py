"""The base of the built-in video datasets: episodes generated into the cache on first use, read as sequence shards."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from data_modules.builtin.cache import cache_root
from data_modules.sequences import SequenceDataModule, write_episodes
from data_modules.shards import shard_pattern
from data_modules.urls import MANIFEST

log = logging.getLogger(__name__)


def generated_videos(
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
        self.root = cache_root(root)
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
