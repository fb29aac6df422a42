"""`jepa data convert` from every source kind, `jepa data inspect`, and training on a converted folder."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.cli import run_jepa

from data_modules.builtin.shapes import render
from data_modules.convert import convert, parse_shard_size, read_idx
from data_modules.urls import expand_urls, iter_tar, open_url
from jepa_platform import cli
from jepa_platform.errors import DataError


def _labels_in(out: Path, split: str) -> list[int]:
    labels = []
    for url in expand_urls(str(out), split=split):
        with open_url(url) as f:
            labels += [int(s["cls"]) for s in iter_tar(f)]
    return labels


def _image_folder(root: Path, per_class: int = 12, classes: tuple[str, ...] = ("circle", "square", "star")) -> Path:
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(render(0, "train", label * 1000 + i)[0]).save(root / name / f"{i}.png")
    return root


def test_convert_class_folder_stratified_and_shuffled(tmp_path: Path, capsys):
    src = _image_folder(tmp_path / "src")
    assert cli.main(["data", "convert", str(src), str(tmp_path / "out"), "--shard-size", "8", "--val-fraction", "0.25", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "train: 27 samples in 4 shards" in printed and "val: 9 samples" in printed and "data.urls=" in printed
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["classes"] == ["circle", "square", "star"] and manifest["format"] == "keep"
    assert manifest["splits"]["train"]["shard_samples"] == [8, 8, 8, 3]
    assert sorted(_labels_in(tmp_path / "out", "val")) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # stratified
    train = _labels_in(tmp_path / "out", "train")
    assert train != sorted(train)  # shards mix classes
    with pytest.raises(DataError, match="already holds a dataset"):
        convert(src, tmp_path / "out", progress=False)


def test_convert_unlabelled_folder_with_byte_shards_and_jpeg(tmp_path: Path):
    src = _image_folder(tmp_path / "src", per_class=10)
    manifest = convert(src, tmp_path / "out", shard_size="20KB", image_format="jpg", quality=80, unlabelled=True, val_fraction=0.0, progress=False)
    split = manifest["splits"]["train"]
    assert manifest["classes"] is None and split["num_samples"] == 30 and split["num_shards"] > 1
    for i in range(split["num_shards"]):  # headers and padded data of every shard fit the size (tar's end record aside)
        with tarfile.open(tmp_path / "out" / f"train-{i:06d}.tar") as tar:
            assert sum(512 + -(-m.size // 512) * 512 for m in tar) <= 20 * 1024
    with open_url(str(tmp_path / "out" / "train-000000.tar")) as f:
        sample = next(iter_tar(f))
    assert "jpg" in sample and "cls" not in sample
    assert parse_shard_size("1GB") == (None, 1 << 30) and parse_shard_size("500") == (500, None)


def test_convert_npz_in_both_layouts(tmp_path: Path):
    images = np.stack([render(0, "train", i)[0] for i in range(20)])
    np.savez(tmp_path / "a.npz", images=images.transpose(0, 3, 1, 2), labels=np.arange(20) % 4)  # NCHW
    manifest = convert(tmp_path / "a.npz", tmp_path / "a", val_fraction=0.2, progress=False)
    assert manifest["format"] == "png" and manifest["classes"] == ["0", "1", "2", "3"]
    assert manifest["splits"]["train"]["num_samples"] == 16 and manifest["splits"]["val"]["num_samples"] == 4
    np.savez(tmp_path / "k.npz", x_train=images[:15, ..., 0] / 255.0, y_train=np.zeros(15), x_test=images[15:, ..., 0] / 255.0, y_test=np.ones(5))
    manifest = convert(tmp_path / "k.npz", tmp_path / "k", progress=False)
    assert manifest["splits"]["val"]["num_samples"] == 5 and _labels_in(tmp_path / "k", "val") == [1] * 5


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_convert_idx_directory(tmp_path: Path):
    rng = np.random.default_rng(0)
    src = tmp_path / "mnist"
    src.mkdir()
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(src / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    assert read_idx(src / "train-images-idx3-ubyte.gz").shape == (30, 28, 28)
    manifest = convert(src, tmp_path / "out", progress=False)
    assert manifest["source_kind"] == "IDX (train/t10k)" and len(manifest["classes"]) == 10
    assert sorted(_labels_in(tmp_path / "out", "val")) == list(range(10))
    (tmp_path / "junk-idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk-idx")


def test_inspect_prints_counts_and_writes_grid(tiny_dataset: Path, tmp_path: Path, capsys):
    grid = tmp_path / "grid.png"
    assert cli.main(["data", "inspect", str(tiny_dataset), "--grid", str(grid), "--num", "16"]) == 0
    out = capsys.readouterr().out
    assert "train: 512 samples in 4 shards" in out and "val: 256 samples in 2 shards" in out
    assert "fields: cls (512), png (512)" in out and "circle" in out and "most common 32x32" in out
    assert Image.open(grid).size == (4 * 34 + 2, 4 * 34 + 2)


def test_bad_source_is_one_line(tmp_path: Path, capsys):
    assert cli.main(["data", "convert", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and err.count("\n") == 1


def test_converted_folder_trains_end_to_end(tmp_path: Path):
    """The user's path: an image folder, `jepa data convert`, then `jepa train data=images data.urls=OUT`."""
    src = _image_folder(tmp_path / "src", per_class=40)
    env = {"JEPA_RUNS_DIR": str(tmp_path / "runs")}

    def jepa(*args: str) -> subprocess.CompletedProcess:
        return run_jepa(list(args), env)  # in this process: the same command without an interpreter start-up per call

    converted = jepa("data", "convert", str(src), str(tmp_path / "shards"), "--shard-size", "16", "--no-progress")
    assert converted.returncode == 0, converted.stderr[-2000:]
    trained = jepa(
        "train", "data=images", f"data.urls={tmp_path / 'shards'}", "data.image_size=32", "data.batch_size=16", "data.num_workers=2",
        "data.val_batch_size=32", "data.knn_bank_size=64", "encoder=resnet_test", "trainer=cpu", "trainer.max_epochs=1",
        "objective.projector_dims=[64,64]",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "final: val/probe_acc=" in trained.stdout  # the probe took the manifest's 3 classes from the DataModule
    state = torch.load(next((tmp_path / "runs").glob("*/checkpoints/last.ckpt")), weights_only=True)
    probe = next(v for k, v in state["callbacks"].items() if k.startswith("OnlineProbe"))
    assert probe["heads"]["features.weight"].shape[0] == 3


@pytest.mark.parametrize("augment_on", ["workers", "device"])
def test_grey_images_train_with_the_small_image_preset(tmp_path: Path, augment_on: str):
    """Single-channel images, converted as they are, train with data=small_images_gray and no transform written by
    the user: they decode to one channel, the encoder takes one, on both augmentation paths; jepa eval reads them."""
    src = tmp_path / "src"
    for label, name in enumerate(("circle", "square", "star")):
        (src / name).mkdir(parents=True)
        for i in range(24):
            Image.fromarray(render(0, "train", label * 1000 + i)[0]).convert("L").save(src / name / f"{i}.png")
    env = {"JEPA_RUNS_DIR": str(tmp_path / "runs")}
    converted = run_jepa(["data", "convert", str(src), str(tmp_path / "shards"), "--shard-size", "16", "--no-progress"], env)
    assert converted.returncode == 0, converted.stderr[-2000:]
    trained = run_jepa(
        ["train", "data=small_images_gray", f"data.urls={tmp_path / 'shards'}", f"data.augment_on={augment_on}", "data.batch_size=16",
         "data.num_workers=0", "data.val_batch_size=32", "data.knn_bank_size=32", "encoder=resnet_test", "trainer=cpu", "trainer.max_epochs=1",
         "objective.projector_dims=[32,32]", "final_eval=true", "logger=none", "callbacks.encoder_model=null"],
        env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    config = next((tmp_path / "runs").glob("*/config.yaml")).read_text()
    assert "channels: 1" in config and "in_chans: 1" in config
    results = json.loads(next((tmp_path / "runs").glob("*/eval.json")).read_text())
    assert {"eval/linear_probe_acc", "eval/random_init/linear_probe_acc", "eval/gain/linear_probe_acc"} <= set(results)


@pytest.mark.slow  # 27 s; skipping itself is covered by tests/unit/test_data.py
def test_skipped_samples_reach_mlflow(tiny_dataset: Path, tmp_path: Path, make_cfg):
    import mlflow

    from jepa_platform.checkpoints import RUN_INFO
    from jepa_platform.train import run_train

    data = tmp_path / "ds"
    shutil.copytree(tiny_dataset, data)
    with tarfile.open(data / "train-000000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(data / "train-000000.tar", "w") as tar:
        for m, payload in members:
            payload = b"corrupt" if m.name.endswith(".png") and len(tar.getmembers()) < 6 else payload  # 3 bad images
            m.size = len(payload)
            tar.addfile(m, io.BytesIO(payload))
    cfg = make_cfg(
        "data=images",
        f"data.urls={data}",
        "data.image_size=32",
        "data.batch_size=32",
        "data.num_workers=0",
        "data.knn_bank_size=64",
        "trainer.max_epochs=2",
        debug=False,
    )
    run_train(cfg)
    info = json.loads((Path(cfg.paths.output_dir) / RUN_INFO).read_text())
    history = mlflow.MlflowClient(info["tracking_uri"]).get_metric_history(info["run_id"], "data/skipped")
    assert history and history[-1].value == 6  # 3 per epoch, a running total
