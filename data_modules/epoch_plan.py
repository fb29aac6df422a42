"""Epoch plans over shards and the streaming dataset behind every DataModule.

Why not webdataset's pipeline: its ``with_epoch`` cuts an endless stream at a sample count, so an epoch neither
covers the data exactly once nor can be replayed after a restart. Here an epoch is a pure function of
``(seed, epoch, world size, workers, batch size, shard sizes)``:

1. the shards are shuffled with ``(seed, epoch)`` - the same order on every rank - and concatenated;
2. global worker ``g = rank * num_workers + worker`` reads one contiguous range of that sequence, sized so that
   every rank yields the same number of batches (the ranges are disjoint, so no sample is read twice);
3. samples pass a seeded shuffle buffer, then are decoded and augmented with the torch RNG seeded by
   ``(seed, epoch, g, sample index)``.

``exact`` epochs drop at most ``world_size * batch_size - 1`` samples (the tail of that epoch's shard order) and
need the shard sizes (manifest or local tar scan). ``resampled`` epochs draw whole shards with replacement per
worker, for unknown sizes or very large data. Bad samples, truncated tars and missing shards are skipped and
counted; each batch carries ``data_skipped`` (samples skipped since the worker's previous batch), and each training
batch its place in the plan, ``data_position`` = ``(epoch, index of the batch in the rank's epoch)``, which the
DataModule reads when the batch is trained on (its checkpointed position; no loop counters of the trainer).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_modules.urls import iter_tar, open_url, tar_has_end
from jepa_platform.errors import DataError
from jepa_platform.signals import ignore_in_worker

log = logging.getLogger(__name__)
Mode = Literal["exact", "resampled", "eval"]
MIN_RATE_SAMPLES = 1000  # the error rate of a smaller plan is measured against this many samples


@dataclass(frozen=True)
class ShardRange:
    """Samples ``[start, stop)`` of one shard (``stop=None``: to its end)."""

    url: str
    start: int = 0
    stop: int | None = None


def worker_batches(batches_per_rank: int, num_workers: int, worker: int) -> int:
    """Batches worker ``worker`` yields: the DataLoader takes batch ``i`` of a rank from worker ``i % num_workers``."""
    return len(range(worker, batches_per_rank, num_workers))


def _samples_needed(batches: int, batch_size: int, items_per_sample: int) -> int:
    return -(-batches * batch_size // items_per_sample)


def exact_batches_per_rank(total: int, world_size: int, num_workers: int, batch_size: int, items_per_sample: int = 1) -> int:
    """The most batches per rank that ``total`` samples give every rank without reading any sample twice."""
    n = total * items_per_sample // (world_size * batch_size)
    while (
        n > 0
        and world_size * sum(_samples_needed(worker_batches(n, num_workers, w), batch_size, items_per_sample) for w in range(num_workers)) > total
    ):
        n -= 1
    return n


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    return [int(i) for i in np.random.default_rng([seed, epoch, 7]).permutation(num_shards)]


def ranges_between(urls: list[str], sizes: list[int], order: list[int], begin: int, end: int) -> list[ShardRange]:
    """Ranges covering samples ``[begin, end)`` of the shards concatenated in ``order``."""
    out, pos = [], 0
    for i in order:
        lo, hi = max(begin, pos), min(end, pos + sizes[i])
        if lo < hi:
            out.append(ShardRange(urls[i], lo - pos, hi - pos))
        pos += sizes[i]
        if pos >= end:
            break
    return out


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(np.asarray(parts, np.int64).tobytes(), digest_size=8).digest(), "little") >> 1


def shuffled(samples: Iterable[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Reservoir-style shuffle buffer holding ``size`` samples; flushes what is left when the source ends."""
    if size <= 1:
        yield from samples
        return
    buf: list[dict] = []
    for sample in samples:
        if len(buf) < size:
            buf.append(sample)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = sample
    rng.shuffle(buf)
    yield from buf


@contextmanager
def seeded_torch(seed: int, in_worker: bool):
    """Seed the global CPU torch RNG (torchvision transforms draw from it); restore it afterwards in the main process.

    The CPU generator only: ``torch.manual_seed`` also queues the seeding of every accelerator backend, recording a
    stack trace each time, which cost more per sample than decoding it (``benchmarks/data_path.py``)."""
    generator = torch.default_generator
    if in_worker:
        generator.manual_seed(seed)
        yield
        return
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


class ErrorBudget:
    """Counts skipped samples; stops the run when they exceed ``max_error_rate`` of the samples the worker plans to
    read this epoch (``expected``) or has read, whichever is more."""

    def __init__(self, max_error_rate: float, where: str, expected: int) -> None:
        self.max_error_rate, self.where, self.expected = max_error_rate, where, expected
        self.seen = self.failed = self.unreported = 0
        self._counted: set[str] = set()

    def ok(self) -> None:
        self.seen += 1

    def skip(self, count: int, what: str, exc: BaseException | str) -> None:
        """Count ``count`` unreadable samples at ``what``; a place already counted (a top-up re-read) is not again."""
        if what in self._counted:
            return
        self._counted.add(what)
        self.seen += count
        self.failed += count
        self.unreported += count
        if len(self._counted) <= 20:
            log.warning("%s: skipped %d sample(s): %s: %s", self.where, count, what, exc)
        # against the worker's planned samples until it has read more: clustered early failures do not stop a run
        # whose epoch stays under the bound, and a run that will pass it stops as soon as that is certain
        if self.failed > self.max_error_rate * max(self.seen, self.expected, MIN_RATE_SAMPLES):
            raise DataError(
                f"{self.failed} of {self.seen} samples could not be read ({self.where}; last: {what}: {exc}): "
                f"fix or re-write the shards, or raise data.max_error_rate (now {self.max_error_rate})"
            )

    def take_unreported(self) -> int:
        n, self.unreported = self.unreported, 0
        return n


class ShardStream(IterableDataset):
    """Batches from shards following the epoch plan described in the module docstring.

    ``process(raw_sample) -> list of items`` decodes and augments one sample (``items_per_sample`` items, e.g. clips
    of an episode); ``collate(list of items) -> dict`` makes a batch (the hook for mask samplers). The dataset is
    re-iterated once per epoch (persistent workers keep their copy): iteration ``e`` plays epoch
    ``start_epoch + e``, and the first one skips ``skip_batches`` batches (mid-epoch resume).
    """

    def __init__(
        self,
        urls: list[str],
        sizes: list[int] | None,
        process: Callable[[dict], list[Any]],
        collate: Callable[[list[Any]], dict],
        *,
        mode: Mode,
        batch_size: int,
        batches_per_rank: int | None = None,
        items_per_sample: int = 1,
        world_size: int = 1,
        rank: int = 0,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 0,
        start_epoch: int = 0,
        skip_batches: int = 0,
        limit: int | None = None,
        max_error_rate: float = 0.01,
    ) -> None:
        super().__init__()
        self.urls, self.sizes, self.process, self.collate = urls, sizes, process, collate
        self.mode, self.batch_size, self.batches_per_rank = mode, batch_size, batches_per_rank
        self.items_per_sample, self.world_size, self.rank = items_per_sample, world_size, rank
        self.num_workers, self.seed, self.shuffle_buffer = num_workers, seed, shuffle_buffer
        self.start_epoch, self.skip_batches, self.limit = start_epoch, skip_batches, limit
        self.max_error_rate = max_error_rate
        self.iterations = 0  # epochs started; a resume position applies before the first
        if mode != "eval" and not batches_per_rank:
            raise ValueError("training streams need batches_per_rank >= 1")

    def __len__(self) -> int:
        if self.mode == "eval":
            raise TypeError("evaluation streams have no fixed length")
        return self.batches_per_rank

    # -- plan ---------------------------------------------------------------------------------------------------
    @property
    def _workers(self) -> int:
        return max(self.num_workers, 1)

    def worker_ranges(self, epoch: int, worker: int) -> list[ShardRange]:
        """The shard ranges global worker ``rank * workers + worker`` reads in ``epoch`` (exact and eval modes)."""
        workers, g = self._workers, self.rank * self._workers + worker
        num_global = self.world_size * workers
        order = shard_order(len(self.urls), self.seed, epoch) if self.mode == "exact" else list(range(len(self.urls)))
        if self.sizes is None:  # unknown sizes: whole shards, round robin
            return [ShardRange(self.urls[i]) for i in order[g::num_global]]
        if self.mode == "eval":
            total = sum(self.sizes) if self.limit is None else min(self.limit, sum(self.sizes))
            return ranges_between(self.urls, self.sizes, order, total * g // num_global, total * (g + 1) // num_global)
        quotas = [_samples_needed(worker_batches(self.batches_per_rank, workers, w), self.batch_size, self.items_per_sample) for w in range(workers)]
        begin = self.rank * sum(quotas) + sum(quotas[:worker])
        return ranges_between(self.urls, self.sizes, order, begin, begin + quotas[worker])

    # -- reading ------------------------------------------------------------------------------------------------
    def _read(self, shard: ShardRange, budget: ErrorBudget) -> Iterator[dict]:
        expected = None if shard.stop is None else shard.stop - shard.start
        got = 0
        if not tar_has_end(shard.url):
            # cut short (an interrupted copy): tarfile would read it to the cut without a word, and without a manifest
            # the lost samples cannot be counted: at least the one cut in half is, once per epoch and reader
            budget.skip(1, f"truncated tar {shard.url}", "no end-of-archive marker: the file was cut short; re-copy or re-write it")
        try:
            stream = open_url(shard.url)
        except (OSError, ValueError) as exc:
            budget.skip(expected or 1, f"cannot open shard {shard.url}", exc)
            return
        try:
            for j, sample in enumerate(iter_tar(stream)):
                if j < shard.start:
                    continue
                if shard.stop is not None and j >= shard.stop:
                    break
                sample["__url__"] = shard.url
                got += 1
                yield sample
        except (tarfile.TarError, OSError, EOFError) as exc:
            budget.skip(max((expected or 0) - got, 1), f"unreadable tar {shard.url} after {got} samples", exc)
            return
        finally:
            stream.close()
        if expected is not None and got < expected:
            budget.skip(expected - got, f"shard {shard.url} ended early", f"{got} of {expected} samples")

    def _planned(self, ranges: list[ShardRange], budget: ErrorBudget, rng: random.Random) -> Iterator[dict]:
        """The worker's ranges, shuffled; read again (shuffled anew) only to top up after skipped samples."""
        if not ranges:
            return
        for rounds in itertools.count():
            produced = 0
            for sample in shuffled(self._read_all(ranges, budget), self.shuffle_buffer, rng):
                produced += 1
                yield sample
            if produced == 0:
                raise DataError(f"{budget.where}: none of its shards could be read (first: {ranges[0].url}): check data.urls")
            if self.mode == "eval":  # evaluation reads its ranges once; only training streams top up
                return
            if rounds == 0:
                log.warning(
                    "%s: read its range again to top up after %d skipped samples (some samples repeat this epoch)", budget.where, budget.failed
                )

    def _read_all(self, ranges: list[ShardRange], budget: ErrorBudget) -> Iterator[dict]:
        for shard in ranges:
            yield from self._read(shard, budget)

    def _resampled(self, budget: ErrorBudget, rng: random.Random) -> Iterator[dict]:
        empty_in_a_row = 0
        while True:
            produced = 0
            for sample in self._read(ShardRange(rng.choice(self.urls)), budget):
                produced += 1
                yield sample
            empty_in_a_row = 0 if produced else empty_in_a_row + 1
            if empty_in_a_row > 10 + len(self.urls):
                raise DataError(f"{budget.where}: {empty_in_a_row} shards in a row gave no samples (last: {self.urls[-1]}): check data.urls")

    # -- items and batches ------------------------------------------------------------------------------------
    def _items(self, raw: Iterator[dict], epoch: int, g: int, skip_items: int, budget: ErrorBudget, in_worker: bool) -> Iterator[Any]:
        k = self.items_per_sample
        for i, sample in enumerate(raw):
            if skip_items >= k:
                skip_items -= k
                continue
            try:
                with seeded_torch(derive_seed(self.seed, epoch, g, i), in_worker):
                    items = self.process(sample)
            except DataError:
                raise
            except Exception as exc:
                budget.skip(1, f"bad sample {sample.get('__url__', '?')}:{sample.get('__key__', '?')}", exc)
                continue
            budget.ok()
            yield from items[skip_items:]
            skip_items = 0

    def __iter__(self) -> Iterator[dict]:
        epoch = self.start_epoch + self.iterations
        skip = self.skip_batches if self.iterations == 0 else 0
        self.iterations += 1
        info = get_worker_info()
        if info is not None:  # a scheduler's stop signal is for the main process, which shuts its workers down
            ignore_in_worker()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self._workers:
            raise RuntimeError(f"stream built for {self._workers} workers is read by {info.num_workers}")
        # A resumed loader starts at worker 0 while the interrupted one would continue with worker skip % W: worker w
        # plays the part of worker (w + skip) % W, so that batches come out in the original order.
        role = (worker + skip) % self._workers
        g = self.rank * self._workers + role
        rng = random.Random(derive_seed(self.seed, epoch, g, 1))
        ranges = self.worker_ranges(epoch, role) if self.mode != "resampled" else []
        if self.mode == "eval" or (self.sizes is None and self.mode == "exact"):
            expected = sum((r.stop or 0) - r.start for r in ranges)
        else:
            expected = _samples_needed(worker_batches(self.batches_per_rank, self._workers, role), self.batch_size, self.items_per_sample)
        budget = ErrorBudget(self.max_error_rate, f"rank {self.rank} worker {worker}", expected)
        raw = self._resampled(budget, rng) if self.mode == "resampled" else self._planned(ranges, budget, rng)
        in_worker = info is not None
        seeds = (derive_seed(self.seed, epoch, g, 2, n) for n in itertools.count())
        if self.mode == "eval":
            yield from self._batches(self._items(raw, epoch, g, 0, budget, in_worker), None, budget, seeds, in_worker)
            return
        count = worker_batches(self.batches_per_rank, self._workers, role)
        skipped = worker_batches(skip, self._workers, role)
        items = self._items(raw, epoch, g, skipped * self.batch_size, budget, in_worker)
        # the DataLoader takes batch i of a rank from worker i % W: this worker's k-th batch is the rank's k * W + role
        positions = ((epoch, k * self._workers + role) for k in itertools.count(skipped))
        yield from self._batches(items, count - skipped, budget, itertools.islice(seeds, skipped, None), in_worker, positions)

    def _batches(
        self,
        items: Iterator[Any],
        count: int | None,
        budget: ErrorBudget,
        seeds: Iterator[int],
        in_worker: bool,
        positions: Iterator[tuple[int, int]] | None = None,
    ) -> Iterator[dict]:
        if count is not None and count <= 0:
            return
        batch, made = [], 0
        for item in items:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield self._collate(batch, budget, next(seeds), in_worker, next(positions) if positions else None)
                batch, made = [], made + 1
                if made == count:
                    return
        if batch and count is None:
            yield self._collate(batch, budget, next(seeds), in_worker, None)

    def _collate(self, batch: list[Any], budget: ErrorBudget, seed: int, in_worker: bool, position: tuple[int, int] | None) -> dict:
        # The collate hook may draw random numbers (mask samplers): seeded per batch, so that masks replay exactly
        # on resume and do not depend on which worker or process assembles the batch.
        with seeded_torch(seed, in_worker):
            out = self.collate(batch)
        out["data_skipped"] = torch.tensor(budget.take_unreported())
        if position is not None:
            out["data_position"] = torch.tensor(position)
        return out
