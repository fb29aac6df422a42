"""Can the data path feed a GPU? The demo's loader alone, per worker, and what an epoch spends outside training.

1. Loader only (``experiment=demo``: 32 px shapes, two views, batch 128), samples/s with 1 and 2 workers:
   ``augment_on=workers`` (decode and augment per sample in the workers) and ``augment_on=device`` (the workers
   only decode; one uint8 batch per step, the views made batched where the model is, here the CPU, timed apart),
   and the workers that would feed 20,000 samples/s at the measured rate per worker (decoding on ``device`` path).
2. The share of one demo epoch spent in validation (with the kNN bank) and, after training, in the final
   evaluation (``final_eval``: frozen linear probe and kNN of the trained and the random-init encoder).

    python -m benchmarks.data_path [--batches 30] [--skip-epoch]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf, open_dict

from jepa_platform.config import build, compose_config

TARGET = 20_000


def demo_config(data_dir: str, runs: Path, *overrides: str) -> Any:
    return compose_config(
        ["experiment=demo", "logger=none", f"paths.data_dir={data_dir}", f"paths.runs_dir={runs}", *overrides], output_dir=str(runs / "demo")
    )


def loader_rates(cfg: Any, batches: int) -> dict[str, float]:
    """Samples/s of the training loader alone (``batches`` batches after the first), and (``augment_on=device``) of
    making the views from those batches afterwards."""
    model = build(cfg.objective, "objective")
    dm = build(cfg.data, "data", collate=model.train_collate(torch.utils.data.default_collate))
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    loaded = [next(it) for _ in range(batches)]
    seconds = time.perf_counter() - start
    n = sum((b["raw"] if "raw" in b else b["views"][0]).shape[0] for b in loaded)
    out = {"loader": n / seconds}
    if "raw" in loaded[0]:  # the views of augment_on=device, made from the loaded batches, apart from the loading
        start = time.perf_counter()
        for batch in loaded:
            dm.on_after_batch_transfer(batch, 0)
        out["views_only"] = n / (time.perf_counter() - start)
    return out


class Phases(Callback):
    """Wall time of the training batches and of the validation loops (kNN bank included), and the moment the fit
    ended (what follows in ``run_train`` is the final evaluation), written to ``path`` as JSON."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.train = self.validation = 0.0
        self._tic = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tic = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.train += time.perf_counter() - self._tic
            self._tic = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validation += time.perf_counter() - self._tic
            self._tic = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {"train": self.train, "validation": self.validation, "fit_end": time.perf_counter()}
        Path(self.path).write_text(json.dumps(record))


def epoch_shares(data_dir: str, runs: Path) -> dict[str, float]:
    """One demo epoch with its validation, then the final evaluation, timed."""
    from jepa_platform.train import run_train

    cfg = demo_config(data_dir, runs, "trainer.max_epochs=1")
    record = runs / "phases.json"
    with open_dict(cfg):
        cfg.callbacks = OmegaConf.merge(cfg.callbacks, {"phases": {"_target_": "benchmarks.data_path.Phases", "path": str(record)}})
    run_train(cfg)
    done = time.perf_counter()
    phases = json.loads(record.read_text())
    return {"train": phases["train"], "validation": phases["validation"], "final_eval": done - phases.pop("fit_end")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "jepa-bench-data"))
    p.add_argument("--skip-epoch", action="store_true", help="only the loader rates")
    args = p.parse_args(argv)
    result: dict[str, Any] = {"loader": {}}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        print(f"{'loader only, demo (32 px, 2 views, b128)':<52}{'samples/s':>11}{'per worker':>12}{'views only':>12}")
        for augment_on in ("workers", "device"):
            for workers in (1, 2):
                r = loader_rates(demo_config(args.data_dir, runs, f"data.augment_on={augment_on}", f"data.num_workers={workers}"), args.batches)
                result["loader"][f"{augment_on}/{workers}"] = r
                views = f"{r['views_only']:>12.0f}" if "views_only" in r else f"{'':>12}"
                print(f"{f'augment_on={augment_on}, {workers} worker(s)':<52}{r['loader']:>11.0f}{r['loader'] / workers:>12.0f}{views}")
        per_worker = max(result["loader"]["device/1"]["loader"], result["loader"]["device/2"]["loader"] / 2)
        result["workers_for_target"] = math.ceil(TARGET / per_worker)
        print(f"workers to feed {TARGET:,} samples/s (decoding only, at {per_worker:.0f} samples/s per worker): {result['workers_for_target']}")
        if not args.skip_epoch:
            phases = epoch_shares(args.data_dir, runs)
            epoch = phases["train"] + phases["validation"]
            result["phases"] = phases
            print(
                f"\none demo epoch: training {phases['train']:.1f} s, validation and kNN bank {phases['validation']:.1f} s "
                f"({100 * phases['validation'] / epoch:.1f}% of the epoch); final evaluation {phases['final_eval']:.1f} s "
                f"({100 * phases['final_eval'] / (5 * epoch):.1f}% of the demo's 5 epochs)"
            )
    print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()
