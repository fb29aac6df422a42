"""The LightningDataModule base shared by image and sequence data: URLs, epoch length, loaders, resume.

Subclasses say how one raw sample becomes training items (``train_process``) and evaluation items
(``eval_process``); this class plans epochs (see :mod:`data_modules.epoch_plan`) and builds the DataLoaders.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate

from data_modules.epoch_plan import ShardStream, exact_batches_per_rank
from data_modules.urls import dataset_split, expand_urls, is_remote, read_manifest, shard_sizes
from jepa_platform.errors import ConfigError
from jepa_platform.transfer import PlainBatchTransfer

log = logging.getLogger(__name__)
EpochMode = Literal["exact", "resampled"]


def rank_and_world(trainer: L.Trainer | None) -> tuple[int, int]:
    """``(rank, world size)`` from the trainer, else from an initialised process group, else ``(0, 1)``."""
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def auto_workers(decode_only: bool = False) -> int:
    """DataLoader workers per rank from the machine: the CPUs this process may use, shared by the node's ranks
    (``LOCAL_WORLD_SIZE``), less one for the training process itself, at most 8. Workers that only decode (views made
    on the device) need half as many, none on 2 CPUs. Measured on 2 cores (benchmarks/README.md): more workers than
    that slow the training process down more than they speed decoding up."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = max(cpus // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1), 1)
    workers = max(1, min(8, per_rank - 1))
    return workers // 2 if decode_only else workers  # decoding alone fits in the training process on 2 CPUs


@dataclass(frozen=True)
class DataPosition:
    """Where training stands in the epoch plan: ``epoch`` and the batches of it already trained on this rank, with
    the plan they count in (a position means the same batches only under the same plan)."""

    epoch: int = 0
    batches: int = 0
    world_size: int = 1
    batch_size: int = 0
    num_workers: int = 0
    batches_per_rank: int = 0
    seed: int = 0

    def continued(self, plan: DataPosition) -> DataPosition:
        """This position carried into ``plan`` (this run's settings): the next epoch after a finished one; after a
        change of world size, batch size or epoch length, the same share of the interrupted epoch (not exact)."""
        epoch, batches = self.epoch, self.batches
        if self.batches_per_rank and batches >= self.batches_per_rank:
            epoch, batches = epoch + 1, 0
        same = (self.world_size, self.batch_size, self.num_workers, self.batches_per_rank, self.seed) == (
            plan.world_size,
            plan.batch_size,
            plan.num_workers,
            plan.batches_per_rank,
            plan.seed,
        )
        if not same and batches:
            samples = batches * self.world_size * self.batch_size
            batches = min(samples // max(plan.world_size * plan.batch_size, 1), max(plan.batches_per_rank - 1, 0))
            log.warning(
                "the data plan changed since the checkpoint (world size, batch size, workers, epoch length or seed): "
                "epoch %d continues after %d batches per rank, and is no longer the same batches as the interrupted run",
                epoch,
                batches,
            )
        return replace(plan, epoch=epoch, batches=batches)


class StreamingDataModule(PlainBatchTransfer):
    """Shards in, fixed-length training epochs and labelled evaluation batches out.

    Args:
        urls: training shards: paths, brace patterns, globs, a dataset directory (its ``train`` split), ``pipe:``
            commands or fsspec URLs (``s3://``, ``gs://``, ``file://``...).
        val_urls: evaluation shards; ``None`` takes the ``val`` split when ``urls`` is a dataset directory.
        batch_size: per-rank batch size.
        val_batch_size: per-rank evaluation batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes per rank, or ``"auto"`` (:func:`auto_workers`).
        epoch_mode: ``exact`` (every sample once per epoch, minus a remainder under ``world_size * batch_size``)
            or ``resampled`` (shards drawn with replacement; for unknown shard sizes or endless data).
        batches_per_epoch: explicit per-rank epoch length; wins over ``samples_per_epoch``.
        samples_per_epoch: epoch length over all ranks; default: all samples (exact) / the shard total.
        shuffle_buffer: samples held per worker for shuffling.
        max_error_rate: fraction of unreadable samples after which the run stops.
        seed: fixes shard order, shuffling and augmentation of every epoch.
        collate: ``list of items -> batch dict`` hook (e.g. a mask sampler); default ``default_collate``.
    """

    items_per_sample = 1
    #: labelled training samples in the kNN-bank validation loader (subclasses with labels set it)
    knn_bank_size = 0
    #: field (or episode metadata key) holding the integer label; ``None``: unlabelled
    label_key: str | None = None

    def __init__(
        self,
        urls: str | Sequence[str],
        val_urls: str | Sequence[str] | None,
        batch_size: int,
        val_batch_size: int | None,
        num_workers: int | str,
        epoch_mode: EpochMode,
        batches_per_epoch: int | None,
        samples_per_epoch: int | None,
        shuffle_buffer: int,
        max_error_rate: float,
        seed: int,
        collate: Callable[[list[Any]], dict] | None,
    ) -> None:
        super().__init__()
        if epoch_mode not in ("exact", "resampled"):
            raise ConfigError(f"data.epoch_mode={epoch_mode!r}: use exact or resampled")
        if batch_size < 2:
            raise ConfigError(f"data.batch_size={batch_size}: joint-embedding losses need at least 2 samples per batch")
        if num_workers == "auto":
            num_workers = auto_workers()
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers!r}: give a number >= 0, or auto")
        self.urls, self.val_urls = urls, val_urls
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.epoch_mode = num_workers, epoch_mode
        self.batches_per_epoch, self.samples_per_epoch = batches_per_epoch, samples_per_epoch
        self.shuffle_buffer, self.max_error_rate, self.seed = shuffle_buffer, max_error_rate, seed
        self.collate = collate or default_collate
        self._train_urls: list[str] = []
        self._val_urls: list[str] = []
        self._sizes: dict[str, list[int] | None] = {}
        self._dataset_dir = self._find_dataset_dir()
        self.manifest = read_manifest(self._dataset_dir) if self._dataset_dir else None
        self._train: ShardStream | None = None
        self._restored: DataPosition | None = None
        self._trained: Tensor | None = None  # data_position (epoch, index) of the last trained batch

    # -- hooks for subclasses -----------------------------------------------------------------------------------
    def train_process(self) -> Callable[[dict], list[Any]]:
        raise NotImplementedError

    def eval_process(self) -> Callable[[dict], list[Any]]:
        raise NotImplementedError

    def val_dataloader(self) -> list:
        """Loader 0: the validation split; loader 1: a labelled kNN bank from the training shards (if labelled)."""
        self.setup("validate")
        if not self._val_urls:
            return []
        loaders = [self.eval_dataloader("val")]
        if self.knn_bank_size > 0 and self.label_key:
            loaders.append(self.eval_dataloader("train", limit=self.knn_bank_size))
        return loaders

    # -- setup --------------------------------------------------------------------------------------------------
    def _find_dataset_dir(self) -> str | None:
        """The directory ``urls`` names, if it names one (its manifest gives class names and the val split)."""
        if isinstance(self.urls, str) and not self.urls.endswith(".tar") and "{" not in self.urls:
            return self.urls if is_remote(self.urls) else str(Path(self.urls).expanduser())
        return None

    def setup(self, stage: str | None = None) -> None:
        if self._train_urls:
            return
        self._train_urls = expand_urls(self.urls, "data.urls", split="train")
        val = self.val_urls
        if val is None and self.manifest and "val" in self.manifest.get("splits", {}):
            val = dataset_split(self._dataset_dir, "val", self.manifest)
        self._val_urls = expand_urls(val, "data.val_urls", split="val") if val else []
        self._sizes = {"train": shard_sizes(self._train_urls), "val": shard_sizes(self._val_urls) if self._val_urls else None}

    @property
    def _rank_world(self) -> tuple[int, int]:
        return rank_and_world(self.trainer)

    def train_batches_per_rank(self) -> int:
        """Batches every rank trains on per epoch (equal on all ranks)."""
        self.setup("fit")
        _, world = self._rank_world
        sizes, workers, k = self._sizes["train"], max(self.num_workers, 1), self.items_per_sample
        exact_max = exact_batches_per_rank(sum(sizes), world, workers, self.batch_size, k) if sizes is not None else None
        if self.batches_per_epoch:
            n = self.batches_per_epoch
        elif self.samples_per_epoch:
            n = self.samples_per_epoch * k // (world * self.batch_size)
        elif exact_max is not None:
            n = exact_max
        else:
            raise ConfigError(
                "the shard sizes are unknown (no manifest.json beside remote shards): set data.samples_per_epoch or data.batches_per_epoch"
            )
        if self.epoch_mode == "exact" and exact_max is not None and n > exact_max:
            raise ConfigError(
                f"an exact epoch of {n} batches per rank needs more samples than the {sum(sizes)} in data.urls "
                f"({exact_max} batches of {self.batch_size} per rank x {world} ranks): lower the epoch length or set data.epoch_mode=resampled"
            )
        if sizes is not None and sum(sizes) == 0:
            raise ConfigError(f"data.urls has no samples ({len(sizes)} shards, all empty or unreadable): check the shards with jepa data inspect")
        if n < 1:
            raise ConfigError(
                f"no full batch per rank: {sum(sizes or [0])} samples, batch_size={self.batch_size}, {world} ranks: lower data.batch_size"
            )
        if self.epoch_mode == "exact" and sizes is None:
            log.warning("shard sizes unknown: exact epochs assign whole shards round robin and may repeat or miss samples; write a manifest")
        return n

    # -- loaders ------------------------------------------------------------------------------------------------
    def _loader(self, stream: ShardStream, persistent: bool) -> DataLoader:
        trainer = self.trainer
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=persistent and self.num_workers > 0,
            pin_memory=trainer is not None and trainer.strategy.root_device.type == "cuda",
            prefetch_factor=4 if self.num_workers > 0 else None,
        )

    def _stream(self, urls: list[str], sizes: list[int] | None, process: Callable, collate: Callable, **plan: Any) -> ShardStream:
        """A stream of this rank with the settings every stream shares (rank, workers, seed, error bound)."""
        rank, world = self._rank_world
        return ShardStream(
            urls,
            sizes,
            process,
            collate,
            world_size=world,
            rank=rank,
            num_workers=self.num_workers,
            seed=self.seed,
            max_error_rate=self.max_error_rate,
            **plan,
        )

    def train_stream(self, start_epoch: int = 0, skip_batches: int = 0) -> ShardStream:
        """The training dataset of this rank; ``start_epoch``/``skip_batches`` replay a run from a position."""
        n = self.train_batches_per_rank()
        _, world = self._rank_world
        sizes = self._sizes["train"]
        if self.epoch_mode == "exact" and sizes is None and len(self._train_urls) < world * max(self.num_workers, 1):
            raise ConfigError(
                f"{len(self._train_urls)} shards cannot be split over {world} ranks x {max(self.num_workers, 1)} workers: "
                "write more shards, lower data.num_workers, or set data.epoch_mode=resampled"
            )
        return self._stream(
            self._train_urls,
            sizes,
            self.train_process(),
            self.collate,
            mode=self.epoch_mode,
            batch_size=self.batch_size,
            batches_per_rank=n,
            items_per_sample=self.items_per_sample,
            shuffle_buffer=self.shuffle_buffer,
            start_epoch=start_epoch,
            skip_batches=skip_batches,
        )

    def train_dataloader(self) -> DataLoader:
        self._train = self.train_stream()
        self._place(self._train)
        return self._loader(self._train, persistent=True)

    # -- resumable state ----------------------------------------------------------------------------------------
    # The data position is checkpointed with the model (Lightning stores a DataModule's state_dict in every
    # checkpoint) instead of being read from the trainer's loops when the loader is built: Lightning builds the
    # loader before it restores its loops whenever something asks for ``estimated_stepping_batches`` first. The
    # position is the one the last trained batch carries (``data_position``, written by the epoch plan), so the
    # DataModule reads nothing of the trainer's loops.
    def _plan(self) -> DataPosition:
        _, world = self._rank_world
        return DataPosition(0, 0, world, self.batch_size, self.num_workers, self.train_batches_per_rank(), self.seed)

    def _place(self, stream: ShardStream) -> None:
        """Start ``stream`` at the restored position (if any); only before its first iteration."""
        if self._restored is not None and stream.iterations == 0:
            position = self._restored.continued(self._plan())
            stream.start_epoch, stream.skip_batches = position.epoch, position.batches
            if position.batches:
                log.info("resuming epoch %d after %d batches: those are re-read and dropped, not decoded", position.epoch, position.batches)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch hands over its place in the plan: after it, ``epoch`` has ``index + 1`` batches done."""
        if isinstance(batch, dict) and "data_position" in batch:
            batch = dict(batch)
            self._trained = batch.pop("data_position")  # (epoch, index): read when a checkpoint is written
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self.trainer is None:
            return {}
        if self._trained is not None:
            epoch, index = self._trained.tolist()  # a host tensor of the loader, never on the device
            done = index + 1
        elif self._restored is not None:  # saved before a resumed run trained a batch: where it resumes
            epoch, done = self._restored.epoch, self._restored.batches
        else:
            epoch, done = 0, 0
        return {"position": asdict(replace(self._plan(), epoch=epoch, batches=done))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "position" in state_dict:
            self._restored = DataPosition(**state_dict["position"])
            if self._train is not None:
                self._place(self._train)

    def eval_dataloader(self, split: str, limit: int | None = None) -> DataLoader:
        """Un-augmented batches of ``split`` ("train" or "val"), each sample once over all ranks; at most ``limit``."""
        self.setup("validate")
        urls = {"train": self._train_urls, "val": self._val_urls}[split]
        if not urls:
            raise ConfigError(f"no {split} shards: set data.{'urls' if split == 'train' else 'val_urls'}")
        stream = self._stream(
            urls, self._sizes[split], self.eval_process(), default_collate, mode="eval", batch_size=self.val_batch_size, limit=limit
        )
        return self._loader(stream, persistent=False)
