"""The built-in dataset, the shard writer, the epoch planner and the image DataModule on tiny generated shards."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support.data import write_tar
from torch.utils.data import default_collate
from torchvision.transforms import v2

from data_modules import ImageDataModule, ensure_shapes_dataset, expand_urls
from data_modules.builtin.shapes import CLASSES, encode_png, render
from data_modules.epoch_plan import exact_batches_per_rank, worker_batches
from data_modules.shards import write_dataset_atomically
from data_modules.urls import MANIFEST, count_tar_samples, shard_sizes
from jepa_platform.config import build_preset
from jepa_platform.errors import ConfigError, DataError

TO_FLOAT = v2.ToDtype(torch.float32, scale=True)
VIEW = v2.Compose([v2.RandomResizedCrop(32, scale=(0.5, 1.0), antialias=True), v2.ToDtype(torch.float32, scale=True)])
LOCAL = v2.Compose([v2.RandomResizedCrop(12, scale=(0.1, 0.4), antialias=True), v2.ToDtype(torch.float32, scale=True)])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dm(urls, **kw) -> ImageDataModule:
    args = {
        "view_transform": VIEW,
        "eval_transform": TO_FLOAT,
        "batch_size": 32,
        "num_workers": 0,
        "knn_bank_size": 100,
        "shuffle_buffer": 64,
    }
    args.update(kw)
    dm = build_preset("data=images", "data.urls=x", urls=str(urls), **args)
    dm.setup("fit")
    return dm


def _keys(loader) -> list[str]:
    return [k for b in loader for k in b["__key__"]]


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
    assert manifest["splits"]["train"]["shard_samples"] == [128] * 4
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


# -- urls and sizes --------------------------------------------------------------------------------------------
def test_urls_from_directory_pattern_and_glob(tiny_dataset: Path):
    by_dir = expand_urls(str(tiny_dataset))
    assert [Path(u).name for u in by_dir] == [f"train-{i:06d}.tar" for i in range(4)]
    assert expand_urls(str(tiny_dataset), split="val") == [str(tiny_dataset / f"val-{i:06d}.tar") for i in range(2)]
    assert expand_urls(str(tiny_dataset / "train-{000000..000003}.tar")) == by_dir
    assert expand_urls(str(tiny_dataset / "train-*.tar")) == by_dir
    assert shard_sizes(by_dir) == [128] * 4
    assert count_tar_samples(by_dir[0]) == 128  # the header scan used without a manifest agrees


def test_missing_shards_name_the_setting(tmp_path: Path):
    with pytest.raises(DataError, match=r"data.urls: no shard at .*nope-000000.tar"):
        expand_urls(str(tmp_path / "nope-{000000..000003}.tar"), "data.urls")


# -- epochs ----------------------------------------------------------------------------------------------------
def test_exact_epoch_covers_every_sample_once(tiny_dataset: Path):
    dm = _dm(tiny_dataset)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 512 // 32
    batch = batches[0]
    assert len(batch["views"]) == 2 and batch["views"][0].shape == (32, 3, 32, 32)
    assert not torch.equal(batch["views"][0], batch["views"][1])  # independent augmentations
    assert batch["label"].dtype == torch.int64 and batch["label"].min() >= 0 and batch["label"].max() < 10
    assert len(set(_keys(batches))) == 512
    assert int(sum(b["data_skipped"] for b in batches)) == 0


def test_epoch_plan_arithmetic():
    assert [worker_batches(10, 4, w) for w in range(4)] == [3, 3, 2, 2]
    assert exact_batches_per_rank(1000, world_size=2, num_workers=2, batch_size=32) == 15  # 2 * 15 * 32 = 960 <= 1000
    # clips: 3 items per episode, 10 episodes, batches of 4 over 2 workers: 7 batches need ceil(16/3)+ceil(12/3) = 10 episodes
    assert exact_batches_per_rank(10, world_size=1, num_workers=2, batch_size=4, items_per_sample=3) == 7


def test_explicit_epoch_lengths(tiny_dataset: Path):
    assert len(_dm(tiny_dataset, num_workers=2, batches_per_epoch=5).train_dataloader()) == 5
    loader = _dm(tiny_dataset, num_workers=2, samples_per_epoch=320).train_dataloader()
    assert len(list(loader)) == len(loader) == 10
    with pytest.raises(ConfigError, match="epoch_mode=resampled"):
        _dm(tiny_dataset, batches_per_epoch=17).train_dataloader()
    loader = _dm(tiny_dataset, num_workers=2, batches_per_epoch=24, epoch_mode="resampled").train_dataloader()
    assert len(list(loader)) == 24


def test_seed_fixes_order_and_augmentation_per_epoch(tiny_dataset: Path):
    def epochs(seed: int) -> list[list[dict]]:
        loader = _dm(tiny_dataset, num_workers=2, seed=seed).train_dataloader()
        return [list(loader), list(loader)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    for a, b in zip(first[0] + first[1], again[0] + again[1], strict=True):
        assert a["__key__"] == b["__key__"] and torch.equal(a["views"][0], b["views"][0])
    assert _keys(first[0]) != _keys(first[1])  # a new order every epoch
    assert sorted(_keys(first[0])) == sorted(_keys(first[1]))
    assert _keys(first[0]) != _keys(other[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_batches_replays_the_rest_of_the_epoch(tiny_dataset: Path, workers: int):
    dm = _dm(tiny_dataset, num_workers=workers)
    full = list(dm._loader(dm.train_stream(start_epoch=3), persistent=False))
    rest = list(dm._loader(dm.train_stream(start_epoch=3, skip_batches=5), persistent=False))
    assert len(rest) == len(full) - 5
    for a, b in zip(full[5:], rest, strict=True):
        assert a["__key__"] == b["__key__"] and torch.equal(a["views"][1], b["views"][1])


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_carry_their_place_in_the_plan_and_the_datamodule_keeps_the_last_trained(tiny_dataset: Path, workers: int):
    dm = _dm(tiny_dataset, num_workers=workers)
    full = list(dm._loader(dm.train_stream(start_epoch=3), persistent=False))
    assert [b["data_position"].tolist() for b in full] == [[3, i] for i in range(len(full))]
    rest = list(dm._loader(dm.train_stream(start_epoch=3, skip_batches=5), persistent=False))
    assert [b["data_position"].tolist() for b in rest] == [[3, i] for i in range(5, len(full))]
    # the position a checkpoint records is the one the last batch handed over, not a trainer counter
    dm.trainer = type("Trainer", (), {"global_rank": 0, "world_size": 1})()
    handed = dm.on_before_batch_transfer(rest[1], 0)
    assert "data_position" not in handed and dm.state_dict()["position"]["epoch"] == 3
    assert dm.state_dict()["position"]["batches"] == 7
    dm.trainer = None
    assert all("data_position" not in b for b in dm.eval_dataloader("val"))


def _step_names(pipeline) -> list[str]:
    return [type(t).__name__ for t in pipeline.transforms]


def test_transform_presets_are_named_steps_that_overrides_change_one_at_a_time():
    gray = build_preset("data=small_images_gray", "data.urls=x", num_workers=0, num_local_crops=1)
    view, local = gray.view_transforms[0], gray.view_transforms[-1]
    assert _step_names(view) == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomSolarize", "ToDtype", "Normalize"]
    assert _step_names(local) == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "ToDtype", "Normalize"]
    jitter = view.transforms[2].transforms[0]
    assert jitter.brightness == (0.6, 1.4) and jitter.saturation is None and jitter.hue is None
    for pipeline in (view, local, gray.eval_transform):  # one place for the statistics: eval_transform.normalize
        assert pipeline.transforms[-1].mean == [0.5] and pipeline.transforms[-1].std == [0.25]
    colour = build_preset(
        "data=small_images",
        "data.urls=x",
        "data.view_transform.grey=null",
        "data.eval_transform.normalize.mean=[0.1,0.2,0.3]",
        num_workers=0,
        num_local_crops=1,
    )
    # the local views take flip, colour and grey from the global ones: one override changes both
    assert "RandomGrayscale" not in _step_names(colour.view_transforms[0]) + _step_names(colour.view_transforms[-1])
    assert colour.view_transforms[0].transforms[-1].mean == [0.1, 0.2, 0.3] == colour.view_transforms[-1].transforms[-1].mean
    assert "RandomApply" in _step_names(build_preset("data=images", "data.urls=x", num_workers=0).view_transforms[0])[4:5]  # the blur


def test_multi_crop_views_and_collate_hook(tiny_dataset: Path):
    def with_masks(items: list[dict]) -> dict:
        batch = default_collate(items)
        batch["masks"] = torch.ones(len(items), 4, dtype=torch.bool)
        return batch

    dm = _dm(tiny_dataset, num_local_crops=3, local_transform=LOCAL, collate=with_masks)
    batch = next(iter(dm.train_dataloader()))
    assert [tuple(v.shape[-2:]) for v in batch["views"]] == [(32, 32)] * 2 + [(12, 12)] * 3
    assert batch["masks"].shape == (32, 4)
    with pytest.raises(ConfigError, match="local_transform"):
        build_preset("data=images", "data.urls=x", urls=str(tiny_dataset), num_local_crops=2, local_transform=None)


def test_val_and_bank_loaders(tiny_dataset: Path):
    dm = _dm(tiny_dataset, num_workers=2)
    assert dm.num_classes == 10  # from the manifest
    val, bank = dm.val_dataloader()  # val split found from the dataset directory
    images = [b["image"] for b in val]
    assert sum(len(x) for x in images) == 256
    assert images[0].dtype == torch.float32 and images[0].max() <= 1.0
    assert sum(len(b["image"]) for b in bank) == 100


# -- sources -----------------------------------------------------------------------------------------------------
def test_pipe_and_fsspec_urls(tiny_dataset: Path):
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in tiny_dataset.iterdir():
        fs.pipe(f"/ds/{p.name}", p.read_bytes())
    remote = _dm("memory://ds", batch_size=32)  # a remote dataset directory: manifest read through fsspec
    assert remote._train_urls == [f"memory://ds/train-{i:06d}.tar" for i in range(4)]
    assert len(set(_keys(remote.train_dataloader()))) == 512
    piped = _dm(f"pipe:cat {tiny_dataset}/train-000001.tar", batch_size=16, samples_per_epoch=128, epoch_mode="resampled")
    assert len(list(piped.train_dataloader())) == 8


# -- fault tolerance -------------------------------------------------------------------------------------------
def _good_png() -> bytes:
    return encode_png(render(0, "train", 0)[0])


def test_corrupt_sample_truncated_tar_and_missing_shard_are_skipped_and_counted(tmp_path: Path, tiny_dataset: Path, caplog):
    data = tmp_path / "ds"
    shutil.copytree(tiny_dataset, data)
    samples = [{"__key__": f"bad{i:03d}", "png": _good_png(), "cls": b"1"} for i in range(128)]
    samples[7]["png"] = b"not a png"
    write_tar(data / "train-000000.tar", samples)  # 1 corrupt sample
    blob = (data / "train-000001.tar").read_bytes()
    (data / "train-000001.tar").write_bytes(blob[: len(blob) // 2 + 100])  # truncated mid-member
    (data / "train-000002.tar").unlink()  # missing
    dm = _dm(data, max_error_rate=0.9, num_workers=2)
    batches = list(dm.train_dataloader())
    skipped = int(sum(b["data_skipped"] for b in batches))
    assert len(batches) == 16  # every rank keeps its epoch length: workers top up from their own ranges
    assert 1 + 128 + 60 <= skipped <= 1 + 128 + 70  # corrupt + missing shard + about half a truncated shard
    list(_dm(data, max_error_rate=0.9, num_workers=0).train_dataloader())  # warnings from the main process reach caplog
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot open shard" in m for m in messages) and any("unreadable tar" in m or "ended early" in m for m in messages)
    assert any("bad sample" in m for m in messages)


def test_error_rate_above_the_bound_stops_the_run(tmp_path: Path):
    samples = [{"__key__": f"s{i:04d}", "png": b"garbage" if i % 2 else _good_png(), "cls": b"1"} for i in range(400)]
    write_tar(tmp_path / "a.tar", samples)
    dm = _dm(tmp_path / "a.tar", batch_size=10, max_error_rate=0.05)
    with pytest.raises(DataError, match=r"samples could not be read.*data.max_error_rate"):
        list(dm.train_dataloader())


def test_pickle_fields_are_never_decoded(tmp_path: Path):
    import pickle

    payload = pickle.dumps({"x": 1})
    samples = [{"__key__": f"s{i:04d}", "pyd": payload, "cls": b"1"} for i in range(300)]
    write_tar(tmp_path / "a.tar", samples)
    dm = _dm(tmp_path / "a.tar", batch_size=10, max_error_rate=0.0)
    with pytest.raises(DataError, match="no image field"):
        list(dm.train_dataloader())
    from data_modules.decode import decode_field

    with pytest.raises(ValueError, match="never decoded"):
        decode_field("pyd", payload)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_decoding_gives_the_pixels_pil_gives(fmt: str):
    """Images decode through TorchCodec to the pixels PIL decodes, in colour and in grey, grey sources included; a
    damaged file is still an error (PIL's, which the error budget counts)."""
    import io

    from PIL import Image

    from data_modules.decode import decode_image, encode_image

    rng = np.random.default_rng(0)
    colour = Image.fromarray(np.kron(rng.integers(0, 255, (6, 6, 3)), np.ones((8, 8, 1))).astype(np.uint8))
    for source in (colour, colour.convert("L")):
        data = encode_image(source, fmt, 90)
        with Image.open(io.BytesIO(data)) as img:
            rgb, grey = np.array(img.convert("RGB")), np.array(img.convert("L"))
        assert torch.equal(decode_image(data), torch.from_numpy(rgb).permute(2, 0, 1))
        assert torch.equal(decode_image(data, channels=1), torch.from_numpy(grey)[None])
    with pytest.raises(OSError):
        decode_image(encode_image(colour, fmt, 90)[:100])


def test_per_sample_seeding_touches_the_cpu_generator_only_and_restores_it():
    """The per-sample seed of the augmentations: the same draws for the same seed, and in the main process the
    global generator's state is back afterwards."""
    from data_modules.epoch_plan import seeded_torch

    before = torch.get_rng_state()
    with seeded_torch(123, in_worker=False):
        first = torch.rand(3)
    with seeded_torch(123, in_worker=False):
        again = torch.rand(3)
    assert torch.equal(first, again) and torch.equal(torch.get_rng_state(), before)
