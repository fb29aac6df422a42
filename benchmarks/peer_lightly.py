"""The platform against a hand-written lightly loop: SimCLR, ResNet-18 (standard stem), batch 128, 32 px, the same
augmentations, loss, projection head and optimiser, from the same images, on this machine, in one run.

- **lightly**: ``LightlyDataset`` over the image folder with ``SimCLRTransform`` (per-sample PIL augmentations in the
  DataLoader workers), ``SimCLRProjectionHead``, ``NTXentLoss``, SGD: the loop of lightly's own examples.
- **platform**: ``jepa train``'s code path (``run_train``: callbacks, online probe, MLflow logger) on shards written
  by ``jepa data convert`` from the same folder, with ``data.augment_on=workers`` and with ``data.augment_on=device``.
- **model step only**: both models on the same pre-augmented batch, no data loading, interleaved.

Each end-to-end measurement runs in its own process; its peak memory is the proportional set size (PSS) of the
process and its DataLoader workers, sampled every 0.2 s. Needs the bench extra: ``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from data_modules.datamodule import auto_workers

#: the recipe both sides use (lightly's SimCLRTransform arguments; the platform's transforms are built to match)
RECIPE = {"min_scale": 0.08, "cj_prob": 0.8, "cj_strength": 0.5, "cj_bright": 0.8, "cj_contrast": 0.8, "cj_sat": 0.4, "cj_hue": 0.2, "gray": 0.2}
LR, MOMENTUM, WEIGHT_DECAY, TEMPERATURE = 0.06, 0.9, 5e-4, 0.1


def make_images(root: Path, count: int, size: int) -> tuple[Path, Path]:
    """A CIFAR-like folder of PNGs (class subfolders) and its shards written by ``jepa data convert``."""
    from PIL import Image

    from data_modules.builtin.shapes import CLASSES, render
    from data_modules.convert import convert

    folder, shards = root / "images", root / "shards"
    for i in range(count):
        image, label = render(0, "train", i, size)
        (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / CLASSES[label] / f"{i:06d}.png")
    convert(folder, shards, shard_size="1000", val_fraction=0.02, progress=False)
    return folder, shards


# -- the two sides --------------------------------------------------------------------------------------------------
def lightly_parts(image_size: int) -> tuple[Any, Any, Any]:
    import timm
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(
        input_size=image_size,
        cj_prob=RECIPE["cj_prob"],
        cj_strength=RECIPE["cj_strength"],
        cj_bright=RECIPE["cj_bright"],
        cj_contrast=RECIPE["cj_contrast"],
        cj_sat=RECIPE["cj_sat"],
        cj_hue=RECIPE["cj_hue"],
        min_scale=RECIPE["min_scale"],
        random_gray_scale=RECIPE["gray"],
        gaussian_blur=0.0,
    )
    import torch

    model = torch.nn.Sequential(timm.create_model("resnet18", num_classes=0), SimCLRProjectionHead(512, 2048, 128))
    return transform, model, NTXentLoss(temperature=TEMPERATURE)


def platform_view_transform(image_size: int) -> Any:
    """conf/data/images.yaml's view transform with lightly's SimCLRTransform values (no blur, no solarize at 32 px)."""
    import torch
    from torchvision.transforms import v2

    s = RECIPE["cj_strength"]
    jitter = v2.ColorJitter(RECIPE["cj_bright"] * s, RECIPE["cj_contrast"] * s, RECIPE["cj_sat"] * s, RECIPE["cj_hue"] * s)
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(RECIPE["min_scale"], 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([jitter], p=RECIPE["cj_prob"]),
            v2.RandomGrayscale(p=RECIPE["gray"]),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )


def platform_overrides(image_size: int, batch_size: int) -> list[str]:
    return [
        "objective=simclr",
        "objective.projector_dims=[2048,128]",
        f"objective.temperature={TEMPERATURE}",
        f"objective.weight_decay={WEIGHT_DECAY}",
        "objective.lr_scaling=none",
        "encoder=resnet18",
        "encoder.small_stem=false",
        "optimizer=sgd",
        f"optimizer.lr={LR}",
        f"optimizer.momentum={MOMENTUM}",
        "trainer=cpu",
        f"data.batch_size={batch_size}",
    ]


# -- children: one measurement each ---------------------------------------------------------------------------------
def child_lightly(folder: Path, args: argparse.Namespace) -> list[float]:
    import torch
    from lightly.data import LightlyDataset
    from torch.utils.data import DataLoader

    from benchmarks.step_overhead import intervals

    torch.manual_seed(0)
    transform, model, criterion = lightly_parts(args.image_size)
    loader = DataLoader(
        LightlyDataset(input_dir=str(folder), transform=transform),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    times = [time.perf_counter()]
    while len(times) <= args.steps:
        for (x0, x1), _, _ in loader:
            loss = criterion(model(x0), model(x1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter())
            if len(times) > args.steps:
                break
    return intervals(times)


def child_platform(shards: Path, augment_on: str, args: argparse.Namespace, work: Path) -> list[float]:
    from omegaconf import open_dict

    from jepa_platform.config import compose_config
    from jepa_platform.train import run_train

    out = work / f"steps-{augment_on}.json"
    cfg = compose_config(
        [
            *platform_overrides(args.image_size, args.batch_size),
            "data=images",
            f"data.urls={shards}",
            f"data.image_size={args.image_size}",
            f"data.num_workers={args.workers if augment_on == 'workers' else 'auto'}",  # auto: decode-only workers
            f"data.augment_on={augment_on}",
            "data.knn_bank_size=512",
            f"++trainer.max_steps={args.steps}",
            "++trainer.enable_progress_bar=false",
            f"paths.runs_dir={work / 'runs'}",
            "+callbacks.step_times._target_=benchmarks.step_overhead.StepTimes",
            f"+callbacks.step_times.path={out}",
        ],
        output_dir=str(work / "runs" / augment_on),
    )
    with open_dict(cfg):
        cfg.data.view_transform = {"_target_": "benchmarks.peer_lightly.platform_view_transform", "image_size": args.image_size}
    run_train(cfg)
    return json.loads(out.read_text())


def child_steps(args: argparse.Namespace) -> dict[str, float]:
    """Samples/s of the model step alone (forward, loss, backward, SGD step) on one pre-augmented batch."""
    import torch

    from jepa_platform.config import build, compose_config

    torch.manual_seed(0)
    _, lightly_model, criterion = lightly_parts(args.image_size)
    lightly_opt = torch.optim.SGD(lightly_model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    cfg = compose_config([*platform_overrides(args.image_size, args.batch_size), f"data.image_size={args.image_size}"])
    objective = build(cfg.objective, "objective")
    platform_opt = objective.make_optimizer()
    views = [torch.randn(args.batch_size, 3, args.image_size, args.image_size) for _ in range(2)]

    def lightly_step() -> None:
        criterion(lightly_model(views[0]), lightly_model(views[1])).backward()
        lightly_opt.step()
        lightly_opt.zero_grad(set_to_none=True)

    def platform_step() -> None:
        objective.shared_step(views).loss.total.backward()
        platform_opt.step()
        platform_opt.zero_grad(set_to_none=True)

    best = {"lightly": float("inf"), "platform": float("inf")}
    n = max(args.steps // 4, 3)
    for _ in range(2):
        for name, step in (("lightly", lightly_step), ("platform", platform_step)):
            step()  # warm-up
            start = time.perf_counter()
            for _ in range(n):
                step()
            best[name] = min(best[name], (time.perf_counter() - start) / n)
    return {name: args.batch_size / seconds for name, seconds in best.items()}


# -- the parent: runs the children, samples their memory, prints the table ------------------------------------------
def _pss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_child(kind: str, argv: list[str]) -> tuple[Any, int]:
    """Run one measurement in a fresh process; return its JSON result and its peak memory (PSS, bytes)."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.peer_lightly", "--child", kind, *argv], stdout=subprocess.PIPE, text=True)
    peak, parent = 0, psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _pss(parent))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child '{kind}' failed with exit code {proc.returncode}")
    return json.loads(stdout.strip().splitlines()[-1]), peak


def steady_rate(step_times: list[float], batch_size: int, warmup: int) -> float:
    rest = step_times[warmup:]
    return batch_size * len(rest) / sum(rest)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the rates (worker start-up, allocator)")
    p.add_argument("--workers", type=int, default=auto_workers(), help="DataLoader workers of lightly and of augment_on=workers")
    p.add_argument("--child", choices=["lightly", "workers", "device", "steps"], help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        work = args.data
        if args.child == "lightly":
            result: Any = child_lightly(work / "images", args)
        elif args.child == "steps":
            result = child_steps(args)
        else:
            result = child_platform(work / "shards", args.child, args, work)
        print(json.dumps(result))
        return {}
    try:
        import lightly  # noqa: F401
    except ImportError:
        raise SystemExit("benchmarks/peer_lightly.py needs lightly: pip install -e '.[bench]' (make bench installs it)") from None
    shared = ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--workers", str(args.workers)]
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp), args.images, args.image_size)
        shared += ["--data", tmp]
        runs = {kind: run_child(kind, shared) for kind in ("lightly", "workers", "device", "steps")}
    rate = {kind: steady_rate(runs[kind][0], args.batch_size, args.warmup) for kind in ("lightly", "workers", "device")}
    steps, memory = runs["steps"][0], {kind: runs[kind][1] for kind in ("lightly", "workers", "device")}
    print(
        f"SimCLR ResNet-18, batch {args.batch_size}, {args.image_size}px, {args.images} images, CPU; DataLoader workers: "
        f"{args.workers} (lightly, augment_on=workers), {auto_workers(decode_only=True)} (augment_on=device: auto, decode only)"
    )
    print(f"{'':<34}{'samples/s':>10}{'peak PSS':>11}{'/ lightly':>11}{'/ own step':>12}")
    own = rate["lightly"] / steps["lightly"]
    print(f"{'lightly end to end':<34}{rate['lightly']:>10.0f}{memory['lightly'] / 2**20:>8.0f} MiB{1:>11.2f}{own:>12.2f}")
    for kind in ("workers", "device"):
        ratio, own = rate[kind] / rate["lightly"], rate[kind] / steps["platform"]
        print(f"{'platform end to end, augment ' + kind:<34}{rate[kind]:>10.0f}{memory[kind] / 2**20:>8.0f} MiB{ratio:>11.2f}{own:>12.2f}")
    print(f"{'lightly model step only':<34}{steps['lightly']:>10.0f}")
    print(f"{'platform model step only':<34}{steps['platform']:>10.0f}{'':>11}{steps['platform'] / steps['lightly']:>11.2f}")
    best = max(("workers", "device"), key=lambda k: rate[k])
    summary = {
        "end_to_end_ratio": rate[best] / rate["lightly"],
        "step_ratio": steps["platform"] / steps["lightly"],
        "end_to_end_over_step": rate[best] / steps["platform"],
        "memory_ratio": memory[best] / memory["lightly"],
        "best_augment_on": best,
    }
    print(
        f"targets: end to end x{summary['end_to_end_ratio']:.2f} (>= 2), end to end / model step {summary['end_to_end_over_step']:.2f} "
        f"(>= 0.75), peak memory x{summary['memory_ratio']:.2f} (<= 1.0), with augment_on={best}"
    )
    return summary


if __name__ == "__main__":
    main()
