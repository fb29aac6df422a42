"""A LightningDataModule over WebDataset shards: multi-view training batches and labelled evaluation batches.

Training streams shards split by node and worker (or resampled with replacement), decodes safely, and yields a
fixed number of batches per epoch on every rank, so DDP ranks stay in step whatever the shard sizes. Validation
gives two labelled loaders: the validation set (index 0) and a kNN bank drawn from the training shards (index 1).
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import webdataset as wds
from braceexpand import braceexpand
from torch.utils.data import DataLoader, default_collate

from data_modules.decode import SampleDecoder
from data_modules.shards import MANIFEST
from jepa_platform.errors import ConfigError, DataError

log = logging.getLogger(__name__)
Transform = Callable


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def expand_shards(spec: str | Sequence[str], what: str = "shards") -> list[str]:
    """Shard URLs from paths, brace patterns (``train-{000..009}.tar``), globs, directories or remote URLs.

    Local shards must exist: a missing one raises :class:`DataError` naming the setting to fix.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in specs:
        for url in braceexpand(str(item)):
            if _is_remote(url):
                urls.append(url)
                continue
            path = Path(url).expanduser()
            if path.is_dir():
                found = sorted(str(p) for p in path.glob("*.tar"))
            elif any(c in url for c in "*?["):
                found = sorted(glob.glob(str(path)))
            else:
                found = [str(path)] if path.is_file() else []
            if not found:
                raise DataError(f"{what}: no shard at '{url}' (from '{item}'): fix the path or write the shards first")
            urls.extend(found)
    if not urls:
        raise DataError(f"{what} is empty: give a shard path, brace pattern, glob or directory")
    return urls


def _not_none(sample: dict | None) -> bool:
    return sample is not None


def manifest_samples(urls: Sequence[str]) -> int | None:
    """Total samples of ``urls`` from the ``manifest.json`` beside them, when they are exactly one split there."""
    dirs = {Path(u).parent for u in urls if not _is_remote(u)}
    if len(dirs) != 1 or len(urls) == 0 or not (next(iter(dirs)) / MANIFEST).is_file():
        return None
    directory = next(iter(dirs))
    for split in json.loads((directory / MANIFEST).read_text()).get("splits", {}).values():
        if {str(directory / name) for name in braceexpand(split["pattern"])} == {str(Path(u)) for u in urls}:
            return int(split["num_samples"])
    return None


class WebDatasetDataModule(L.LightningDataModule):
    """Multi-view image batches from WebDataset shards.

    Args:
        train_shards: shard paths, brace patterns, globs, directories or URLs.
        val_shards: labelled validation shards (optional).
        view_transform: transform applied to each view (uint8 CHW tensor in), or one transform per view.
        eval_transform: transform for validation and kNN-bank images.
        num_views: views per training sample.
        image_size: side of the images the transforms produce (configs of size-dependent encoders read it).
        batch_size: per-rank batch size.
        num_workers: DataLoader workers per rank.
        samples_per_epoch: samples per epoch over all ranks; defaults to the shards' manifest count.
        shuffle_buffer: samples held in the shuffle buffer.
        resample_shards: draw shards with replacement per worker instead of splitting them by node and worker.
        knn_bank_size: labelled training samples in the kNN bank loader (0 for none).
        label_key: field holding the integer label (``None`` for unlabelled data).
        num_classes: number of label classes, for probes.
        max_decode_error_rate: fraction of samples allowed to fail decoding before the run stops.
        seed: seed of shard and sample shuffling.
    """

    def __init__(
        self,
        train_shards: str | Sequence[str],
        val_shards: str | Sequence[str] | None = None,
        view_transform: Transform | Sequence[Transform] | None = None,
        eval_transform: Transform | None = None,
        num_views: int = 2,
        image_size: int | None = None,
        batch_size: int = 256,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 2000,
        resample_shards: bool = False,
        knn_bank_size: int = 5000,
        label_key: str | None = "cls",
        num_classes: int | None = None,
        max_decode_error_rate: float = 0.01,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(view_transform, Sequence) and len(view_transform) != num_views:
            raise ConfigError(f"data.view_transform lists {len(view_transform)} transforms for {num_views} views: give one, or one per view")
        if batch_size < 2:
            raise ConfigError(f"data.batch_size={batch_size}: joint-embedding losses need at least 2 samples per batch")
        self.train_shards, self.val_shards = train_shards, val_shards
        self.view_transforms = list(view_transform) if isinstance(view_transform, Sequence) else [view_transform] * num_views
        self.eval_transform = eval_transform
        self.num_views, self.image_size, self.batch_size = num_views, image_size, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.samples_per_epoch = num_workers, samples_per_epoch
        self.shuffle_buffer, self.resample_shards = shuffle_buffer, resample_shards
        self.knn_bank_size, self.label_key, self.num_classes = knn_bank_size, label_key, num_classes
        self.max_decode_error_rate, self.seed = max_decode_error_rate, seed
        self._train_urls: list[str] = []
        self._val_urls: list[str] = []

    # -- setup --------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self._train_urls = expand_shards(self.train_shards, "data.train_shards")
        self._val_urls = expand_shards(self.val_shards, "data.val_shards") if self.val_shards else []
        if self.samples_per_epoch is None:
            self.samples_per_epoch = manifest_samples(self._train_urls)
            if self.samples_per_epoch is None:
                raise ConfigError("data.samples_per_epoch is not set and the shards have no manifest.json: set it to the number of training samples")

    @property
    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _decoder(self) -> SampleDecoder:
        return SampleDecoder(label_key=self.label_key, max_error_rate=self.max_decode_error_rate)

    def _source(self, urls: list[str], train: bool) -> wds.WebDataset:
        decoder = self._decoder()
        if train and self.resample_shards:
            ds = wds.WebDataset(
                urls, resampled=True, shardshuffle=False, handler=decoder.handler, nodesplitter=None, seed=self.seed, empty_check=False
            )
        else:
            ds = wds.WebDataset(
                urls,
                shardshuffle=len(urls) if train else False,
                detshuffle=True,
                seed=self.seed,
                handler=decoder.handler,
                nodesplitter=wds.split_by_node,
                workersplitter=wds.split_by_worker,
                empty_check=False,
            )
        return ds.map(decoder).select(_not_none)

    # -- loaders ------------------------------------------------------------------------------------------------
    def _views(self, sample: dict) -> dict:
        out = {"views": [t(sample["image"]) for t in self.view_transforms]}
        if "label" in sample:
            out["label"] = sample["label"]
        return out

    def _eval(self, sample: dict) -> dict:
        return {**sample, "image": self.eval_transform(sample["image"])}

    def _loader(self, dataset, persistent: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=persistent and self.num_workers > 0,
            pin_memory=self.trainer is not None and self.trainer.strategy.root_device.type == "cuda",
        )

    def train_batches_per_epoch(self) -> tuple[int, int]:
        """``(batches per worker, batches per rank)`` per epoch; equal on every rank."""
        workers = max(self.num_workers, 1)
        per_rank = self.samples_per_epoch // (self._world_size * self.batch_size)
        per_worker = per_rank // workers
        if per_worker < 1:
            raise ConfigError(
                f"data.samples_per_epoch={self.samples_per_epoch} gives no batch per worker at batch_size={self.batch_size} "
                f"x {self._world_size} ranks x {workers} workers: raise samples_per_epoch or lower batch_size/num_workers"
            )
        return per_worker, per_worker * workers

    def train_dataloader(self) -> DataLoader:
        if not self._train_urls:
            self.setup("fit")
        shards_needed = self._world_size * max(self.num_workers, 1)
        if not self.resample_shards and len(self._train_urls) < shards_needed:
            raise ConfigError(
                f"{len(self._train_urls)} training shards cannot be split over {self._world_size} ranks x {max(self.num_workers, 1)} workers: "
                "write more shards, lower data.num_workers, or set data.resample_shards=true"
            )
        per_worker, per_rank = self.train_batches_per_epoch()
        ds = (
            self._source(self._train_urls, train=True)
            .compose(wds.detshuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), seed=self.seed))
            .map(self._views)
            .batched(self.batch_size, collation_fn=default_collate, partial=False)
            .with_epoch(per_worker)
            .with_length(per_rank, silent=True)
        )
        return self._loader(ds, persistent=True)

    def eval_dataloader(self, split: str, limit: int | None = None) -> DataLoader:
        """Labelled, un-augmented batches of ``split`` ("train" or "val"), at most about ``limit`` samples."""
        if not self._train_urls:
            self.setup("validate")
        if self.eval_transform is None:
            raise ConfigError("data.eval_transform is required for evaluation: set it (e.g. ToDtype + Normalize)")
        urls = {"train": self._train_urls, "val": self._val_urls}[split]
        if not urls:
            raise ConfigError(f"no {split} shards: set data.{split}_shards")
        ds = self._source(urls, train=False)
        if limit is not None:
            ds = ds.slice(max(limit // (self._world_size * max(self.num_workers, 1)), 1))
        ds = ds.map(self._eval).batched(self.val_batch_size, collation_fn=default_collate, partial=True)
        return self._loader(ds, persistent=False)

    def val_dataloader(self) -> list[DataLoader]:
        """Loader 0: validation set; loader 1: labelled kNN bank from the training shards (if enabled)."""
        if not self._val_urls:
            return []
        loaders = [self.eval_dataloader("val")]
        if self.knn_bank_size > 0 and self.label_key:
            loaders.append(self.eval_dataloader("train", limit=self.knn_bank_size))
        return loaders
