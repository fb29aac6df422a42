"""Speed levers, each measured before and after on the same model step and batch, side by side in one run:
channels_last, fused / foreach optimiser steps, ``torch.compile`` of the encoder and of the loss (opt-in config
switches: ``encoder.channels_last``, ``optimizer.foreach`` / ``optimizer.fused``, ``objective.compile_encoder``,
``objective.compile_loss``), and the view augmentations per sample (DataLoader workers) against batched on the
device (``data.augment_on``).

The model step is SimCLR with a ResNet-18 (standard stem) on two 32 px views of 128 samples, as in
benchmarks/peer_lightly.py; compile times are reported apart from the steady-state step.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from jepa_platform.config import build, compose_config

BASE = ["objective=simclr", "encoder=resnet18", "encoder.small_stem=false", "optimizer=sgd", "trainer=cpu", "data.image_size=32"]


def model_step(overrides: list[str], batch_size: int) -> tuple[Callable[[], None], Any]:
    cfg = compose_config([*BASE, f"data.batch_size={batch_size}", *overrides])
    torch.manual_seed(0)
    objective = build(cfg.objective, "objective")
    objective.compile_parts()
    optimizer = objective.make_optimizer()
    views = [torch.randn(batch_size, 3, 32, 32) for _ in range(2)]

    def step() -> None:
        objective.shared_step(views).loss.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, optimizer


def mean_time(step: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def optimizer_time(optimizer: torch.optim.Optimizer, n: int) -> float:
    """The optimiser step alone, on gradients of ones."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    return mean_time(optimizer.step, n)


def augmentation_rates(batch_size: int, batches: int) -> dict[str, tuple[float, float]]:
    """Two-view samples/s of the shapes and ImageNet-style recipes (conf/data), per sample in one process (what one
    DataLoader worker does) and batched (what the model's device does, here the CPU)."""
    from hydra.utils import instantiate

    from data_modules.batched_augment import BatchedViews

    rates = {}
    for name, overrides in {"shapes 32px": [], "images.yaml 32px": ["data=images", "data.urls=unused", "data.image_size=32"]}.items():
        cfg = compose_config([*BASE, *overrides])
        transform = instantiate(cfg.data.view_transform)
        images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a DataLoader worker runs one thread
        start = time.perf_counter()
        for _ in range(batches):
            [transform(image) for image in images for _ in range(2)]
        per_sample = batches * batch_size / (time.perf_counter() - start)
        torch.set_num_threads(threads)
        views = BatchedViews([transform, transform], ["a", "b"])
        views(images, 0)
        start = time.perf_counter()
        for i in range(batches):
            views(images, i)
        rates[f"{name}: 1 worker -> batched, {threads} threads"] = (per_sample, batches * batch_size / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compilation takes a minute on CPU)")
    args = p.parse_args(argv)
    rows: list[tuple[str, float, float]] = []  # (lever, before, after) in samples/s

    base_step, _ = model_step([], args.batch_size)
    base_step()
    base = args.batch_size / mean_time(base_step, args.steps)
    last, _ = model_step(["encoder.channels_last=true"], args.batch_size)
    last()
    rows.append(("encoder.channels_last=true (model step)", base, args.batch_size / mean_time(last, args.steps)))

    loop, foreach, fused = (["++optimizer.foreach=false", "++optimizer.fused=false"], ["++optimizer.foreach=true", "++optimizer.fused=false"],
                            ["++optimizer.foreach=false", "++optimizer.fused=true"])  # fmt: skip
    variants = {
        "sgd": {"loop": loop, "foreach": foreach, "fused": fused},
        "adamw": {"loop": loop, "foreach": foreach, "fused": fused},
        "lars": {"loop": loop[:1], "foreach": foreach[:1]},  # timm's LARS has no fused kernel
    }
    for optimizer, kinds in variants.items():
        times = {kind: optimizer_time(model_step([f"optimizer={optimizer}", *extra], args.batch_size)[1], 20) for kind, extra in kinds.items()}
        for kind in times:
            if kind != "loop":
                rows.append((f"optimizer={optimizer}: per-tensor loop -> {kind} (optimiser step)", 1 / times["loop"], 1 / times[kind]))

    if not args.no_compile:
        for switch in ("objective.compile_encoder=true", "objective.compile_loss=true"):
            step, _ = model_step([switch], args.batch_size)
            start = time.perf_counter()
            step()
            step()
            print(f"{switch}: first two steps (compilation) {time.perf_counter() - start:.0f} s")
            rows.append((f"{switch} (model step)", base, args.batch_size / mean_time(step, args.steps)))

    for name, (per_sample, batched) in augmentation_rates(args.batch_size, 4).items():
        rows.append((f"augmentation {name}", per_sample, batched))

    print(f"{'lever':<58}{'before /s':>11}{'after /s':>11}{'after/before':>14}")
    for name, before, after in rows:
        print(f"{name:<58}{before:>11.1f}{after:>11.1f}{after / before:>14.2f}")
    return rows


if __name__ == "__main__":
    main()
