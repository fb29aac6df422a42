"""Sequence data (videos, robot or agent trajectories) in shards, and clips sampled from them.

One shard sample is one episode: ``frames.npy`` (T, H, W, C) uint8 *or* one encoded image per frame
(``frame_00000.png``, ``frame_00001.jpg``...), optional ``actions.npy`` (T or T-1, A) where action ``t`` is taken at
frame ``t``, optional ``states.npy`` (T, S), and ``episode.json`` (``{"episode_id": ..., "length": T, ...}``).
:func:`write_episodes` writes them; :class:`SequenceDataModule` serves clips for video JEPA and world models.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from data_modules.datamodule import StreamingDataModule
from data_modules.decode import IMAGE_EXTS, decode_image, decode_npy, encode_image
from data_modules.shards import ShardSink, write_dataset_atomically
from jepa_platform.errors import ConfigError

FRAME_FIELD = re.compile(r"^frame_(\d+)\.(png|jpg|jpeg|webp)$")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def episode_sample(index: int, episode: dict, frame_format: str = "npy", quality: int = 95) -> dict:
    """A shard sample from ``{"frames": (T, H, W, C) uint8, "actions"?: (T|T-1, A), "states"?: (T, S), "episode_id"?, ...}``."""
    frames = np.asarray(episode["frames"])
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"episode {index}: frames must be uint8 (T, H, W, C), got {frames.dtype} {frames.shape}")
    meta = {k: v for k, v in episode.items() if k not in ("frames", "actions", "states")}
    meta.setdefault("episode_id", index)
    meta["length"] = len(frames)
    sample: dict[str, Any] = {"__key__": f"ep{index:08d}", "episode.json": json.dumps(meta).encode()}
    if frame_format == "npy":
        sample["frames.npy"] = _npy(frames)
    else:
        for t, frame in enumerate(frames):
            sample[f"frame_{t:05d}.{frame_format}"] = encode_image(Image.fromarray(frame), frame_format, quality)
    for key in ("actions", "states"):
        if episode.get(key) is not None:
            sample[f"{key}.npy"] = _npy(np.asarray(episode[key], np.float32))
    return sample


def write_episodes(
    out_dir: str | Path,
    splits: dict[str, Iterable[dict]],
    episodes_per_shard: int = 64,
    frame_format: str = "npy",
    quality: int = 95,
    classes: dict[str, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict:
    """Write episodes per split (``{"train": iterable, "val": iterable}``) as shards with a manifest, atomically.

    ``classes`` names the values of integer metadata labels (``{"label": [...]}``) for the manifest; ``extra`` adds
    JSON-serialisable entries to it (how the data was made, e.g. ``collection``)."""

    def write(tmp: Path) -> dict:
        entries = {}
        for split, episodes in splits.items():
            sink = ShardSink(tmp, split, max_count=episodes_per_shard)
            for i, episode in enumerate(episodes):
                sink.write(episode_sample(i, episode, frame_format, quality))
            entries[split] = sink.close()
        return {"kind": "sequences", "frame_format": frame_format, "splits": entries, **({"classes": classes} if classes else {}), **(extra or {})}

    return write_dataset_atomically(Path(out_dir), write)


class Episode:
    """Lazy view of a raw episode sample: decodes only the frames a clip uses."""

    def __init__(self, raw: dict) -> None:
        self.raw = raw
        self.meta = json.loads(raw["episode.json"]) if "episode.json" in raw else {}
        frame_fields = sorted((int(m.group(1)), k) for k in raw if (m := FRAME_FIELD.match(k)))
        self._frame_fields = [k for _, k in frame_fields]
        self._array = decode_npy(raw["frames.npy"]) if "frames.npy" in raw else None
        if self._array is None and not self._frame_fields:
            raise KeyError(f"no frames.npy and no frame_NNNNN.({'/'.join(IMAGE_EXTS)}) fields; fields: {sorted(raw)}")
        self.length = len(self._array) if self._array is not None else len(self._frame_fields)
        self.actions = decode_npy(raw["actions.npy"]) if "actions.npy" in raw else None
        self.states = decode_npy(raw["states.npy"]) if "states.npy" in raw else None

    def frames(self, indices: Sequence[int]) -> Tensor:
        """uint8 ``(len(indices), C, H, W)``."""
        if self._array is not None:
            return torch.from_numpy(np.ascontiguousarray(self._array[list(indices)])).permute(0, 3, 1, 2)
        return torch.stack([decode_image(self.raw[self._frame_fields[t]]) for t in indices])


class ClipSampler:
    """Clips of ``clip_length`` frames ``frame_skip`` apart from an episode, with the actions between them.

    For clip frames ``t0, t0+s, ..., t0+(L-1)s`` the item holds ``frames`` (L, C, H, W), ``states`` (L, S) and
    ``actions`` (L-1, s, A): the ``s`` actions taken between consecutive clip frames (an action chunk per step),
    flattened to (L-1, s*A) with ``flatten_actions``; ``label`` is the episode metadata's ``label_key`` value, if
    it has one (a class per episode, for probes). Starts are uniform at random (torch RNG, seeded by the
    stream) or, with ``random_start=False``, evenly spaced. Episodes shorter than a clip are errors (skipped).
    """

    def __init__(
        self,
        clip_length: int,
        frame_skip: int = 1,
        clips_per_episode: int = 1,
        random_start: bool = True,
        flatten_actions: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
        label_key: str | None = None,
    ) -> None:
        if clip_length < 1 or frame_skip < 1 or clips_per_episode < 1:
            raise ConfigError(f"clip_length ({clip_length}), frame_skip ({frame_skip}) and clips_per_episode ({clips_per_episode}) must be >= 1")
        self.clip_length, self.frame_skip, self.clips_per_episode = clip_length, frame_skip, clips_per_episode
        self.random_start, self.flatten_actions, self.transform = random_start, flatten_actions, transform
        self.label_key = label_key

    @property
    def span(self) -> int:
        """Frames from the first to the last frame of a clip."""
        return (self.clip_length - 1) * self.frame_skip + 1

    def starts(self, length: int) -> list[int]:
        last = length - self.span
        if last < 0:
            raise ValueError(f"episode of {length} frames is shorter than a clip ({self.span} frames): lower data.clip_length or data.frame_skip")
        if self.random_start:
            return torch.randint(0, last + 1, (self.clips_per_episode,)).tolist()
        return [round(i * last / max(self.clips_per_episode - 1, 1)) for i in range(self.clips_per_episode)]

    def clip(self, episode: Episode, t0: int) -> dict[str, Any]:
        idx = list(range(t0, t0 + self.span, self.frame_skip))
        frames = episode.frames(idx)
        item: dict[str, Any] = {
            "frames": self.transform(frames) if self.transform is not None else frames,
            "t0": t0,
            "episode_id": episode.meta.get("episode_id", episode.raw["__key__"]),
            "__key__": episode.raw["__key__"],
        }
        if self.label_key and self.label_key in episode.meta:
            item["label"] = int(episode.meta[self.label_key])
        if episode.actions is not None:
            needed = idx[-1]
            if len(episode.actions) < needed:
                raise ValueError(f"{len(episode.actions)} actions for {episode.length} frames: a clip needs actions up to frame {needed}")
            chunks = torch.from_numpy(np.ascontiguousarray(episode.actions[t0:needed])).float()
            chunks = chunks.reshape(self.clip_length - 1, self.frame_skip, -1)
            item["actions"] = chunks.flatten(1) if self.flatten_actions else chunks
        if episode.states is not None:
            item["states"] = torch.from_numpy(np.ascontiguousarray(episode.states[idx])).float()
        return item

    def __call__(self, raw: dict) -> list[dict[str, Any]]:
        episode = Episode(raw)
        return [self.clip(episode, t0) for t0 in self.starts(episode.length)]


class SequenceDataModule(StreamingDataModule):
    """Clips of episodes from sequence shards (see module docstring), for video JEPA and world-model training.

    Batches: ``{"frames": (B, L, C, H, W), "actions"?: (B, L-1, s, A), "states"?: (B, L, S), "t0": (B,),
    "episode_id": ..., "data_skipped": ()}``. One epoch visits every episode once (exact mode) and takes
    ``clips_per_episode`` clips from each.

    Args:
        clip_length: frames per clip.
        frame_skip: stride between clip frames (the actions in between form each step's action chunk).
        clips_per_episode: clips drawn per episode visit.
        flatten_actions: give actions as (L-1, s*A) instead of (L-1, s, A).
        frame_transform: training transform of a clip's uint8 (L, C, H, W) frames (the same parameters for all frames).
        eval_transform: evaluation transform (evaluation clips start evenly spaced).
        image_size: side of the transformed frames (for size-dependent encoder configs).
        label_key: episode metadata key with an integer class per episode (clips get it as ``label``).
        num_classes: classes of ``label_key``; default: from the manifest's ``classes[label_key]``, if listed.
        knn_bank_size: labelled training clips in the kNN-bank validation loader (0: none).
        **kwargs: :class:`~data_modules.datamodule.StreamingDataModule` arguments.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        clip_length: int,
        frame_skip: int,
        clips_per_episode: int,
        flatten_actions: bool,
        frame_transform: Callable[[Tensor], Tensor] | None,
        eval_transform: Callable[[Tensor], Tensor] | None,
        image_size: int | None,
        label_key: str | None,
        num_classes: int | None,
        knn_bank_size: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(urls, **kwargs)
        self.sampler_args = {
            "clip_length": clip_length,
            "frame_skip": frame_skip,
            "clips_per_episode": clips_per_episode,
            "flatten_actions": flatten_actions,
            "label_key": label_key,
        }
        self.label_key, self.knn_bank_size = label_key, knn_bank_size
        classes = (self.manifest or {}).get("classes", {})
        classes = classes.get(label_key) if isinstance(classes, dict) else None
        self.num_classes = num_classes if num_classes is not None else (len(classes) if classes else None)
        self.frame_transform, self.eval_transform, self.image_size = frame_transform, eval_transform, image_size
        self.items_per_sample = clips_per_episode
        ClipSampler(**self.sampler_args)  # validate now, not in a worker

    def train_process(self) -> ClipSampler:
        return ClipSampler(**self.sampler_args, transform=self.frame_transform)

    def eval_process(self) -> ClipSampler:
        return ClipSampler(**self.sampler_args, random_start=False, transform=self.eval_transform)
