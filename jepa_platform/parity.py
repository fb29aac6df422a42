"""Losses of a few Lightning training steps under one process, DDP and FSDP on the same global batches.

:func:`strategy_losses` trains an objective for ``steps`` optimiser steps with the real Lightning Trainer and
strategy (``ddp`` or :class:`~jepa_platform.parallel.FSDP2Strategy`) on ``world_size`` CPU processes (gloo,
loopback), each rank stepping on its contiguous slice of the same global batches that a single process steps on.
The processes are started here the way ``torchrun`` starts them (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_*``), so Lightning joins them instead of launching its own. It can stop after a step with a checkpoint and
resume from it, to compare a resumed run with an uninterrupted one. Objectives are built as
:func:`~jepa_platform.testing.build_objective` builds them (BatchNorm-free, small) in float64, so that the
comparison measures the strategy, not float32 rounding.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from jepa_platform.parallel import local_tensor, paired_local_tensors
from jepa_platform.testing import _slice_batch, build_objective, free_port, objective_batch

STRATEGIES = ("single", "ddp", "fsdp")


class _StreamSampler(torch.utils.data.Sampler):
    """A stream over the batches: each epoch continues where the previous one stopped, also across ``fit`` calls,
    so that a resumed run steps on the batches the uninterrupted run steps on (as the project's DataModules resume
    their position; Lightning restores its loop counters only after the DataLoader iterator exists)."""

    def __init__(self, per_epoch: int) -> None:
        self.per_epoch, self.position = per_epoch, 0

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self):
        for _ in range(self.per_epoch):
            self.position += 1
            yield self.position - 1


def _local_bytes(tensors: Any) -> int:
    return sum(local_tensor(t).nbytes for t in tensors if isinstance(t, torch.Tensor))


class _Recorder(L.Callback):
    """``train/loss`` (averaged over ranks by the objective's logging) after every training batch, the wall time of
    each step after the first, and this rank's bytes of parameters, gradients and optimiser state."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.step_seconds: list[float] = []
        self.grad_bytes = 0
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.grad_bytes = max(self.grad_bytes, _local_bytes(p.grad for p in pl_module.parameters()))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))
        self.step_seconds.append(time.perf_counter() - self._start)

    def memory(self, trainer: L.Trainer, model: torch.nn.Module) -> dict[str, int]:
        states = [v for opt in trainer.optimizers for state in opt.state.values() for v in state.values()]
        return {"param_bytes": _local_bytes(model.parameters()), "grad_bytes": self.grad_bytes, "optimizer_bytes": _local_bytes(states)}


class _StopAfterEpoch(L.Callback):
    """Ends ``fit`` after the first epoch while the Trainer (and so every schedule) is set up for the whole run."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = True


def _strategy(name: str) -> Any:
    from lightning.pytorch.strategies import DDPStrategy

    from jepa_platform.parallel import FSDP2Strategy

    if name == "ddp":
        return DDPStrategy(process_group_backend="gloo")
    if name == "fsdp":
        return FSDP2Strategy(process_group_backend="gloo")
    return "auto"


def _layout(model: torch.nn.Module) -> dict[str, Any]:
    """How the trained model's parameters are laid out: the fraction that are sharded (DTensors), and whether every
    EMA target parameter has the placements and local shard shape of its online parameter."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    pairs = [(list(target.parameters()), list(online.parameters())) for target, online in getattr(model, "online_modules", list)()]
    try:
        for targets, onlines in pairs:
            paired_local_tensors(targets, onlines)
        same = True
    except ValueError:
        same = False
    return {
        "sharded_fraction": sum(isinstance(p, DTensor) for p in params) / len(params),
        "ema_pairs": sum(len(targets) for targets, _ in pairs),
        "target_sharded_like_online": same,
    }


def _fit(overrides: list[str], world_size: int, rank: int, run: dict[str, Any], out: Path) -> dict:
    strategy, per_rank, steps, epoch_steps, resume = run["strategy"], run["per_rank"], run["steps"], run["epoch_steps"], run["resume"]
    dtype = getattr(torch, run["dtype"])
    model = build_objective(tuple(overrides), dtype=dtype)
    global_batches = [objective_batch(model, per_rank * world_size, seed=s, dtype=dtype) for s in range(steps)]
    local = [_slice_batch(b, rank * per_rank, (rank + 1) * per_rank) for b in global_batches]
    recorder = _Recorder()

    per_epoch = epoch_steps or steps
    if steps % per_epoch:
        raise ValueError(f"epoch_steps={epoch_steps} must divide steps={steps}")

    def trainer(*callbacks: L.Callback) -> L.Trainer:
        # float64 runs: the model and batches are float64; every step logs, so that the recorder sees every step's loss
        options = {"precision": "32-true", "log_every_n_steps": 1, **run["trainer_kwargs"]}
        return L.Trainer(
            accelerator="cpu",
            devices=world_size,
            strategy=_strategy(strategy),
            max_epochs=steps // per_epoch,
            logger=False,
            callbacks=[recorder, *callbacks],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            default_root_dir=str(out),
            **options,
        )

    sampler = _StreamSampler(per_epoch)
    loader = DataLoader(local, batch_size=None, sampler=sampler)
    if not resume:
        fitted = trainer()
        fitted.fit(model, loader)
        result = {"losses": recorder.losses, "step_seconds": recorder.step_seconds[1:], **_layout(model), **recorder.memory(fitted, model)}
        if run["validate_after"]:  # Lightning calls configure_model again: the trained weights must stay as they are
            before = [local_tensor(p).clone() for p in model.parameters()]
            images = [{"image": b["views"][0], "label": b["label"]} for b in local]
            fitted.validate(model, DataLoader(images, batch_size=None), verbose=False)
            pairs = zip(model.parameters(), before, strict=True)
            result["changed_by_validate"] = max((float((local_tensor(p) - q).abs().max()) for p, q in pairs if q.numel()), default=0.0)
        return result
    first = trainer(_StopAfterEpoch())
    first.fit(model, loader)
    ckpt = out / "resume.ckpt"
    first.save_checkpoint(ckpt)
    model = build_objective(tuple(overrides), seed=123, dtype=dtype)  # different init: resume must restore it
    trainer().fit(model, loader, ckpt_path=str(ckpt), weights_only=True)
    return {"losses": recorder.losses, "checkpoint_is_dir": ckpt.is_dir(), **_layout(model)}


def _worker(rank: int, world_size: int, port: int, cases: dict[str, list[str]], run: dict[str, Any], out: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if run["strategy"] != "single":
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), NODE_RANK="0"
        )
    results = {}
    shared = Path(out, "shared")
    for name, overrides in cases.items():
        run_dir = shared / name
        results[name] = _fit(overrides, world_size, rank, run, run_dir)
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


def strategy_losses(
    cases: dict[str, list[str]],
    strategy: str,
    world_size: int = 2,
    per_rank: int = 4,
    steps: int = 4,
    epoch_steps: int = 2,
    resume: bool = False,
    trainer_kwargs: dict[str, Any] | None = None,
    dtype: str = "float64",
    validate_after: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per case, rank 0's ``{"losses": [train/loss after each step]}`` under ``strategy`` (``single``: one process on
    the global batches of ``world_size * per_rank`` samples), in epochs of ``epoch_steps`` steps. With ``resume``,
    the run stops after its first epoch and saves a checkpoint, and a freshly initialised model resumes from it.
    ``trainer_kwargs`` go to the Trainer (e.g. ``gradient_clip_val``, ``accumulate_grad_batches``). Uninterrupted
    runs also report rank 0's ``step_seconds`` (every step after the first) and its ``param_bytes``, ``grad_bytes``
    and ``optimizer_bytes`` (local shards under FSDP), for ``benchmarks/scaleout.py``. With ``validate_after``, the
    fitted Trainer then validates the model and ``changed_by_validate`` is the largest change of a weight."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {STRATEGIES}")
    procs = 1 if strategy == "single" else world_size
    with tempfile.TemporaryDirectory() as out:
        run = {
            "strategy": strategy,
            "per_rank": per_rank * world_size // procs,
            "steps": steps,
            "epoch_steps": epoch_steps,
            "resume": resume,
            "trainer_kwargs": dict(trainer_kwargs or {}),
            "dtype": dtype,
            "validate_after": validate_after,
        }
        args = (procs, free_port(), cases, run, out)
        mp.start_processes(_worker, args=args, nprocs=procs, start_method="spawn")
        return json.loads(Path(out, "rank0.json").read_text())
