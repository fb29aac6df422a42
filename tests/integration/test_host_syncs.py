"""No host sync in a training step that neither logs nor validates, for every registered objective (plugins
included), through ``run_train`` with the default callbacks: on a GPU each one would wait for the step's kernels.

The counter (``jepa_platform.testing.host_syncs``) watches every torch call; a negative control shows that it
sees a sync hidden in a training step.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from jepa_platform.registry import OBJECTIVES
from jepa_platform.testing import encoder_overrides
from jepa_platform.testing.host_syncs import SyncCountingMode, sync_kind
from jepa_platform.train import run_train

COUNTER = "jepa_platform.testing.host_syncs.HostSyncCounter"


def counted_run(make_cfg, tmp_path: Path, name: str, *overrides: str) -> list[dict[str, Any]]:
    """Train ``name`` for 6 steps (log every 4: steps 0-2 and 4 are quiet) with the default callbacks, one loader
    worker (decoding is the workers' business), the counter first among the callbacks; its records."""
    debug = encoder_overrides(name)[0].removeprefix("debug=")
    cfg = make_cfg(
        f"objective={name}",
        "callbacks=default",
        "logger=none",
        "data.num_workers=1",
        "++trainer.limit_train_batches=6",
        "++trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=4",
        *overrides,
        debug=debug,
    )
    path = tmp_path / f"syncs_{name}.json"
    with open_dict(cfg):
        cfg.callbacks = OmegaConf.merge({"host_syncs": {"_target_": COUNTER, "path": str(path)}}, cfg.callbacks)
    run_train(cfg)
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_a_quiet_training_step_makes_no_host_sync(name: str, make_cfg, tmp_path: Path):
    steps = counted_run(make_cfg, tmp_path, name)
    quiet = [s for s in steps if not s["logs"] and not s["validates"]]
    assert len(quiet) >= 3, f"expected quiet steps among {[(s['step'], s['logs'], s['validates']) for s in steps]}"
    found: Counter[str] = Counter()
    for s in quiet:
        found.update(s["syncs"])
    assert not found, f"{name}: host syncs on steps that neither log nor validate:\n" + "\n".join(f"{n} x {k}" for k, n in found.most_common())
    # a step that logs (and does not validate) moves its values to the host in one transfer
    logging = [s for s in steps if s["logs"] and not s["validates"]]
    assert logging, steps
    for s in logging:
        assert sum(s["syncs"].values()) <= 1, f"{name}: step {s['step']} logs with {s['syncs']}"


def test_the_count_catches_a_sync_in_the_step_of_a_control(make_cfg, tmp_path: Path):
    steps = counted_run(make_cfg, tmp_path, "vicreg", "objective._target_=support.controls.SyncingVICReg")
    quiet = [s for s in steps if not s["logs"] and not s["validates"]]
    sites = {site for s in quiet for site in s["syncs"]}
    assert quiet and all(any("controls.py" in site for site in s["syncs"]) for s in quiet), sites


def test_the_counter_sees_the_syncs_of_a_step():
    x = torch.randn(8)
    mode = SyncCountingMode()
    with mode:
        _ = float(x.sum()), x[x > 0], x.nonzero(), bool(x.any()), x.tolist(), f"{x.mean():.2f}", torch.where(x > 0)
        _ = x.sum() * 2, x.clamp(0), torch.where(x > 0, x, 0.0)  # device-side: none of these
    kinds = Counter(k.split(" at ")[0] for k in mode.take().elements())
    assert kinds == Counter(["__float__", "boolean-mask indexing", "nonzero", "__bool__", "tolist", "__format__", "where(condition)"])
    assert sync_kind("where", (x > 0, x, x), None) is None
