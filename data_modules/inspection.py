"""``jepa data inspect DIR_OR_URLS``: counts, fields, class histogram and a PNG grid of samples of a dataset."""

from __future__ import annotations

import argparse
import io
import tarfile
from collections import Counter
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.utils import make_grid

from data_modules.decode import decode_field, decode_image, find_image_field
from data_modules.urls import expand_urls, iter_tar, open_url, read_manifest
from jepa_platform.errors import DataError


def _groups(spec: str) -> tuple[dict[str, list[str]], dict | None]:
    """Shards per split for a dataset directory, or one group for paths/patterns/URLs."""
    manifest = read_manifest(spec) if not spec.endswith(".tar") and "{" not in spec else None
    if manifest:
        return {split: expand_urls(spec, f"split {split}", split=split) for split in manifest.get("splits", {})}, manifest
    return {"shards": expand_urls(spec, "DIR_OR_URLS")}, None


def inspect_shards(urls: list[str], label_field: str, grid_images: list, grid_size: int) -> dict:
    stats = {"shards": len(urls), "samples": 0, "fields": Counter(), "labels": Counter(), "sizes": Counter(), "errors": []}
    for url in urls:
        try:
            with open_url(url) as stream:
                for sample in iter_tar(stream):
                    stats["samples"] += 1
                    stats["fields"].update(k for k in sample if not k.startswith("__"))
                    if label_field in sample:
                        stats["labels"][decode_field(label_field, sample[label_field])] += 1
                    try:
                        image_field = find_image_field(sample)
                    except KeyError:
                        continue
                    try:
                        with Image.open(io.BytesIO(sample[image_field])) as img:
                            stats["sizes"][img.size] += 1
                        if len(grid_images) < grid_size:
                            grid_images.append(decode_image(sample[image_field]))
                    except Exception as exc:
                        stats["errors"].append(f"{url}:{sample['__key__']}: {exc}")
        except (OSError, tarfile.TarError, EOFError) as exc:
            stats["errors"].append(f"{url}: {type(exc).__name__}: {exc}")
    return stats


def save_grid(images: list[torch.Tensor], path: Path, side: int = 96) -> None:
    side = min(side, max(min(img.shape[-2:]) for img in images))
    resized = [v2.functional.center_crop(v2.functional.resize(img, side, antialias=True), side) for img in images]
    grid = make_grid(torch.stack(resized), nrow=int(len(resized) ** 0.5 + 0.999), padding=2, pad_value=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def report(split: str, stats: dict, classes: list[str] | None) -> str:
    lines = [f"{split}: {stats['samples']} samples in {stats['shards']} shards"]
    lines.append("  fields: " + ", ".join(f"{k} ({n})" for k, n in sorted(stats["fields"].items())))
    if stats["sizes"]:
        (w, h), n = stats["sizes"].most_common(1)[0]
        widths, heights = zip(*stats["sizes"], strict=True)
        spread = f"width {min(widths)}-{max(widths)}, height {min(heights)}-{max(heights)}"
        lines.append(f"  image sizes: {len(stats['sizes'])} distinct, most common {w}x{h} ({n}); {spread}")
    if stats["labels"]:
        peak = max(stats["labels"].values())
        lines.append(f"  classes: {len(stats['labels'])}")
        for label, n in sorted(stats["labels"].items()):
            name = classes[label] if classes and 0 <= label < len(classes) else str(label)
            lines.append(f"    {label:>4} {name[:24]:<24} {n:>8} {'#' * max(1, round(30 * n / peak))}")
    if stats["errors"]:
        lines.append(f"  unreadable: {len(stats['errors'])} (first: {stats['errors'][0]})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="dataset directory, shard path, brace pattern, glob, pipe: command or URL")
    parser.add_argument("--grid", type=Path, default=Path("inspect_grid.png"), help="PNG grid of samples (default ./inspect_grid.png)")
    parser.add_argument("--num", type=int, default=64, help="samples in the grid (default 64; 0 for no grid)")
    parser.add_argument("--label-field", default="cls", help="field with the integer label (default cls)")


def run(args: argparse.Namespace) -> int:
    groups, manifest = _groups(args.target)
    classes = (manifest or {}).get("classes")
    images: list[torch.Tensor] = []
    for split, urls in groups.items():
        print(report(split, inspect_shards(urls, args.label_field, images, args.num), classes))
    if args.num > 0:
        if not images:
            raise DataError(f"{args.target}: no decodable image to draw: check the shards' image fields")
        save_grid(images, args.grid)
        print(f"grid of {len(images)} samples: {args.grid}")
    return 0
