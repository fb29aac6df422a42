"""ema_jepa and h_jepa: the EMA target in a real fit, checkpoint/resume, short runs on images and clips, errors."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from jepa_platform.callbacks.ema import momentum_at
from jepa_platform.config import build
from jepa_platform.errors import ConfigError
from jepa_platform.train import run_train

CLIPS = ("data=moving_shapes", "data.num_train=48", "data.num_val=16", "data.episodes_per_shard=16", "data.knn_bank_size=32", "data.batch_size=8")
SHORT = ("logger=none", "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=2", "trainer.log_every_n_steps=1")
H_JEPA_KEYS = [
    f"{k}level{i}/{m}" for i in (1, 2) for k, m in (("", "energy"), ("", "rank"), ("val/", "energy"), ("val/", "probe_acc"), ("val/", "rank"))
]


class RecordEMA(Callback):
    """Snapshots target and online weights around each step; runs before the objective's EMA callback."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.steps and "after" not in self.steps[-1]:
            self.steps[-1]["after"] = [p.clone() for p in pl_module.target.parameters()]
        self.steps.append({"before": [p.clone() for p in pl_module.target.parameters()]})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        assert "masks" in batch, "masks did not come with the batch"
        assert all(p.grad is None for p in pl_module.target.parameters())
        self.steps[-1]["online"] = [p.detach().clone() for p in pl_module.encoder.parameters()]
        self.steps[-1]["step"] = trainer.global_step - 1

    def on_train_end(self, trainer, pl_module):
        self.steps[-1]["after"] = [p.clone() for p in pl_module.target.parameters()]


def test_fit_moves_the_target_by_exactly_the_momentum_update(make_cfg):
    cfg = make_cfg("objective=ema_jepa", "objective.momentum_start=0.9", "objective.momentum_end=0.95", debug="fast_vit")
    model = instantiate(cfg.objective, _convert_="all")
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.collate = model.train_collate(datamodule.collate)
    record = RecordEMA()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=4, limit_val_batches=0, logger=False, enable_checkpointing=False, callbacks=[record], enable_progress_bar=False
    )
    trainer.fit(model, datamodule=datamodule)
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in model.target.parameters()}, "the target encoder is in the optimiser"
    total = int(trainer.estimated_stepping_batches)
    assert len(record.steps) == 4
    for rec in record.steps:
        m = momentum_at(rec["step"], total, 0.9, 0.95)
        moved = False
        for before, online, after in zip(rec["before"], rec["online"], rec["after"], strict=True):
            torch.testing.assert_close(after, m * before + (1 - m) * online, rtol=0, atol=1e-6)
            moved |= not torch.equal(after, before)
        assert moved
    assert trainer.callback_metrics["train/ema_momentum"] == pytest.approx(momentum_at(3, total, 0.9, 0.95))


def _target_state(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return {k: v for k, v in state["state_dict"].items() if k.startswith("target")}, state


@pytest.mark.parametrize("objective", ["ema_jepa", "h_jepa"])
def test_resume_restores_target_and_momentum_position(objective: str, make_cfg):
    args = (f"objective={objective}", "logger=none", "trainer.max_epochs=2", "data.batches_per_epoch=3", "++trainer.limit_val_batches=1")
    full = make_cfg(*args, run_name="full", debug="fast_vit")
    run_train(full)
    checkpoints = Path(full.paths.output_dir) / "checkpoints"
    first_epoch = next(checkpoints.glob("epoch000-*.ckpt"))
    resumed = make_cfg(*args, f"ckpt_path={first_epoch}", run_name="resumed", debug="fast_vit")
    metrics = run_train(resumed)
    expected, _ = _target_state(checkpoints / "last.ckpt")
    found, resumed_state = _target_state(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert expected.keys() == found.keys() and len(expected) > 0
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], rtol=0, atol=1e-6)
    ema_state = [v for k, v in resumed_state["callbacks"].items() if k.startswith("EMATargetUpdate")]
    assert ema_state == [{"last_step": 6}]
    start, _ = _target_state(first_epoch)
    assert any(not torch.equal(start[k], expected[k]) for k in expected), "the target did not move after the checkpoint"
    assert metrics["train/ema_momentum"] == pytest.approx(momentum_at(5, 6, 0.996, 1.0))


@pytest.mark.parametrize("objective", ["ema_jepa", "h_jepa"])
@pytest.mark.parametrize("data", ["images", "clips"])
def test_short_run(objective: str, data: str, make_cfg):
    cfg = make_cfg(f"objective={objective}", *SHORT, *(CLIPS if data == "clips" else ()), debug="fast_vit")
    metrics = run_train(cfg)
    for key in ("train/loss", "train/energy", "val/probe_acc", "val/knn_acc", "val/repr/rank"):
        assert key in metrics and math.isfinite(metrics[key]), f"{key} missing or not finite"
    if objective == "h_jepa":
        missing = [k for k in H_JEPA_KEYS if k not in metrics]
        assert not missing, f"h_jepa does not log {missing}"
        assert metrics["train/energy"] == pytest.approx(metrics["level1/energy"] + metrics["level2/energy"], rel=1e-4)


def test_clip_batches_carry_labels_and_actions(make_cfg):
    cfg = make_cfg("objective=ema_jepa", *CLIPS, debug="fast_vit")
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["frames"].shape == (8, 4, 3, 32, 32) and batch["actions"].shape == (8, 3, 1, 2)
    assert batch["label"].dtype == torch.int64 and int(batch["label"].max()) < 10
    assert datamodule.num_classes == 10


def test_extra_regularisers_are_logged(make_cfg):
    cfg = make_cfg("objective=ema_jepa", *SHORT, "objective/regulariser=vicreg", "objective.regulariser.sigreg_weight=0.1", debug="fast_vit")
    metrics = run_train(cfg)
    for term in ("prediction", "variance", "covariance", "sigreg"):
        assert math.isfinite(metrics[f"train/loss/{term}"])


@pytest.mark.parametrize("objective", ["ema_jepa", "h_jepa"])
def test_target_view_is_the_colour_twin_of_the_context_view(objective: str, make_cfg):
    """objective.target_view=1 (the recipes' MSN-style target): the target encoder sees view 1, the context view 0;
    the loss then depends on view 1, and a batch without it is a one-line error."""
    cfg = make_cfg(f"objective={objective}", "objective.target_view=1", debug="fast_vit")
    model = build(cfg.objective, "objective")
    model.log = model.log_loss = model.expose = lambda *a, **k: None
    x, twin = torch.randn(2, 4, 3, 32, 32).unbind(0)
    batch = {"views": [x, twin], "batch_seed": 0}
    assert model.target_input(batch, x) is twin
    torch.manual_seed(0)
    loss = model.training_step(batch, 0)
    torch.manual_seed(0)
    assert not torch.allclose(loss, model.training_step({"views": [x, x], "batch_seed": 0}, 0))
    with pytest.raises(ConfigError, match=r"target_view=1 needs image batches with at least 2 views .* data.shared_transform"):
        model.training_step({"views": [x], "batch_seed": 0}, 0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("objective=ema_jepa",), "needs a ViT encoder"),  # debug=fast: a ResNet
        (("objective=h_jepa", "encoder=vit_test", "~objective.projector_dims"), "at least 2 levels"),
        (("objective=ema_jepa", "encoder=vit_test"), "has no projector"),
        (("objective=ema_jepa", "encoder=vit_test", "~objective.projector_dims", "objective.loss=l3"), "smooth_l1"),
    ],
)
def test_config_errors(overrides, message, make_cfg):
    cfg = make_cfg(*overrides)
    if "at least 2 levels" in message:
        cfg.objective.levels = cfg.objective.levels[:1]
    with pytest.raises(ConfigError, match=message):
        build(cfg.objective, "objective")


def test_jepa_eval_uses_the_objectives_representation_on_clips(make_cfg):
    """jepa eval rebuilds the objective and probes its representation (every h_jepa level, concatenated) on clips."""
    import json

    from jepa_platform.eval import cli as eval_cli

    cfg = make_cfg("objective=h_jepa", "logger=none", "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1", *CLIPS, debug="fast_vit")
    run_train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert eval_cli.main([str(run_dir), "--train-samples", "32", "--no-mlflow"]) == 0
    results = json.loads((run_dir / "eval.json").read_text())
    for key in ("eval/linear_probe_acc", "eval/knn_acc", "eval/random_init/linear_probe_acc", "eval/random_init/knn_acc"):
        assert 0.0 <= results[key] <= 1.0
