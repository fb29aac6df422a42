"""The contract every registered objective and encoder must meet, built-ins and installed plugins alike.

Parametrised over the registries at collection time; conftest installs the example plugin first, so its
objective and encoder are tested here like the built-ins (and so is any plugin installed in the environment).
"""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from jepa_platform.callbacks.evaluation import exposed
from jepa_platform.config import group_options
from jepa_platform.objectives.base import _PLAIN_STEP_ATTRIBUTES, JointEmbeddingObjective
from jepa_platform.registry import ENCODERS, OBJECTIVES
from jepa_platform.surprise import FuturePredictor
from jepa_platform.testing import build_objective, encoder_overrides, objective_batch, objective_class
from jepa_platform.train import run_train

OBJECTIVE_NAMES = OBJECTIVES.names()
#: objectives that predict future frames (jepa surprise scores them), plugins included
FUTURE_PREDICTORS = [n for n in OBJECTIVE_NAMES if issubclass(objective_class((f"objective={n}",)), FuturePredictor)]
# encoder options: the presets in conf/encoder and every registered encoder that needs no argument
ENCODER_OPTIONS = [o for o in group_options("encoder") if o != "timm"]

STATS = ("std_mean", "std_min", "dead_dims_frac", "cov_offdiag", "rank", "uniformity")
STAT_KEYS = [f"{where}/{stat}" for where in ("repr", "emb", "val/repr") for stat in STATS] + ["perf/samples_per_sec"]
DESIGN_KEYS = ["train/loss", "train/energy", "val/probe_acc", "val/knn_acc", *STAT_KEYS]
#: world models (objectives with needs_actions) log rollout energies instead of probe and kNN (their data has no labels)
WORLD_MODEL_KEYS = ["train/loss", "train/energy", "val/rollout_energy/h1", *STAT_KEYS]


def test_the_example_plugin_is_under_test():
    assert "simsiam" in OBJECTIVE_NAMES and "small_convnet" in ENCODERS.names()


@pytest.mark.parametrize("name", OBJECTIVE_NAMES)
def test_objective_short_run_logs_design_metrics(name: str, make_cfg):
    debug = encoder_overrides(name)[0].removeprefix("debug=")
    cfg = make_cfg(
        f"objective={name}",
        "logger=none",
        "++trainer.limit_train_batches=3",
        "++trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=1",
        debug=debug,
    )
    metrics = run_train(cfg)
    expected = WORLD_MODEL_KEYS if debug == "fast_wm" else DESIGN_KEYS
    missing = [k for k in expected if k not in metrics]
    assert not missing, f"{name} does not log {missing}"
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["train/energy"])
    terms = [k for k in metrics if k.startswith("train/loss/")]
    assert terms, f"{name} logs no train/loss/<term>"
    if issubclass(objective_class((f"objective={name}",)), JointEmbeddingObjective):  # two views: positive pairs
        assert {"emb/alignment", "repr/alignment"} <= set(metrics), name


@pytest.mark.parametrize("name", OBJECTIVE_NAMES)
def test_every_trainable_parameter_gets_a_gradient(name: str):
    model = build_objective((f"objective={name}",))
    loss = model.training_step(objective_batch(model, 16), 0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    energies = exposed(model, "energies")  # per-sample energies for the energy histogram
    assert energies and all(e.shape == (16,) and torch.isfinite(e).all() for e in energies.values()), name
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not no_grad, f"{name}: no finite gradient for {no_grad}"
    assert any(p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    # the attributes set at every step bypass Module's setter, which is right only while none names a registered part
    assert not _PLAIN_STEP_ATTRIBUTES & {*model._parameters, *model._buffers, *model._modules}, name


@pytest.mark.parametrize("option", ENCODER_OPTIONS)
def test_encoder_contract(option: str, make_cfg):
    encoder = instantiate(make_cfg(f"encoder={option}").encoder, _convert_="all")
    assert isinstance(encoder.num_features, int) and encoder.num_features > 0
    x = torch.randn(2, 3, 32, 32)
    features = encoder(x)
    assert features.shape == (2, encoder.num_features) and torch.isfinite(features).all()
    if hasattr(encoder, "forward_tokens"):
        tokens = encoder.forward_tokens(x)
        assert tokens.dim() == 3 and tokens.shape[0] == 2 and tokens.shape[2] == encoder.num_features
    if getattr(encoder, "is_vit", False):  # ViTs also encode clips (B, T, C, H, W) and subsets of their patch tokens
        clip = encoder(torch.randn(2, 3, 3, 32, 32))
        assert clip.shape == (2, encoder.num_features) and torch.isfinite(clip).all()
        tokens = encoder.embed_tokens(x)
        keep = torch.tensor([[0, 5, 9], [1, 2, 3]])
        assert encoder.patch_features(encoder.encode_tokens(tokens, keep)).shape == (2, 3, encoder.num_features)
    features.pow(2).mean().backward()
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"encoder={option}: no gradient for {missing[:5]}"


def test_the_video_objectives_predict_future_frames():
    assert {"ac_jepa", "ema_jepa", "h_jepa", "pixel_predictor"} <= set(FUTURE_PREDICTORS)


@pytest.mark.parametrize("name", FUTURE_PREDICTORS)
def test_future_predictor_contract(name: str):
    """``future_errors``: one finite, non-negative error per predicted frame, each window scored on its own, and a
    prediction that depends on the context it was given."""
    model = build_objective((f"objective={name}",)).eval()
    context, horizon = model.surprise_window()
    context = context or 3
    length = context + horizon + 1
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(3, length, 3, 32, 32, generator=g)
    extra = {"actions": torch.rand(3, length - 1, 2, generator=g) * 2 - 1} if getattr(model, "needs_actions", False) else {}
    errors = model.future_errors(clips, context, **extra)
    assert errors.shape == (3, length - context) and torch.isfinite(errors).all() and (errors >= 0).all(), name
    alone = model.future_errors(clips[1:2], context, **{k: v[1:2] for k, v in extra.items()})
    assert torch.allclose(alone, errors[1:2], rtol=1e-4, atol=1e-6), f"{name}: windows of a batch are not scored independently"
    other = clips.clone()
    other[:, :context] = torch.randn(3, context, 3, 32, 32, generator=g)
    assert not torch.allclose(model.future_errors(other, context, **extra), errors), f"{name}: the context does not matter"
