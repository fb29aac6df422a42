"""Can the shard loader feed training? Two-view augmented samples/s of the image DataModule with 0, 1 and 2
workers, side by side with (a) the VICReg ResNet-18 training-step rate and (b) a plain map-style loader that
decodes the same images from individual files with the same augmentations, all measured in one run.

The images are a generated ImageNet-like folder (JPEG, 256 px, class subfolders) written to shards by
``jepa data convert``; the views use ``conf/data/images.yaml`` (RandomResizedCrop to 224, flip, colour jitter,
grayscale, blur, solarize). loader/step > 1: the loader keeps up with the model on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.data_vs_compute import samples_per_second, step_rate
from data_modules.builtin.shapes import CLASSES, render
from data_modules.convert import convert
from data_modules.decode import decode_image
from jepa_platform.config import compose_config


def make_folder(root: Path, num_images: int, size: int) -> Path:
    for i in range(num_images):
        image, label = render(0, "train", i, size)
        (root / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / CLASSES[label] / f"{i:05d}.jpg", quality=90)
    return root


def image_config(shards: Path, image_size: int, batch_size: int, workers: int):
    cfg = compose_config(
        ["data=images", f"data.urls={shards}", f"data.image_size={image_size}", f"data.batch_size={batch_size}", f"data.num_workers={workers}"]
    )
    return cfg.data


class FilesTwoViews(Dataset):
    """The map-style baseline: one JPEG file per sample, decoded and augmented twice."""

    def __init__(self, files: list[Path], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        image = decode_image(self.files[i].read_bytes())
        return {"views": [self.transform(image), self.transform(image)]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=768)
    p.add_argument("--source-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "folder", args.images, args.source_size)
        shards = Path(tmp) / "shards"
        convert(folder, shards, shard_size="64", val_fraction=0.0, progress=False)
        files = sorted(folder.rglob("*.jpg"))
        stream, files_rate = {}, {}
        for w in args.workers:
            data = image_config(shards, args.image_size, args.batch_size, w)
            dm = instantiate(data, _convert_="all")
            stream[w] = samples_per_second(dm.train_dataloader(), args.batches)
            baseline = DataLoader(FilesTwoViews(files, dm.view_transforms[0]), batch_size=args.batch_size, shuffle=True, num_workers=w)
            files_rate[w] = samples_per_second(baseline, args.batches)
    step = step_rate("resnet18", args.batch_size, args.steps, [2048, 2048, 2048], args.image_size)
    print(f"two {args.image_size}px views per sample, batch {args.batch_size}, {torch.get_num_threads()} torch threads")
    print(f"{'VICReg ResNet-18 training step':<34}{step:>10.1f} samples/s")
    print(f"{'workers':<10}{'shards/s':>10}{'files/s':>10}{'shards/step':>14}{'shards/files':>14}")
    for w in args.workers:
        print(f"{w:<10}{stream[w]:>10.1f}{files_rate[w]:>10.1f}{stream[w] / step:>14.2f}{stream[w] / files_rate[w]:>14.2f}")


if __name__ == "__main__":
    main()
