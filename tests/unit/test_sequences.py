"""Sequence shards and the clip sampler: frames, actions and states stay aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.data import moving_square_episode

from data_modules import SequenceDataModule
from data_modules.sequences import write_episodes
from jepa_platform.config import build_preset
from jepa_platform.errors import ConfigError


def _dm(urls: Path, **kw) -> SequenceDataModule:
    args = {
        "clip_length": 3,
        "frame_skip": 2,
        "clips_per_episode": 2,
        "batch_size": 4,
        "num_workers": 0,
        "shuffle_buffer": 4,
        "image_size": None,
        "frame_transform": None,
        "eval_transform": None,
    }
    args.update(kw)
    return build_preset("data=sequences", "data.urls=x", urls=str(urls), **args)


def test_clips_align_frames_actions_and_states(tiny_sequences: Path):
    batches = list(_dm(tiny_sequences).train_dataloader())
    assert len(batches) == 12 * 2 // 4  # every episode once, two clips each
    for batch in batches:
        assert batch["frames"].shape == (4, 3, 3, 16, 16) and batch["frames"].dtype == torch.uint8
        assert batch["actions"].shape == (4, 2, 2, 2) and batch["states"].shape == (4, 3, 2)
        for i in range(4):
            t0, episode = int(batch["t0"][i]), moving_square_episode(int(batch["episode_id"][i]))
            steps = [t0, t0 + 2, t0 + 4]
            assert batch["frames"][i, :, 0, 0, 0].tolist() == steps  # pixel (0, 0) of frame t holds t
            assert torch.equal(batch["states"][i], torch.from_numpy(episode["states"][steps]))
            assert torch.equal(batch["actions"][i].reshape(4, 2), torch.from_numpy(episode["actions"][t0 : t0 + 4]))
    episodes = [int(e) for b in batches for e in b["episode_id"]]
    assert sorted(episodes) == sorted(list(range(12)) * 2)


def test_flattened_action_chunks_and_eval_clips(tiny_sequences: Path):
    dm = _dm(tiny_sequences, flatten_actions=True, clip_length=4, frame_skip=3, clips_per_episode=3)
    assert next(iter(dm.train_dataloader()))["actions"].shape == (4, 3, 6)
    val = [b for b in dm.val_dataloader()[0]]
    starts = sorted({int(t) for b in val for t in b["t0"]})
    assert starts == [0, 7, 14]  # evenly spaced: span 10 in 24 frames
    assert sum(len(b["t0"]) for b in val) == 4 * 3


def test_npy_frames_and_short_episodes(tmp_path: Path):
    episodes = [moving_square_episode(i, length=12) for i in range(6)]
    episodes[2] = moving_square_episode(2, length=3)  # shorter than a clip: skipped and counted
    write_episodes(tmp_path / "ds", {"train": iter(episodes)}, episodes_per_shard=2, frame_format="npy")
    dm = _dm(tmp_path / "ds", clips_per_episode=1, batch_size=2, max_error_rate=0.5)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and int(sum(b["data_skipped"] for b in batches)) == 1
    with pytest.raises(ConfigError, match="clip_length"):
        _dm(tmp_path / "ds", clip_length=0)


def test_writer_rejects_bad_frames(tmp_path: Path):
    with pytest.raises(ValueError, match="uint8"):
        write_episodes(tmp_path / "bad", {"train": [{"frames": np.zeros((4, 8, 8, 3), np.float32)}]})
    assert not (tmp_path / "bad").exists()
