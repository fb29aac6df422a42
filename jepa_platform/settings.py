"""Checks of the run-level values that every ``jepa train`` uses, before anything is built or written.

Hydra accepts ``seed=abc`` or ``trainer.max_epochs=0``; Lightning or the data code would then fail with a traceback
deep inside, or (``max_epochs=0``) train nothing and exit 0. Each rule here turns such a value into one line that
says what to fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from jepa_platform.errors import ConfigError


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


#: key -> (accepts the value, what a valid value is); keys absent from the config are skipped
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_is_int, "an integer"),
    "float32_matmul_precision": (lambda v: v in (None, "highest", "high", "medium"), "highest, high (TF32), medium or null"),
    "trainer.precision": (
        lambda v: v in ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64", 32, 64, 16),
        "auto (bf16-mixed on GPUs, 32-true on CPUs), 32-true, bf16-mixed, 16-mixed, bf16-true or 64-true",
    ),
    "trainer.max_epochs": (lambda v: _is_int(v) and v >= 1, "a whole number of epochs >= 1 (the LR schedule needs a finite length)"),
    "trainer.max_steps": (lambda v: _is_int(v) and (v == -1 or v >= 1), "-1 (no limit) or a number of steps >= 1"),
    "trainer.log_every_n_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "trainer.accumulate_grad_batches": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "trainer.check_val_every_n_epoch": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 or null"),
    "trainer.gradient_clip_val": (lambda v: v is None or (_is_number(v) and v > 0), "a positive number or null"),
    "data.batch_size": (lambda v: _is_int(v) and v >= 2, "an integer >= 2 (joint-embedding losses compare samples)"),
    "data.val_batch_size": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 or null"),
    "data.num_workers": (lambda v: v == "auto" or (_is_int(v) and v >= 0), "an integer >= 0, or auto (from the machine's CPUs)"),
    "data.max_error_rate": (lambda v: _is_number(v) and 0 <= v <= 1, "a fraction between 0 and 1"),
    "optimizer.lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "optimizer.weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
}


def unwritable(path: Path) -> Path | None:
    """``None`` if ``path`` is a writable directory or can be created as one; else the ancestor in the way."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        return existing or path
    return None


def check_writable_dir(path: Path, key: str) -> None:
    """A directory that exists or can be created, and can be written."""
    blocker = unwritable(path)
    if blocker is not None:
        raise ConfigError(f"{key}={path} cannot be written ({blocker} is not a writable directory): choose a writable directory")


def check_run_settings(cfg: DictConfig) -> None:
    """Raise a one-line :class:`ConfigError` for the first value that breaks a rule of :data:`RULES`, or a runs
    directory that cannot be written."""
    runs_dir = OmegaConf.select(cfg, "paths.runs_dir", default=None)
    if runs_dir:
        check_writable_dir(Path(str(runs_dir)), "paths.runs_dir")
    for key, (accepts, what) in RULES.items():
        node = OmegaConf.select(cfg, key, default="__absent__", throw_on_missing=False)
        if isinstance(node, str) and node == "__absent__":
            continue
        if not accepts(node):
            raise ConfigError(f"{key}={node!r} is not valid: give {what}")
