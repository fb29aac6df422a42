"""Test data: tiny episodes, shards written without the project's writer, what each rank reads."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

from jepa_platform.testing import free_port


def moving_square_episode(index: int, length: int = 24, size: int = 16) -> dict:
    """An episode whose frame ``t`` shows a square at the position the actions lead to; pixel (0, 0) holds ``t``."""
    rng = np.random.default_rng(index)
    actions = rng.integers(-1, 2, size=(length, 2)).astype(np.float32)
    pos = np.clip(np.cumsum(np.vstack([[size // 2, size // 2], actions[:-1]]), axis=0), 2, size - 3).astype(int)
    frames = np.zeros((length, size, size, 3), np.uint8)
    for t, (y, x) in enumerate(pos):
        frames[t, y - 2 : y + 2, x - 2 : x + 2] = 255
        frames[t, 0, 0] = t
    return {"frames": frames, "actions": actions, "states": pos.astype(np.float32), "episode_id": index}


def _epoch_keys_worker(rank: int, world_size: int, port: int, urls: str, kwargs: dict[str, Any], epochs: int, out_dir: str) -> None:
    from jepa_platform.config import build_preset

    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        dm = build_preset("data=images", "data.urls=x", urls=urls, **kwargs)  # the preset holds every other default
        loader = dm.train_dataloader()  # one loader, persistent workers, iterated once per epoch as Lightning does
        keys = [[k for batch in loader for k in batch["__key__"]] for _ in range(epochs)]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"keys": keys, "batches": len(loader)}))
    finally:
        dist.destroy_process_group()


def epoch_keys_by_rank(urls: str, world_size: int = 2, epochs: int = 2, **kwargs: Any) -> list[dict[str, Any]]:
    """Sample keys each rank of a ``world_size``-process gloo group reads per epoch from an ImageDataModule.

    Returns per rank ``{"keys": [[epoch 0 keys], [epoch 1 keys], ...], "batches": len(loader)}``.
    """
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_epoch_keys_worker, args=(world_size, free_port(), urls, kwargs, epochs, out), nprocs=world_size, start_method="spawn")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world_size)]


def write_tar(path: Path, samples: list[dict[str, Any]]) -> None:
    """A shard written with plain ``tarfile`` (not the project's writer): ``{"__key__": k, "<field>": bytes, ...}``."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for field, data in sample.items():
                if field == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{field}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
