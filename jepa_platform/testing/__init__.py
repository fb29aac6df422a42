"""Checks that every objective must pass, importable by plugin authors' own tests.

:func:`ddp_gradient_check` runs one training step of each named objective under DistributedDataParallel on
``world_size`` CPU processes (gloo, loopback) and compares the gradients with one process stepping on the
concatenated batch. The encoder is timm's ``test_convnext`` and the projector uses LayerNorm: BatchNorm's per-rank
statistics differ from the global batch's by design (``trainer.sync_batchnorm`` fixes that on GPU), whereas this
check is about the loss terms' gathering. It runs in float64 so that the comparison measures the method, not
float32 rounding (Barlow Twins' gradients reach 1e3 on a 16-sample batch, where float32 agrees to ~1e-6 relative).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

#: overrides that give every objective a BatchNorm-free encoder and projector, small enough for CPU
DDP_CHECK_OVERRIDES = ("encoder=resnet_test", "encoder.name=test_convnext", "trainer=cpu")


def example_batch(
    batch_size: int, num_views: int = 2, image_size: int = 32, num_classes: int = 10, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """A deterministic training batch in the format of the image DataModules."""
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(batch_size, 3, image_size, image_size, generator=g).to(dtype) for _ in range(num_views)]
    return {"views": views, "label": torch.randint(0, num_classes, (batch_size,), generator=g)}


def example_clip_batch(
    batch_size: int, clip_length: int = 5, image_size: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """A deterministic clip batch with 2-D actions and states, in the format of the sequence DataModules."""
    g = torch.Generator().manual_seed(seed)
    return {
        "frames": torch.randn(batch_size, clip_length, 3, image_size, image_size, generator=g).to(dtype),
        "actions": (torch.rand(batch_size, clip_length - 1, 2, generator=g) * 2 - 1).to(dtype),
        "states": torch.rand(batch_size, clip_length, 2, generator=g).to(dtype),
    }


def objective_class(overrides: tuple[str, ...] | list[str]) -> type:
    """The class that ``jepa train <overrides>`` would build as its objective."""
    from hydra.utils import get_object

    from jepa_platform.config import compose_config

    return get_object(compose_config(list(overrides)).objective._target_)


def encoder_overrides(name: str) -> list[str]:
    """Overrides that give objective ``name`` a small encoder and data it accepts: ``debug=fast_vit`` (a test ViT) for
    objectives that need patch tokens (masked JEPAs), ``debug=fast_wm`` (two-rooms clips with actions) for world
    models, else the tiny ResNet of ``debug=fast``."""
    cls = objective_class((f"objective={name}",))
    if getattr(cls, "needs_token_encoder", False):
        return ["debug=fast_vit"]
    if getattr(cls, "needs_actions", False):
        return ["debug=fast_wm"]
    return ["debug=fast"]


def build_objective(overrides: tuple[str, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Instantiate the objective of ``jepa train <overrides>`` (plugins included), shrunk for CPU, with the same
    weights every call: a 64-64 projector with LayerNorm where the objective has those arguments, and timm's test
    ViT for objectives that need patch tokens."""
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from jepa_platform.config import compose_config

    base = list(DDP_CHECK_OVERRIDES)
    cls = objective_class(overrides)
    if getattr(cls, "needs_token_encoder", False):
        base = ["encoder=vit_test", "trainer=cpu"]
    elif getattr(cls, "needs_actions", False):
        base = ["debug=fast_wm"]
    cfg = compose_config([*base, *overrides])
    with open_dict(cfg):
        if "projector_norm" in cfg.objective:
            cfg.objective.projector_norm = "layer"
        if "projector_dims" in cfg.objective:
            cfg.objective.projector_dims = [64, 64]
    torch.manual_seed(seed)
    return instantiate(cfg.objective, _convert_="all").to(dtype)


def objective_batch(model: nn.Module, batch_size: int, seed: int = 0, dtype: torch.dtype = torch.float32, image_size: int = 32) -> dict[str, Any]:
    """:func:`example_batch` passed through the objective's training collate (as the DataLoader workers would), so
    that objectives that sample masks per batch get them, drawn from ``seed``."""
    from torch.utils.data import default_collate

    if getattr(model, "needs_actions", False):
        return example_clip_batch(batch_size, seed=seed, dtype=dtype, image_size=image_size)
    batch = example_batch(batch_size, seed=seed, dtype=dtype, image_size=image_size)
    collate = model.train_collate(default_collate) if hasattr(model, "train_collate") else default_collate
    if collate is default_collate:
        return batch
    samples = [{"views": [v[i] for v in batch["views"]], "label": batch["label"][i]} for i in range(batch_size)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return collate(samples)


class _Step(nn.Module):
    """Routes DDP's forward to the objective's ``training_step``, as Lightning's DDP wrapper does."""

    def __init__(self, objective: nn.Module) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.objective.training_step(batch, 0)


def _gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of every tensor in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, dict):
        return {k: _slice_batch(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_slice_batch(v, start, stop) for v in batch]
    return batch


def _worker(rank: int, world_size: int, port: int, cases: dict[str, list[str]], per_rank: int, out_dir: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    references, batches = {}, {}
    for name, overrides in cases.items():  # single process on the concatenated batch, before any process group exists
        model = build_objective(tuple(overrides), dtype=torch.float64)
        batches[name] = objective_batch(model, per_rank * world_size, dtype=torch.float64)
        model.training_step(batches[name], 0).backward()
        references[name] = _gradients(model)

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    results = {}
    try:
        for name, overrides in cases.items():
            local = _slice_batch(batches[name], rank * per_rank, (rank + 1) * per_rank)
            ddp = nn.parallel.DistributedDataParallel(_Step(build_objective(tuple(overrides), dtype=torch.float64)))
            ddp(local).backward()
            grads = {k.removeprefix("objective."): v for k, v in _gradients(ddp.module).items()}
            ref = references[name]
            results[name] = {
                "max_abs_diff": max(float((grads[k] - ref[k]).abs().max()) for k in ref) if set(grads) == set(ref) else float("inf"),
                "max_abs_grad": max(float(g.abs().max()) for g in ref.values()),
                "params_with_grad": len(ref),
                "same_params": set(grads) == set(ref),
            }
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a gloo rendezvous or a test server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_gradient_check(cases: list[str] | dict[str, list[str]], world_size: int = 2, per_rank: int = 8) -> dict[str, dict[str, Any]]:
    """Per case (and rank): the largest gradient difference between one DDP step and one single-process step.

    ``cases`` are objective names, or ``{label: [overrides of jepa train]}``. Returns
    ``{"<label>@rank<r>": {"max_abs_diff", "max_abs_grad", "params_with_grad", "same_params"}}``.
    """
    if not isinstance(cases, dict):
        cases = {name: [f"objective={name}"] for name in cases}
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(world_size, free_port(), cases, per_rank, out), nprocs=world_size, start_method="spawn")
        results = {}
        for r in range(world_size):
            for name, values in json.loads(Path(out, f"rank{r}.json").read_text()).items():
                results[f"{name}@rank{r}"] = values
    return results
