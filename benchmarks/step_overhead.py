"""What does the platform cost per training step? For each objective, the training step through Lightning as a
normal ``jepa train`` runs it (its callbacks: online probe, embedding statistics, kNN and collapse monitors,
non-finite guard, EMA; the MLflow logger; LR schedule) against a bare PyTorch loop doing the same forward, backward
and optimiser step (and EMA update) on the same batches, in one process, side by side.

Both get the same pre-made batches, so data loading is not in either figure (benchmarks/peer_lightly.py measures
it end to end). Steps are interleaved in rounds (platform, bare, platform, bare...) so that load on the machine
hits both; the figure is the mean step time after warm-up, logging steps included. Target: platform/bare <= 1.05.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict
from torch.utils.data import DataLoader, Dataset

from jepa_platform.callbacks.cadence import logged_on_host
from jepa_platform.config import build, compose_config
from jepa_platform.objectives import JointEmbeddingObjective
from jepa_platform.profiling import default_profiler
from jepa_platform.tracking import RunLogger
from jepa_platform.train import _build_logger, _instantiate_callbacks
from jepa_platform.transfer import PlainBatchTransfer

#: objective -> overrides that make a CPU-sized version of its usual recipe
SETUPS = {
    "vicreg": ["objective=vicreg", "encoder=resnet18", "encoder.small_stem=false", "objective.projector_dims=[1024,1024]"],
    "barlow": ["objective=barlow", "encoder=resnet18", "encoder.small_stem=false", "objective.projector_dims=[1024,1024]"],
    "simclr": ["objective=simclr", "encoder=resnet18", "encoder.small_stem=false"],
    "ema_jepa": ["objective=ema_jepa", "encoder=vit_tiny", "encoder.model_kwargs.patch_size=4", "objective.predictor_depth=2"],
}


def intervals(times: list[float]) -> list[float]:
    """Durations between consecutive timestamps."""
    return [b - a for a, b in itertools.pairwise(times)]


class StepTimes(Callback):
    """Wall time between the starts of consecutive training batches: everything a step costs, hooks and waiting for
    data included. With ``path``, the step times are written there as JSON at the end (for runs built from a config)."""

    def __init__(self, path: str | None = None) -> None:
        self.starts: list[float] = []
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.last_end = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(self.last_end)  # the last step ends with its batch, not with the end-of-fit checkpoint
        if self.path:
            Path(self.path).write_text(json.dumps(self.steps()))

    def steps(self) -> list[float]:
        return intervals(self.starts)


class ModelTimes(StepTimes):
    """Step times, and per step the time of the model's own work inside it: what the bare loop runs (the objective's
    step, ``backward``, the optimiser's update without Lightning's closure, ``zero_grad``, the EMA update), timed in
    place. A step's time minus its model time is what the framework added to that very step, so a machine whose speed
    drifts between rounds moves both parts together (``benchmarks/framework_overhead.py``'s "in place" column)."""

    def __init__(self) -> None:
        super().__init__()
        self.model: list[float] = []
        self._current = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = "shared_step" if isinstance(pl_module, JointEmbeddingObjective) else "training_step"  # as bare_steps
        for name in (step, "backward", "update_target"):
            if callable(getattr(pl_module, name, None)):
                self._timed(pl_module, name)
        for optimizer in trainer.optimizers:
            self._timed(optimizer, "zero_grad")
            self._timed_update(optimizer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.starts:
            self.model.append(self._current)
        self._current = 0.0
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.model.append(self._current)
        super().on_train_end(trainer, pl_module)

    def _timed(self, owner: Any, name: str) -> None:
        fn = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._current += time.perf_counter() - start

        setattr(owner, name, timed)

    def _timed_update(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step`` less its closure (Lightning runs the step, backward and their hooks inside it; the model's
        parts of those are timed by their own wrappers)."""
        step = optimizer.step

        def timed(closure: Any = None, **kwargs: Any) -> Any:
            inner = 0.0

            def timed_closure() -> Any:
                nonlocal inner
                start = time.perf_counter()
                try:
                    return closure()
                finally:
                    inner += time.perf_counter() - start

            start = time.perf_counter()
            try:
                return step(closure=None if closure is None else timed_closure, **kwargs)
            finally:
                self._current += time.perf_counter() - start - inner

        optimizer.step = timed


class Batches(Dataset):
    """The same pre-made batches every epoch (``batch_size=None`` loaders hand them over as they are)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def make_batches(n: int, batch_size: int, image_size: int, num_classes: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "views": [torch.randn(batch_size, 3, image_size, image_size, generator=g) for _ in range(2)],
            "label": torch.randint(0, num_classes, (batch_size,), generator=g),
        }
        for _ in range(n)
    ]


def config(objective: str, batch_size: int, steps: int, runs_dir: Path, extra: list[str]) -> Any:
    return compose_config(
        [
            *SETUPS[objective],
            "trainer=cpu",
            f"data.batch_size={batch_size}",
            f"++trainer.max_steps={steps}",
            "++trainer.limit_val_batches=0",
            "++trainer.enable_progress_bar=false",
            "callbacks.model_checkpoint=null",  # checkpoints are written per epoch, not per step
            f"paths.runs_dir={runs_dir}",
            *extra,
        ],
        output_dir=str(runs_dir / objective),
    )


def platform_steps(cfg: Any, batches: list[dict], timer: StepTimes | None = None) -> list[float]:
    """Step times of ``trainer.fit`` as ``jepa train`` builds it (the data module hands over the given batches),
    taken by ``timer`` (default: a :class:`StepTimes`)."""
    L.seed_everything(0, workers=False)
    model = build(cfg.objective, "objective")
    timer = timer or StepTimes()
    logger = _build_logger(cfg, None)
    trainer = build(cfg.trainer, "trainer", callbacks=[*_instantiate_callbacks(cfg.callbacks), timer], logger=logger, **default_profiler(cfg.trainer))
    logged_on_host(trainer)  # as run_train: a logging step's values reach the host in one transfer
    if isinstance(logger, RunLogger):
        logger.connect()
    trainer.fit(model, datamodule=PremadeBatches(batches))
    return timer.steps()


class PremadeBatches(PlainBatchTransfer):
    """The pre-made batches as a data module that moves them to the device as the platform's data modules do."""

    def __init__(self, batches: list[dict]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Batches(self.batches), batch_size=None)


def bare_steps(cfg: Any, batches: list[dict]) -> list[float]:
    """The same model, optimiser and (for EMA objectives) target update in a plain loop: no logging, no callbacks."""
    L.seed_everything(0, workers=False)
    model = build(cfg.objective, "objective")
    model.configure_model()  # what the Trainer calls (sharding none here; the opt-in compile switches)
    model.log = lambda *args, **kwargs: None  # a bare loop logs nothing
    optimizer = model.make_optimizer()
    update_target = getattr(model, "update_target", None)
    shared_step = model.shared_step if isinstance(model, JointEmbeddingObjective) else None  # else the objective's own step
    model.train()
    times = [time.perf_counter()]
    for i, batch in enumerate(batches):
        loss = shared_step(batch["views"]).loss.total if shared_step else model.training_step(batch, i)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if update_target is not None:
            update_target(0.996)
        times.append(time.perf_counter())
    return intervals(times)


def mean_after_warmup(times: list[float], warmup: int) -> float:
    rest = times[warmup:]
    return sum(rest) / len(rest)


def measure(objective: str, batch_size: int, steps: int, rounds: int, warmup: int, extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(objective, batch_size, steps, Path(tmp), extra)
        image_size = int(cfg.data.image_size)
        with open_dict(cfg):
            cfg.callbacks.online_probe.num_classes = 10
        batches = make_batches(steps, batch_size, image_size, 10)
        platform, bare = [], []
        for _ in range(rounds):
            platform.append(mean_after_warmup(platform_steps(cfg, batches), warmup))
            bare.append(mean_after_warmup(bare_steps(cfg, batches), warmup))
    p, b = min(platform), min(bare)
    return {"platform_s": p, "bare_s": b, "ratio": p / b}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", nargs="+", default=list(SETUPS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=13, help="steps per measurement (log_every_n_steps is 10, as in a run)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best round of each counts")
    p.add_argument("--extra", nargs="*", default=[], help="config overrides for both (e.g. trainer.precision=bf16-mixed)")
    args = p.parse_args(argv)
    rows = []
    print(f"{'objective':<10}{'platform step':>15}{'bare step':>12}{'platform/bare':>15}")
    for objective in args.objectives:
        r = measure(objective, args.batch_size, args.steps, args.rounds, args.warmup, args.extra)
        rows.append({"objective": objective, **r})
        print(f"{objective:<10}{r['platform_s'] * 1e3:>12.1f} ms{r['bare_s'] * 1e3:>9.1f} ms{r['ratio']:>15.3f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
