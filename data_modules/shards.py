"""Writing WebDataset shards atomically.

Shards are written into a temporary sibling directory and moved into place only when every shard and the
manifest are complete, so an interrupted write never leaves a half-written dataset that later runs would read,
and an existing complete dataset is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import webdataset as wds

from data_modules.urls import MANIFEST, read_manifest


def _pattern(prefix: str, num_shards: int) -> str:
    return f"{prefix}-{{{0:06d}..{num_shards - 1:06d}}}.tar"


def split_entry(prefix: str, counts: list[int]) -> dict:
    """A split's manifest entry: sample counts per shard (the epoch planner needs them) and the shards' pattern."""
    return {"num_samples": sum(counts), "num_shards": len(counts), "pattern": _pattern(prefix, len(counts)), "shard_samples": counts}


def shard_pattern(directory: str | os.PathLike, prefix: str, num_shards: int) -> str:
    """Brace pattern naming every shard, e.g. ``/data/train-{000000..000019}.tar``."""
    return f"{Path(directory)}/{_pattern(prefix, num_shards)}"


class ShardSink:
    """Writes samples into ``{prefix}-000000.tar``, ``-000001.tar``... starting a new shard at ``max_count`` samples
    or when the next sample would pass ``max_bytes``; :meth:`close` returns the split's manifest entry."""

    def __init__(self, directory: Path, prefix: str, max_count: int | None = None, max_bytes: int | None = None, mtime: float = 0.0) -> None:
        if not max_count and not max_bytes:
            raise ValueError("give max_count or max_bytes")
        self.directory, self.prefix, self.max_count, self.max_bytes, self.mtime = Path(directory), prefix, max_count, max_bytes, mtime
        self.counts: list[int] = []
        self.total_bytes = 0
        self._writer: wds.TarWriter | None = None
        self._bytes = 0

    def _next_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        path = self.directory / f"{self.prefix}-{len(self.counts):06d}.tar"
        self._writer = wds.TarWriter(str(path), mtime=self.mtime)
        self.counts.append(0)
        self._bytes = 0

    def write(self, sample: dict) -> None:
        # tar: a 512-byte header per field, data padded to 512 (the archive's end adds at most a 10 KiB record)
        size = sum(512 + -(-len(v if isinstance(v, bytes) else str(v).encode()) // 512) * 512 for k, v in sample.items() if k != "__key__")
        full = self._writer is None or (self.max_count and self.counts[-1] >= self.max_count)
        if full or (self.max_bytes and self.counts[-1] and self._bytes + size > self.max_bytes):
            self._next_shard()
        self._writer.write(sample)
        self.counts[-1] += 1
        self._bytes += size
        self.total_bytes += size

    def close(self) -> dict:
        if self._writer is not None:
            self._writer.close()
        return {**split_entry(self.prefix, self.counts), "bytes": self.total_bytes}


def _write_one(sample_fn: Callable[[int], dict], path: str, start: int, stop: int, mtime: float | None) -> int:
    with wds.TarWriter(path, mtime=mtime) as sink:
        for index in range(start, stop):
            sink.write(sample_fn(index))
    return stop - start


def write_split(
    sample_fn: Callable[[int], dict],
    directory: Path,
    prefix: str,
    num_samples: int,
    samples_per_shard: int,
    workers: int = 1,
    mtime: float | None = None,
) -> dict:
    """Write ``num_samples`` samples (``sample_fn(i)`` for each index) into shards under ``directory``.

    A fixed ``mtime`` for the tar members makes the shards byte-identical across runs (no write timestamps).
    """
    if num_samples <= 0 or samples_per_shard <= 0:
        raise ValueError(f"num_samples ({num_samples}) and samples_per_shard ({samples_per_shard}) must be positive")
    bounds = [(s, min(s + samples_per_shard, num_samples)) for s in range(0, num_samples, samples_per_shard)]
    paths = [str(directory / f"{prefix}-{k:06d}.tar") for k in range(len(bounds))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            starts, stops = zip(*bounds, strict=True)
            counts = list(pool.map(_write_one, [sample_fn] * len(bounds), paths, starts, stops, [mtime] * len(bounds)))
    else:
        counts = [_write_one(sample_fn, p, a, b, mtime) for p, (a, b) in zip(paths, bounds, strict=True)]
    return split_entry(prefix, counts)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_dataset_atomically(target: Path, write: Callable[[Path], dict]) -> dict:
    """Run ``write(tmp_dir) -> manifest`` and move the result to ``target``; keep ``target`` if already complete."""
    target = Path(target)
    if (target / MANIFEST).exists():
        return read_manifest(str(target))
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists without {MANIFEST} (an interrupted or foreign write): remove it or choose another directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        manifest = write(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private (0700): readable like any other output
        if target.exists():
            target.rmdir()
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same dataset first: use theirs
            if not (target / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_manifest(str(target))
