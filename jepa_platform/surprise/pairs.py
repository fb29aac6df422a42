"""Pairs of clips for surprise scoring, read from sequence shards (the built-in intuitive-physics pairs, or a user's).

A pair is two episodes with the same ``pair_id`` in ``episode.json``, one with ``"impossible": true``. Optional
metadata: ``violation`` (a type name, or an index into the manifest's ``classes.violation``; default
``unspecified``), ``violation_frame`` (the first frame that differs; plots mark it; default: found from the
pixels) and ``variant``. Episodes may carry ``actions.npy`` (world models that take actions need them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from data_modules.sequences import Episode
from data_modules.urls import expand_urls, iter_tar, open_url, read_manifest
from jepa_platform.errors import DataError

UNSPECIFIED = "unspecified"


@dataclass
class Pair:
    """A possible clip and its impossible twin: uint8 frames ``(T, C, H, W)``, optional actions ``(T-1, A)``."""

    pair_id: str
    violation: str
    variant: str
    violation_frame: int
    possible: Tensor
    impossible: Tensor
    possible_actions: Tensor | None = None
    impossible_actions: Tensor | None = None


@dataclass
class PairSet:
    pairs: list[Pair]
    types: list[str] = field(default_factory=list)  # violation types, in the manifest's order when it names them


def _violation(meta: dict, names: list[str], where: str) -> str:
    value = meta.get("violation", UNSPECIFIED)
    if isinstance(value, int):
        if not 0 <= value < len(names):
            raise DataError(
                f"{where}: violation index {value} is not in the manifest's classes.violation ({len(names)} names): fix the shard metadata"
            )
        return names[value]
    return str(value)


def first_difference(a: Tensor, b: Tensor) -> int:
    """The first frame where two clips differ (their length if they never do)."""
    differs = (a != b).flatten(1).any(dim=1).nonzero()
    return int(differs[0]) if len(differs) else len(a)


def read_pairs(spec: str, per_type: int | None = None, split: str = "test") -> PairSet:
    """Every complete pair of ``spec`` (a dataset directory, its ``split`` shards, a shard pattern or URLs), at most
    ``per_type`` of each violation type (the first ones), in pair order; one-line :class:`DataError` s for episodes
    that are not pairs."""
    urls = expand_urls(spec, "--pairs", split=split)
    manifest = read_manifest(spec) if "*" not in spec and not spec.endswith(".tar") else None
    names = list(((manifest or {}).get("classes") or {}).get("violation") or [])
    halves: dict[str, dict[bool, Episode]] = {}
    order: list[str] = []
    for url in urls:
        try:
            with open_url(url) as stream:
                for raw in iter_tar(stream):
                    episode = Episode(raw)
                    meta = episode.meta
                    where = f"{url} sample {raw['__key__']}"
                    if "pair_id" not in meta or "impossible" not in meta:
                        raise DataError(
                            f"{where} has no pair_id or impossible in episode.json: surprise pairs are two episodes with the same pair_id, "
                            "one with impossible=true (docs/surprise.md)"
                        )
                    key = str(meta["pair_id"])
                    if key not in halves:
                        halves[key] = {}
                        order.append(key)
                    side = bool(meta["impossible"])
                    if side in halves[key]:
                        raise DataError(
                            f"{where}: pair {key} has two {'impossible' if side else 'possible'} episodes: give each pair a unique pair_id"
                        )
                    halves[key][side] = episode
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read pairs from {url}: {type(exc).__name__}: {exc}: give sequence shards (jepa data inspect)") from exc
    pairs, taken = [], Counter()
    for key in order:
        if len(halves[key]) != 2:
            raise DataError(f"pair {key} of {spec} has only its {'impossible' if True in halves[key] else 'possible'} episode: write both")
        possible, impossible = halves[key][False], halves[key][True]
        violation = _violation(impossible.meta, names, f"pair {key}")
        if per_type is not None and taken[violation] >= per_type:
            continue
        a, b = possible.frames(range(possible.length)), impossible.frames(range(impossible.length))
        if a.shape != b.shape:
            raise DataError(f"pair {key}: the possible clip is {tuple(a.shape)}, the impossible one {tuple(b.shape)}: a pair's clips must match")
        frame = impossible.meta.get("violation_frame")
        actions = [None if e.actions is None else torch.from_numpy(np.asarray(e.actions, np.float32)) for e in (possible, impossible)]
        pairs.append(
            Pair(
                key,
                violation,
                str(impossible.meta.get("variant", violation)),
                int(frame) if frame is not None else first_difference(a, b),
                a,
                b,
                *actions,
            )
        )
        taken[violation] += 1
    if not pairs:
        raise DataError(f"{spec} holds no pairs: write pairs of episodes with pair_id and impossible (docs/surprise.md)")
    present = list(dict.fromkeys(p.violation for p in pairs))
    types = [n for n in names if n in present] + [t for t in present if t not in names]
    return PairSet(pairs, types)
