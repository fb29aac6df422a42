"""Is training data-bound? Loader throughput (decode + two augmented views) next to the training-step throughput
of an encoder + projector, measured in the same process on the same machine, printed as a ratio.

A ratio below 1 means the loader cannot feed the model: add workers, lighten augmentations or move them to the GPU.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import torch

from data_modules.builtin import ensure_shapes_dataset
from jepa_platform.config import build_preset, compose_config


def loader_rate(data_dir: str, batch_size: int, workers: int, batches: int) -> float:
    from hydra.utils import instantiate

    cfg = compose_config(
        [
            f"paths.data_dir={data_dir}",
            f"data.batch_size={batch_size}",
            f"data.num_workers={workers}",
            "data.num_train=4096",
            "data.num_val=512",
            "data.samples_per_shard=512",
        ]
    )
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    return samples_per_second(dm.train_dataloader(), batches)


def samples_per_second(loader, batches: int) -> float:
    """Multi-view samples/s over ``batches`` batches after the first (worker start-up is not throughput)."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    n = sum(len(next(it)["views"][0]) for _ in range(batches))
    return n / (time.perf_counter() - start)


def step_rate(encoder: str, batch_size: int, steps: int, projector: list[int], image_size: int = 32) -> float:
    """VICReg training steps (two views, AdamW) per second x batch size, after one warm-up step."""
    model = build_preset(
        "objective=vicreg",
        f"encoder.name={encoder}",
        "encoder.small_stem=false",
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        projector_dims=projector,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    views = [torch.randn(batch_size, 3, image_size, image_size) for _ in range(2)]

    def step() -> None:
        model.shared_step(views).loss.total.backward()
        opt.step()
        opt.zero_grad()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--encoders", nargs="+", default=["test_resnet", "resnet18"])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ensure_shapes_dataset(tmp, num_train=4096, num_val=512, samples_per_shard=512)
        rates = {f"loader, {w} worker(s)": loader_rate(tmp, args.batch_size, w, args.batches) for w in (0, 1)}
    print(f"{'measurement (32px, 2 views)':<40}{'samples/s':>12}")
    for name, rate in rates.items():
        print(f"{name:<40}{rate:>12.0f}")
    for enc in args.encoders:
        rate = step_rate(enc, args.batch_size, args.batches // 2 or 1, [1024, 1024, 1024])
        print(f"{'train step, ' + enc:<40}{rate:>12.0f}")
        print(f"{'  ratio loader(0 workers) / step':<40}{rates['loader, 0 worker(s)'] / rate:>12.2f}")


if __name__ == "__main__":
    main()
