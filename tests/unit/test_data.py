"""The built-in dataset, the shard writer and the WebDataset DataModule on tiny generated shards."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from data_modules import WebDatasetDataModule, ensure_shapes_dataset, expand_shards
from data_modules.shapes import CLASSES, render
from data_modules.shards import MANIFEST, write_dataset_atomically
from jepa_platform.errors import ConfigError, DataError

TO_FLOAT = v2.Compose([v2.ToDtype(torch.float32, scale=True)])
VIEW = v2.Compose([v2.RandomResizedCrop(32, scale=(0.5, 1.0), antialias=True), v2.ToDtype(torch.float32, scale=True)])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dm(tiny_dataset: Path, **kw) -> WebDatasetDataModule:
    args = {
        "train_shards": str(tiny_dataset / "train-{000000..000003}.tar"),
        "val_shards": str(tiny_dataset / "val-{000000..000001}.tar"),
        "view_transform": VIEW,
        "eval_transform": TO_FLOAT,
        "batch_size": 32,
        "num_workers": 0,
        "knn_bank_size": 100,
        "num_classes": 10,
        "shuffle_buffer": 64,
    }
    args.update(kw)
    dm = WebDatasetDataModule(**args)
    dm.setup("fit")
    return dm


def test_render_is_deterministic_and_varied():
    a, la = render(0, "train", 7)
    b, lb = render(0, "train", 7)
    c, _ = render(1, "train", 7)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and la == lb
    assert not np.array_equal(a, c)
    labels = [render(0, "val", i)[1] for i in range(500)]
    counts = np.bincount(labels, minlength=len(CLASSES))
    assert counts.min() > 25  # every class present, roughly balanced


def test_dataset_written_once_with_manifest(tiny_dataset: Path):
    manifest = json.loads((tiny_dataset / MANIFEST).read_text())
    assert manifest["splits"]["train"]["num_samples"] == 512
    assert manifest["splits"]["val"]["num_shards"] == 2
    before = {p.name: _digest(p) for p in tiny_dataset.glob("*.tar")}
    assert ensure_shapes_dataset(tiny_dataset.parent, workers=1, num_train=512, num_val=256, samples_per_shard=128) == tiny_dataset
    assert {p.name: _digest(p) for p in tiny_dataset.glob("*.tar")} == before


def test_same_seed_same_bytes_across_worker_counts(tmp_path: Path, tiny_dataset: Path):
    again = ensure_shapes_dataset(tmp_path, workers=2, num_train=512, num_val=256, samples_per_shard=128)
    assert _digest(again / "train-000002.tar") == _digest(tiny_dataset / "train-000002.tar")


def test_interrupted_write_leaves_no_dataset(tmp_path: Path):
    def failing(tmp: Path) -> dict:
        (tmp / "train-000000.tar").write_bytes(b"partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_dataset_atomically(tmp_path / "ds", failing)
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.iterdir())  # the temporary directory is gone too


def test_foreign_directory_is_not_overwritten(tmp_path: Path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="remove it or choose another"):
        write_dataset_atomically(target, lambda tmp: {})
    assert (target / "mine.txt").read_text() == "keep"


def test_train_batches(tiny_dataset: Path):
    dm = _dm(tiny_dataset)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 512 // 32
    batch = batches[0]
    assert len(batch["views"]) == 2 and batch["views"][0].shape == (32, 3, 32, 32)
    assert not torch.equal(batch["views"][0], batch["views"][1])  # independent augmentations
    assert batch["label"].dtype == torch.int64 and batch["label"].min() >= 0 and batch["label"].max() < 10
    keys = [k for b in batches for k in b["__key__"]]
    assert len(set(keys)) == 512  # one epoch covers every sample once


def test_epoch_length_is_equal_across_workers(tiny_dataset: Path):
    dm = _dm(tiny_dataset, num_workers=2, samples_per_epoch=320)
    loader = dm.train_dataloader()
    assert len(list(loader)) == len(loader) == 10


def test_too_few_shards_for_workers(tiny_dataset: Path):
    dm = _dm(tiny_dataset, num_workers=8)
    with pytest.raises(ConfigError, match="resample_shards=true"):
        dm.train_dataloader()
    assert len(_dm(tiny_dataset, num_workers=8, resample_shards=True, samples_per_epoch=256).train_dataloader()) == 8


def test_val_and_bank_loaders(tiny_dataset: Path):
    val, bank = _dm(tiny_dataset).val_dataloader()
    images = [b["image"] for b in val]
    assert sum(len(x) for x in images) == 256
    assert images[0].dtype == torch.float32 and images[0].max() <= 1.0
    assert sum(len(b["image"]) for b in bank) == 100


def test_missing_shards_name_the_setting(tmp_path: Path):
    with pytest.raises(DataError, match=r"data.train_shards: no shard at .*nope-000000.tar"):
        expand_shards(str(tmp_path / "nope-{000000..000003}.tar"), "data.train_shards")


def _write_tar(path: Path, samples: list[dict]) -> None:
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext, data in s.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _good_png() -> bytes:
    from data_modules.shapes import encode_png

    return encode_png(render(0, "train", 0)[0])


def test_bad_samples_are_skipped_within_rate(tmp_path: Path):
    samples = [{"__key__": f"s{i:04d}", "png": _good_png(), "cls": b"3"} for i in range(300)]
    samples[5]["png"] = b"not a png"
    _write_tar(tmp_path / "a.tar", samples)
    dm = _dm(tmp_path, train_shards=str(tmp_path / "a.tar"), val_shards=None, batch_size=10, samples_per_epoch=290)
    assert sum(len(b["label"]) for b in dm.train_dataloader()) == 290


def test_bad_samples_above_rate_stop_the_run(tmp_path: Path):
    samples = [{"__key__": f"s{i:04d}", "png": b"garbage" if i % 2 else _good_png(), "cls": b"1"} for i in range(400)]
    _write_tar(tmp_path / "a.tar", samples)
    dm = _dm(tmp_path, train_shards=str(tmp_path / "a.tar"), val_shards=None, batch_size=10, samples_per_epoch=100)
    with pytest.raises(DataError, match=r"failed to decode.*max_decode_error_rate"):
        list(dm.train_dataloader())


def test_pickle_fields_are_never_decoded(tmp_path: Path):
    import pickle

    payload = pickle.dumps({"x": 1})
    samples = [{"__key__": f"s{i:04d}", "pyd": payload, "cls": b"1"} for i in range(300)]
    _write_tar(tmp_path / "a.tar", samples)
    dm = _dm(tmp_path, train_shards=str(tmp_path / "a.tar"), val_shards=None, batch_size=10, samples_per_epoch=100)
    with pytest.raises(DataError, match="no image field"):
        list(dm.train_dataloader())
