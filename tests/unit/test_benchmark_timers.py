"""The framework-overhead benchmark's in-place timer (benchmarks.step_overhead.ModelTimes): one model time per step,
each a part of its step (that it times what the bare loop runs is checked by timing, in benchmarks/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from benchmarks.framework_overhead import tiny_config
from benchmarks.step_overhead import ModelTimes, platform_steps
from jepa_platform.config import build
from jepa_platform.registry import OBJECTIVES
from jepa_platform.testing import objective_batch


def test_model_times_are_one_per_step_and_a_part_of_it(tmp_path: Path):
    steps = 12
    cfg = tiny_config("ema_jepa", tmp_path / "runs", 4, steps)  # an objective with an EMA update and its own step
    with open_dict(cfg):
        cfg.callbacks.online_probe.num_classes = 10
    batches = [objective_batch(build(cfg.objective, "objective"), 4, seed=i, image_size=int(cfg.data.image_size)) for i in range(steps)]
    timer = ModelTimes()
    times = platform_steps(cfg, batches, timer)
    assert len(times) == len(timer.model) == steps
    assert all(0 < model < step for model, step in zip(timer.model, times, strict=True))


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_the_overhead_benchmarks_tiny_models_use_few_sigreg_directions(name: str, tmp_path: Path):
    # SIGReg's directions are its width: left at a recipe's 1024, they made lejepa's tiny step 9 ms, whose memory
    # traffic inflated the framework's measured overhead (benchmarks/framework_overhead.py, TINY_OBJECTIVE)
    model = build(tiny_config(name, tmp_path / "runs", 4, 2).objective, "objective")
    sigreg = [m for m in model.modules() if getattr(m, "sigreg_weight", 0) > 0]
    assert all(m.num_slices <= 64 for m in sigreg), (name, [m.num_slices for m in sigreg])
