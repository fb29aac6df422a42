"""The non-finite guard's check under a two-process gloo group, without a Trainer: what each rank concludes."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jepa_platform.testing import free_port


def _run(rank: int, bad_rank: int | None, bad_step: int, steps: int) -> str:
    from jepa_platform.callbacks import NonFiniteGuard, TrainingDiverged

    module = torch.nn.Linear(3, 3)
    guard = NonFiniteGuard(policy="stop", check_every_n_steps=steps, max_consecutive=5)
    trainer = SimpleNamespace(loggers=[], is_global_zero=rank == 0, log_every_n_steps=1)
    guard.on_train_start(trainer, module)
    for step in range(steps):
        for p in module.parameters():
            p.grad = torch.ones_like(p)
        nan = float("nan") if rank == bad_rank and step >= bad_step else 1.0
        module.last_loss = SimpleNamespace(total=torch.tensor(nan), terms={"fit": torch.tensor(1.0), "stretch": torch.tensor(nan)})
        guard._record(module, step)
    try:
        guard.check(trainer)
    except TrainingDiverged as e:
        return str(e)
    return ""


def _worker(rank: int, world_size: int, port: int, bad_rank: int, bad_step: int, steps: int, out_dir: str) -> None:
    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))  # a rank left waiting fails
    try:
        messages = [_run(rank, None if case == "clean" else bad_rank, bad_step, steps) for case in ("clean", "bad")]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(messages))
        dist.barrier()  # a rank tearing the group down while the other still uses it aborts ("terminate called ...")
    finally:
        dist.destroy_process_group()


def guard_messages(bad_rank: int, bad_step: int, steps: int = 6, world_size: int = 2) -> list[list[str]]:
    """Per rank, the messages with which the guard's check stopped ("" if it did not) after ``steps`` steps: with every
    step finite, then with ``bad_rank``'s non-finite (a NaN loss term ``stretch``) from ``bad_step`` on."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(world_size, free_port(), bad_rank, bad_step, steps, out), nprocs=world_size, start_method="spawn")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world_size)]
