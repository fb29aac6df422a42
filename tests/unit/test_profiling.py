"""The default profiler: one shared no-op context per hook call, Lightning's own when a run names one."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.profilers import SimpleProfiler

from jepa_platform.config import build, compose_config
from jepa_platform.profiling import NoProfiler, default_profiler


def test_runs_get_the_no_op_profiler_unless_they_name_one(tmp_path):
    plain = compose_config(["debug=fast", f"paths.runs_dir={tmp_path}"], output_dir=str(tmp_path / "run"))
    (profiler,) = default_profiler(plain.trainer).values()
    assert isinstance(profiler, NoProfiler) and profiler.profile("a") is profiler.profile("b")
    named = compose_config(["debug=fast", "+trainer.profiler=simple", f"paths.runs_dir={tmp_path}"], output_dir=str(tmp_path / "run"))
    assert default_profiler(named.trainer) == {}
    trainer = build(named.trainer, "trainer", logger=False, **default_profiler(named.trainer))
    assert isinstance(trainer.profiler, SimpleProfiler)


def test_a_fit_with_the_no_op_profiler_calls_every_hook(tmp_path):
    calls = []

    class Count(L.Callback):
        def on_train_batch_end(self, *args):
            calls.append(1)

    model = BoringModel()
    trainer = L.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Count()],
        profiler=NoProfiler(),
        default_root_dir=tmp_path,
    )
    trainer.fit(model)
    assert len(calls) == 3 and torch.isfinite(next(model.parameters())).all()
