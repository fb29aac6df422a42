"""``jepa data convert SRC OUT_DIR``: write image shards (and a manifest) from common on-disk formats.

Sources: an image folder with class subfolders (ImageNet layout, optionally with ``train/`` and ``val/`` above
the classes), a folder of unlabelled images, a numpy ``.npz`` (images and labels, or Keras-style
``x_train``/``y_train``/``x_test``/``y_test``), and IDX files (the MNIST family, ``.gz`` or not: one images file,
or a directory of ``train-``/``t10k-`` pairs). Samples are written in a seeded random order, so every shard
mixes classes (a shuffle buffer cannot fix class-sorted shards). The output appears only when complete.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from data_modules.decode import PIL_FORMATS, encode_image
from data_modules.shards import ShardSink, write_dataset_atomically
from data_modules.urls import MANIFEST
from jepa_platform.errors import DataError

log = logging.getLogger(__name__)
FILE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
KEEP_EXTS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}
SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "val"}


@dataclass
class Item:
    """One image to write: a file path or an array, with its label."""

    source: str
    label: int | None
    array: np.ndarray | None = None


@dataclass
class Source:
    kind: str
    classes: list[str] | None
    pool: list[Item] = field(default_factory=list)
    splits: dict[str, list[Item]] | None = None


# -- reading sources ------------------------------------------------------------------------------------------
def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in FILE_EXTS and p.is_file())


def _class_dirs(directory: Path) -> list[Path]:
    return sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".") and _images_in(d))


def _folder_items(directory: Path, classes: list[str] | None) -> list[Item]:
    if classes is None:
        return [Item(str(p), None) for p in _images_in(directory)]
    items = []
    for label, name in enumerate(classes):
        if (directory / name).is_dir():
            items += [Item(str(p), label) for p in _images_in(directory / name)]
    return items


def read_folder(src: Path, unlabelled: bool) -> Source:
    split_dirs = {SPLIT_DIRS[d.name.lower()]: d for d in src.iterdir() if d.is_dir() and d.name.lower() in SPLIT_DIRS}
    if "train" in split_dirs and "val" in split_dirs:
        classes = None if unlabelled else [d.name for d in _class_dirs(split_dirs["train"])] or None
        return Source("image folder with splits", classes, splits={s: _folder_items(d, classes) for s, d in split_dirs.items()})
    class_dirs = [] if unlabelled else _class_dirs(src)
    if class_dirs:
        loose = [p for p in src.iterdir() if p.suffix.lower() in FILE_EXTS]
        if loose:
            log.warning("%d images directly in %s are outside any class folder and are left out", len(loose), src)
        classes = [d.name for d in class_dirs]
        return Source("image folder with classes", classes, pool=_folder_items(src, classes))
    return Source("unlabelled image folder", None, pool=_folder_items(src, None))


def to_hwc_uint8(images: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) images of uint8, or floats in [0, 1], as uint8 (N, H, W[, C])."""
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3, 4):
        images = images.transpose(0, 2, 3, 1)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4):
        raise DataError(f"{what}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating) or images.min() < 0 or images.max() > 1:
            raise DataError(f"{what}: images must be uint8, or floats in [0, 1]; got {images.dtype} in [{images.min()}, {images.max()}]")
        images = np.round(images * 255).astype(np.uint8)
    return images


def _array_items(images: np.ndarray, labels: np.ndarray | None, what: str) -> list[Item]:
    images = to_hwc_uint8(images, what)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(images):
            raise DataError(f"{what}: {len(images)} images but {len(labels)} labels")
    return [Item(f"{what}[{i}]", None if labels is None else int(labels[i]), images[i]) for i in range(len(images))]


def _class_names(labels: list[int | None]) -> list[str] | None:
    present = [label for label in labels if label is not None]
    return [str(c) for c in range(max(present) + 1)] if present else None


def read_npz(src: Path, images_key: str | None, labels_key: str | None) -> Source:
    with np.load(src, allow_pickle=False) as data:
        keys = set(data.files)
        if images_key is None and {"x_train", "x_test"} <= keys:
            splits = {
                split: _array_items(data[f"x_{part}"], data[f"y_{part}"] if f"y_{part}" in keys else None, f"{src.name}:x_{part}")
                for split, part in (("train", "train"), ("val", "test"))
            }
            return Source("npz (x_train/x_test)", _class_names([i.label for i in splits["train"]]), splits=splits)
        images_key = images_key or next((k for k in ("images", "x", "X", "data", "imgs") if k in keys), None)
        if images_key not in keys:
            raise DataError(f"{src}: no images array (keys: {sorted(keys)}): name it with --images-key")
        labels_key = labels_key or next((k for k in ("labels", "y", "Y", "targets", "label") if k in keys), None)
        if labels_key is not None and labels_key not in keys:
            raise DataError(f"{src}: no array '{labels_key}' (keys: {sorted(keys)}): fix --labels-key")
        items = _array_items(data[images_key], data[labels_key] if labels_key else None, f"{src.name}:{images_key}")
    return Source("npz", _class_names([i.label for i in items]), pool=items)


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (MNIST family): magic ``0 0 dtype ndim``, big-endian dims, then the data; gzip allowed."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise DataError(f"{path} is not an IDX file (bad magic number): give an MNIST-family *-idx?-ubyte file")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", ndim, 4).astype(int)
    data = np.frombuffer(raw, dtypes[raw[2]], int(np.prod(dims)), 4 + 4 * ndim)
    return data.reshape(dims).astype(data.dtype.newbyteorder("="))


def _idx_labels_for(images_file: Path) -> Path | None:
    name = re.sub(r"images-idx3", "labels-idx1", images_file.name)
    candidate = images_file.with_name(name)
    return candidate if name != images_file.name and candidate.is_file() else None


def read_idx_source(src: Path) -> Source:
    if src.is_dir():
        files = {p.name.split("-")[0]: p for p in src.iterdir() if "images-idx3" in p.name}
        if "train" not in files:
            raise DataError(f"{src}: no train-images-idx3-ubyte[.gz]: give the MNIST-family directory or one images file")
        splits = {}
        for split, prefix in (("train", "train"), ("val", "t10k")):
            if prefix in files:
                labels = _idx_labels_for(files[prefix])
                splits[split] = _array_items(read_idx(files[prefix]), read_idx(labels) if labels else None, files[prefix].name)
        if "val" not in splits:
            return Source("IDX", _class_names([i.label for i in splits["train"]]), pool=splits["train"])
        return Source("IDX (train/t10k)", _class_names([i.label for i in splits["train"]]), splits=splits)
    labels = _idx_labels_for(src)
    items = _array_items(read_idx(src), read_idx(labels) if labels else None, src.name)
    return Source("IDX", _class_names([i.label for i in items]), pool=items)


def is_idx(path: Path) -> bool:
    return "-idx" in path.name or (path.is_dir() and any("images-idx3" in p.name for p in path.iterdir()))


def read_source(src: Path, unlabelled: bool = False, images_key: str | None = None, labels_key: str | None = None) -> Source:
    if not src.exists():
        raise DataError(f"{src} does not exist: give an image folder, a .npz file or an IDX file/directory")
    if src.suffix == ".npz":
        source = read_npz(src, images_key, labels_key)
    elif is_idx(src):
        source = read_idx_source(src)
    elif src.is_dir():
        source = read_folder(src, unlabelled)
    else:
        raise DataError(f"{src}: unknown source (expected an image folder, .npz, or IDX *-idx?-ubyte[.gz])")
    if unlabelled:
        source.classes = None
        for items in [source.pool, *(source.splits or {}).values()]:
            for item in items:
                item.label = None
    if not source.pool and not any((source.splits or {}).values()):
        raise DataError(f"{src}: no images found ({source.kind}; extensions {sorted(FILE_EXTS)})")
    return source


# -- splitting and encoding -----------------------------------------------------------------------------------
def split_items(items: list[Item], val_fraction: float, rng: np.random.Generator) -> dict[str, list[Item]]:
    """Stratified by label: each class gives ``round(val_fraction * n)`` images to ``val``."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction={val_fraction}: use a number in [0, 1)")
    by_label: dict[int | None, list[Item]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    train, val = [], []
    for group in by_label.values():
        order = rng.permutation(len(group))
        n_val = round(val_fraction * len(group))
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return {"train": train, "val": val} if val else {"train": train}


@dataclass(frozen=True)
class Encoding:
    format: str  # png | jpg | webp | keep
    quality: int
    resize: int | None  # shorter side, or None


def encode(item: Item, enc: Encoding) -> tuple[str, bytes] | str:
    """``(extension, bytes)`` of the image, or an error message for an unreadable source."""
    try:
        if item.array is None and enc.format == "keep" and enc.resize is None and Path(item.source).suffix.lower() in KEEP_EXTS:
            raw = Path(item.source).read_bytes()
            with Image.open(io.BytesIO(raw)) as img:  # copied as it is, but only if it decodes
                img.load()
            return KEEP_EXTS[Path(item.source).suffix.lower()], raw
        with Image.open(item.source) if item.array is None else Image.fromarray(item.array) as img:
            img.load()
            fmt = "png" if enc.format == "keep" else enc.format
            if img.mode not in ("RGB", "L") or (fmt == "jpg" and img.mode != "L"):
                img = img.convert("RGB")
            if enc.resize and min(img.size) != enc.resize:
                scale = enc.resize / min(img.size)
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
            return fmt, encode_image(img, fmt, enc.quality)
    except Exception as exc:
        return f"{item.source}: {type(exc).__name__}: {exc}"


def _encode_chunk(args: tuple[list[Item], Encoding]) -> list[tuple[str, bytes] | str]:
    items, enc = args
    return [encode(i, enc) for i in items]


def _encoded(items: list[Item], enc: Encoding, workers: int) -> Iterator[tuple[str, bytes] | str]:
    chunks = [(items[i : i + 64], enc) for i in range(0, len(items), 64)]
    if workers <= 1:
        for chunk in chunks:
            yield from _encode_chunk(chunk)
        return
    with ProcessPoolExecutor(workers) as pool:
        for results in pool.map(_encode_chunk, chunks):
            yield from results


def parse_shard_size(text: str) -> tuple[int | None, int | None]:
    """``"1000"`` -> (1000 samples, None); ``"256MB"``/``"1GB"`` -> (None, bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b)?\s*", text.lower())
    if not match:
        raise DataError(f"--shard-size={text!r}: give a sample count (1000) or a size (256MB, 1GB)")
    number, unit = float(match.group(1)), match.group(2)
    if unit is None:
        return int(number), None
    return None, int(number * {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit[0]])


# -- the command ----------------------------------------------------------------------------------------------
def convert(
    src: Path,
    out_dir: Path,
    shard_size: str = "256MB",
    image_format: str = "auto",
    quality: int = 95,
    val_fraction: float = 0.1,
    seed: int = 0,
    resize: int | None = None,
    unlabelled: bool = False,
    images_key: str | None = None,
    labels_key: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Convert ``src`` to shards in ``out_dir``; returns the manifest."""
    from tqdm import tqdm

    if image_format not in ("auto", "keep", *PIL_FORMATS):
        raise DataError(f"--format={image_format}: use auto, keep, png, jpg or webp")
    if (out_dir / MANIFEST).exists() and not overwrite:
        raise DataError(f"{out_dir} already holds a dataset: choose another OUT_DIR, or pass --overwrite to replace it once the new one is complete")
    max_count, max_bytes = parse_shard_size(shard_size)
    source = read_source(src, unlabelled, images_key, labels_key)
    rng = np.random.default_rng(seed)
    splits = source.splits or split_items(source.pool, val_fraction, rng)
    from_files = any(item.array is None for items in splits.values() for item in items)
    fmt = ("keep" if from_files else "png") if image_format == "auto" else image_format
    enc = Encoding(fmt, quality, resize)
    workers = workers or min(os.cpu_count() or 1, 8)
    failures: list[str] = []
    start = time.perf_counter()

    def write(tmp: Path) -> dict:
        entries = {}
        for split, items in splits.items():
            items = [items[i] for i in rng.permutation(len(items))]
            sink = ShardSink(tmp, split, max_count=max_count, max_bytes=max_bytes)
            bar = tqdm(total=len(items), desc=f"{split:>5}", unit="img", disable=not progress, dynamic_ncols=True)
            for i, (item, result) in enumerate(zip(items, _encoded(items, enc, workers), strict=True)):
                bar.update()
                if isinstance(result, str):
                    failures.append(result)
                    continue
                ext, data = result
                sample = {"__key__": f"{split}-{i:08d}", ext: data, "json": json.dumps({"source": item.source}).encode()}
                if item.label is not None:
                    sample["cls"] = str(item.label).encode()
                sink.write(sample)
            bar.close()
            entries[split] = sink.close()
        return {
            "kind": "images",
            "created_by": "jepa data convert",
            "source": str(src.resolve()),
            "source_kind": source.kind,
            "classes": source.classes,
            "format": fmt,
            "quality": quality,
            "resize": resize,
            "seed": seed,
            "val_fraction": None if source.splits else val_fraction,
            "skipped": len(failures),
            "splits": entries,
        }

    if overwrite and (out_dir / MANIFEST).exists():
        staging = out_dir.with_name(f".{out_dir.name}.new")
        shutil.rmtree(staging, ignore_errors=True)
        manifest = write_dataset_atomically(staging, write)
        old = out_dir.with_name(f".{out_dir.name}.old")
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old)
    else:
        manifest = write_dataset_atomically(out_dir, write)
    manifest["elapsed_s"] = time.perf_counter() - start
    manifest["failures"] = failures
    return manifest


def summary(manifest: dict, out_dir: Path) -> str:
    lines = [f"wrote {out_dir} ({manifest['source_kind']}, format {manifest['format']}) in {manifest['elapsed_s']:.1f}s"]
    total = 0
    for split, entry in manifest["splits"].items():
        total += entry["num_samples"]
        lines.append(
            f"  {split:>5}: {entry['num_samples']} samples in {entry['num_shards']} shards ({entry['bytes'] / 2**20:.1f} MiB), {entry['pattern']}"
        )
    classes = manifest["classes"]
    lines.append(f"  classes: {len(classes)} ({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})" if classes else "  unlabelled")
    lines.append(f"  {total / max(manifest['elapsed_s'], 1e-9):.0f} images/s")
    if manifest["failures"]:
        lines.append(f"  skipped {len(manifest['failures'])} unreadable images (first: {manifest['failures'][0]})")
    lines.append(f"train on it: jepa train data=images data.urls={out_dir} data.image_size=<side>")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="image folder (class subfolders or flat), .npz, or IDX file/directory")
    parser.add_argument("out_dir", type=Path, help="new directory for the shards and manifest.json")
    parser.add_argument("--shard-size", default="256MB", help="samples per shard (1000) or bytes per shard (256MB, 1GB); default 256MB")
    parser.add_argument(
        "--format", dest="image_format", default="auto", help="png | jpg | webp | keep (copy encoded files); auto: keep files, png arrays"
    )
    parser.add_argument("--quality", type=int, default=95, help="jpg/webp quality (default 95)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction per class when SRC has no split (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the sample order (default 0)")
    parser.add_argument("--resize", type=int, default=None, help="resize so the shorter side has this many pixels")
    parser.add_argument("--unlabelled", action="store_true", help="ignore class folders and labels")
    parser.add_argument("--images-key", default=None, help="npz array holding the images")
    parser.add_argument("--labels-key", default=None, help="npz array holding the labels")
    parser.add_argument("--workers", type=int, default=None, help="encoding processes (default: CPUs, at most 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT_DIR (only after the new one is complete)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    kwargs = {k: v for k, v in vars(args).items() if k not in ("src", "out_dir", "no_progress", "command", "func")}
    manifest = convert(args.src, args.out_dir, progress=not args.no_progress, **kwargs)
    print(summary(manifest, args.out_dir))
    return 0
