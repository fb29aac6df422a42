"""One GPU benchmark, one table: what a lent GPU is measured by (issue targets beside each figure).

Rows, each measured in this one process:

- ``demo end to end``: ``experiment=demo`` as ``jepa train`` runs it (default callbacks, ``logger=none``,
  ``data.augment_on=device``, ``--workers`` loader workers, bf16-mixed), steady-state samples/s;
- ``demo model step only``: the same model, callbacks and trainer on batches already on the device;
- ``demo loader only``: the DataModule's training batches moved to the device and their views made there;
- ``resnet50 vicreg`` and ``vit_b16 ema_jepa`` at 224 px, bf16-mixed, batch 128, on batches on the device:
  samples/s and model FLOPs utilisation (FLOPs of one training step counted by ``torch.utils.flop_counter``,
  over ``--peak-tflops``);
- ``planners``: world-model evaluations/s of each planner, one replan of 50 episodes as one batch
  (``benchmarks.planning``);
- ``syncs per quiet step``: host syncs ``torch.cuda.set_sync_debug_mode`` reports in demo steps that do not log.

On a machine with torch, lightning and timm but not the platform's other dependencies, install the wheels first
(``../shared/GPU.md``: hydra-core, omegaconf, antlr4, webdataset, braceexpand, kornia, kornia_rs, torchcodec, gymnasium,
farama-notifications into ``/tmp/site``), then::

    PYTHONPATH=/tmp/site:$PWD python3 -m benchmarks.gpu --out $OUT/gpu_table.txt      # or: make bench-gpu

It imports no MLflow. ``--device cpu --quick`` runs every row small on a CPU (a check of the script, not figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

TARGETS = {
    "demo end to end": ">= 20,000 samples/s",
    "end to end / model step only": ">= 0.9",
    "vit_b16 ema_jepa MFU": ">= 40%",
    "planner evaluations/s": ">= 10,000,000",
}


def demo_overrides(args: argparse.Namespace, runs: Path) -> list[str]:
    gpu = args.device == "cuda"
    out = [
        "experiment=demo",
        "logger=none",
        "final_eval=false",
        f"paths.runs_dir={runs}",
        f"paths.data_dir={args.data_dir}",
        f"trainer.accelerator={'gpu' if gpu else 'cpu'}",
        "trainer.devices=1",
        f"trainer.precision={'bf16-mixed' if gpu else '32-true'}",
        "++trainer.enable_progress_bar=false",
        "++trainer.limit_val_batches=0",
        "data.augment_on=device",
        f"data.num_workers={args.workers}",
        f"++trainer.max_steps={args.steps}",
    ]
    if args.quick:
        out += ["generated.num_train=1024", "generated.num_val=256", "generated.samples_per_shard=256", "data.batch_size=32"]
    return out


def demo_end_to_end(args: argparse.Namespace, root: Path) -> dict[str, float]:
    """``jepa train experiment=demo`` in this process, with a step timer added to its callbacks."""
    from omegaconf import OmegaConf, open_dict

    from jepa_platform.config import compose_config
    from jepa_platform.train import run_train

    runs, times = root / "runs", root / "demo_steps.json"
    cfg = compose_config(demo_overrides(args, runs), output_dir=str(runs / "demo"))
    with open_dict(cfg):
        cfg.callbacks = OmegaConf.merge(cfg.callbacks, {"step_times": {"_target_": "benchmarks.step_overhead.StepTimes", "path": str(times)}})
    run_train(cfg)
    steps = json.loads(times.read_text())[args.warmup :]
    return {"samples_per_s": int(cfg.data.batch_size) / statistics.mean(steps), "batch_size": int(cfg.data.batch_size)}


def demo_parts(args: argparse.Namespace, root: Path) -> tuple[Any, Any]:
    from jepa_platform.config import build, compose_config

    cfg = compose_config(demo_overrides(args, root / "runs"), output_dir=str(root / "runs" / "parts"))
    model = build(cfg.objective, "objective")
    datamodule = build(cfg.data, "data", collate=model.train_collate(torch.utils.data.default_collate))
    return cfg, datamodule


def loader_only(args: argparse.Namespace, cfg: Any, datamodule: Any) -> float:
    """Training batches moved to the device and their views made there, samples/s (no model)."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    it = iter(loader)
    n, started = 0, None
    for i in range(args.steps):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        batch = datamodule.on_after_batch_transfer(move_data_to_device(batch, args.device), 0)
        if i == args.warmup:
            _sync(args.device)
            started, n = time.perf_counter(), 0
        n += batch["views"][0].shape[0]
    _sync(args.device)
    return n / (time.perf_counter() - started)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def model_step_rate(cfg: Any, batches: list[dict], args: argparse.Namespace) -> float:
    """Samples/s of ``trainer.fit`` (the run's callbacks and trainer) on batches already on the device."""
    from benchmarks.step_overhead import platform_steps

    times = platform_steps(cfg, batches)[args.warmup :]
    return batches[0]["views"][0].shape[0] / statistics.mean(times)


def step_flops(model: Any, batch: dict, device: str) -> float:
    """FLOPs of one training step (forward and backward) of ``model`` on ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.to(device).train()
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = model.training_step(batch, 0)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def big_model(args: argparse.Namespace, overrides: list[str], root: Path, quick_size: int) -> dict[str, float]:
    """Samples/s and MFU of one large model at 224 px (``quick_size``, batch 4 with ``--quick``) on batches on the
    device."""
    from omegaconf import open_dict

    from jepa_platform.config import build, compose_config
    from jepa_platform.testing import objective_batch

    size, batch_size = (quick_size, 4) if args.quick else (224, 128)
    gpu = args.device == "cuda"
    cfg = compose_config(
        [
            *overrides,
            "logger=none",
            f"data.image_size={size}",
            f"data.batch_size={batch_size}",
            f"trainer.accelerator={'gpu' if gpu else 'cpu'}",
            "trainer.devices=1",
            f"trainer.precision={'bf16-mixed' if gpu else '32-true'}",
            f"++trainer.max_steps={args.steps}",
            "++trainer.limit_val_batches=0",
            "++trainer.enable_progress_bar=false",
            "callbacks.model_checkpoint=null",
            f"paths.runs_dir={root / 'runs'}",
        ],
        output_dir=str(root / "runs" / overrides[0].replace("=", "_")),
    )
    with open_dict(cfg):
        if cfg.callbacks.get("online_probe") is not None:
            cfg.callbacks.online_probe.num_classes = 10
    model = build(cfg.objective, "objective")
    batches = [move_data_to_device(objective_batch(model, batch_size, seed=i % 4, image_size=size), args.device) for i in range(args.steps)]
    rate = model_step_rate(cfg, batches, args)
    flops = step_flops(model, batches[0], args.device)
    achieved = flops * rate / batch_size
    return {"samples_per_s": rate, "tflops": achieved / 1e12, "mfu": achieved / (args.peak_tflops * 1e12)}


def planner_rates(args: argparse.Namespace) -> dict[str, float]:
    from benchmarks.planning import measure

    results = measure(args.device, 16, 2 if args.quick else 10, episodes=50)
    return {name: r["evaluations_per_s"] for name, r in results.items()}


def quiet_step_syncs(cfg: Any, batches: list[dict], args: argparse.Namespace) -> float | None:
    """Mean host syncs per demo step that does not log, as CUDA's sync debug mode reports them (None on a CPU)."""
    if args.device != "cuda":
        return None
    from benchmarks.step_overhead import platform_steps

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            platform_steps(cfg, batches)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    every = int(cfg.trainer.get("log_every_n_steps") or 50)
    quiet_steps = len(batches) - len(batches) // every - 1
    return len(syncs) / max(quiet_steps, 1)  # an upper bound: warnings of logging steps are included


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--steps", type=int, default=120, help="steps per measurement (the first --warmup are left out)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's dense bf16 peak (H200: about 790 as the issue takes it)")
    p.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "jepa-gpu-data"))
    p.add_argument("--out", default=None, help="also write the table here")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a check that every row runs (not figures)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = min(args.steps, 12), min(args.warmup, 3)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    rows: list[tuple[str, str, str]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        end_to_end = demo_end_to_end(args, root)
        rows.append(("demo end to end, samples/s", f"{end_to_end['samples_per_s']:,.0f}", TARGETS["demo end to end"]))
        cfg, datamodule = demo_parts(args, root)
        rows.append(("demo loader only (device views), samples/s", f"{loader_only(args, cfg, datamodule):,.0f}", ""))
        from jepa_platform.config import build
        from jepa_platform.testing import objective_batch

        model = build(cfg.objective, "objective")
        size, batch_size = int(cfg.data.image_size), int(cfg.data.batch_size)
        batches = [move_data_to_device(objective_batch(model, batch_size, seed=i % 8, image_size=size), args.device) for i in range(args.steps)]
        step_only = model_step_rate(cfg, batches, args)
        rows.append(("demo model step only, samples/s", f"{step_only:,.0f}", ""))
        rows.append(("demo end to end / model step only", f"{end_to_end['samples_per_s'] / step_only:.2f}", TARGETS["end to end / model step only"]))
        syncs = quiet_step_syncs(cfg, batches, args)
        rows.append(("demo host syncs per step that does not log", "n/a (CPU)" if syncs is None else f"{syncs:.2f}", "0"))
        vit_b16 = ["objective=ema_jepa", "encoder=vit_tiny", "encoder.name=vit_base_patch16_224", "encoder.model_kwargs.patch_size=16"]
        big = {
            "resnet50 vicreg": (["objective=vicreg", "encoder=resnet50", "encoder.small_stem=false"], 32),
            "vit_b16 ema_jepa": (vit_b16, 128),  # the masks need an 8x8 token grid, also in the quick check
        }
        for name, (overrides, quick_size) in big.items():
            r = big_model(args, overrides, root, quick_size)
            mfu_target = TARGETS["vit_b16 ema_jepa MFU"] if "vit" in name else ""
            rows.append((f"{name} 224px b128 bf16, samples/s", f"{r['samples_per_s']:,.0f}", ""))
            rows.append((f"{name} MFU ({r['tflops']:.0f} TFLOP/s of {args.peak_tflops:.0f})", f"{100 * r['mfu']:.1f}%", mfu_target))
        for name, rate in planner_rates(args).items():
            rows.append((f"planner {name}, world-model evaluations/s (50 episodes)", f"{rate:,.0f}", TARGETS["planner evaluations/s"]))
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    note = " (--quick: a check of the script, not figures)" if args.quick else ""
    lines = [f"benchmarks.gpu on {device}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s{note}"]
    lines += [f"{'measurement':<62}{'value':>14}  target", *(f"{name:<62}{value:>14}  {target}" for name, value, target in rows)]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
