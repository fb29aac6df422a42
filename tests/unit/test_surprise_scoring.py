"""Surprise scoring: the windowing of surprise over time, pairwise accuracy and relative surprise, the masks that
ask a video JEPA for the future, and world models that remember the frames before."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from jepa_platform.encoders.action_predictor import ActionConditionedPredictor
from jepa_platform.errors import ConfigError
from jepa_platform.masking import FutureMaskSampler, MixtureMaskSampler, MultiBlockMaskSampler, future_masks
from jepa_platform.surprise import FuturePredictor
from jepa_platform.surprise.scoring import PairScore, score_pairs, summarise, surprise_over_time


class FrameMean(nn.Module):
    """A stand-in model whose error on each predicted frame is that frame's mean value, plus the context's mean (so
    that a window's result shows which frames it was given)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[int, ...]] = []

    def surprise_window(self) -> tuple[int | None, int]:
        return 2, 1

    def future_errors(self, frames: Tensor, context: int) -> Tensor:
        self.calls.append(tuple(frames.shape))
        return frames[:, context:].flatten(2).mean(-1) + 1000 * frames[:, :context].flatten(1).mean(-1, keepdim=True)


def test_surprise_at_t_is_the_error_of_the_frames_predicted_from_the_context_before_t():
    clips = torch.arange(2 * 7, dtype=torch.float32).view(2, 7, 1, 1, 1).expand(2, 7, 1, 2, 2).contiguous()
    model = FrameMean()
    assert isinstance(model, FuturePredictor)
    s = surprise_over_time(model, clips, context=3, horizon=2, batch_size=3)
    assert s.shape == (2, 7)
    assert np.isnan(s[:, :3]).all() and np.isnan(s[:, 6]).all()  # nothing to predict from / no room for 2 frames
    for i in range(2):
        for t in range(3, 6):
            frames = clips[i, :, 0, 0, 0].numpy()
            expected = frames[t : t + 2].mean() + 1000 * frames[t - 3 : t].mean()
            assert s[i, t] == pytest.approx(expected)
    assert all(shape[1] == 5 for shape in model.calls) and max(shape[0] for shape in model.calls) <= 3  # batched windows


def test_windows_before_a_clips_first_new_frame_are_left_to_its_twin():
    clips = torch.rand(2, 8, 1, 2, 2)
    full = surprise_over_time(FrameMean(), clips, context=3, horizon=2)
    partial = surprise_over_time(FrameMean(), clips, context=3, horizon=2, from_frame=[6, 0])
    assert np.isnan(partial[0, :5]).all() and np.allclose(partial[0, 5:7], full[0, 5:7])  # windows 3..4 end before frame 6
    assert np.allclose(partial[1, 3:7], full[1, 3:7])


def test_clips_shorter_than_a_window_are_refused():
    with pytest.raises(ValueError, match="shorter than a window"):
        surprise_over_time(FrameMean(), torch.zeros(1, 3, 1, 2, 2), context=3, horizon=1)


def test_pairwise_accuracy_counts_strictly_higher_peaks_and_relative_surprise_is_normalised():
    possible = np.array([[math.nan, 1.0, 2.0], [math.nan, 1.0, 1.0], [math.nan, 4.0, 1.0]])
    impossible = np.array([[math.nan, 1.0, 3.0], [math.nan, 1.0, 1.0], [math.nan, 2.0, 2.0]])
    scores = score_pairs(possible, impossible, ["a", "a", "b"])
    assert [s.correct for s in scores] == [True, False, False]  # a tie is not a success
    assert scores[0].relative == pytest.approx(0.5) and scores[2].relative == pytest.approx(-0.5)
    summary = summarise(scores, ["a", "b", "c"])
    assert list(summary) == ["a", "b", "overall"]  # types without pairs are left out
    assert summary["a"] == {"pairs": 2.0, "pairwise_acc": 0.5, "relative": pytest.approx(0.25)}
    assert summary["overall"]["pairwise_acc"] == pytest.approx(1 / 3)
    assert PairScore("x", 0.0, 1.0).relative > 0  # no division by zero


def test_future_masks_take_every_token_after_the_context():
    masks = future_masks(2, (4, 2, 3), 3)
    assert masks.context.shape == (2, 18) and masks.targets.shape == (2, 1, 6)
    assert masks.context[0].tolist() == list(range(18)) and masks.targets[1, 0].tolist() == list(range(18, 24))
    with pytest.raises(ConfigError, match="leaves nothing to predict"):
        future_masks(1, (4, 2, 2), 4)


def test_a_mask_mixture_draws_its_samplers_by_weight():
    tubes, future = MultiBlockMaskSampler(context_scale=None, union_targets=True), FutureMaskSampler(horizon=1)
    g = torch.Generator().manual_seed(0)
    always_future = MixtureMaskSampler([tubes, future], [0.0, 1.0])
    assert all(always_future.sample(2, (4, 4, 4), g).targets.shape == (2, 1, 16) for _ in range(5))
    half = MixtureMaskSampler([tubes, future], [0.5, 0.5])
    kinds = {half.sample(2, (4, 4, 4), g).targets.shape[-1] == 16 for _ in range(40)}
    assert kinds == {True, False}
    with pytest.raises(ConfigError, match="one non-negative weight per sampler"):
        MixtureMaskSampler([tubes], [0.5, 0.5])


def test_a_predictor_with_history_uses_the_frames_before_and_rolls_them_forward():
    torch.manual_seed(0)
    predictor = ActionConditionedPredictor(dim=8, action_dim=0, hidden=16, depth=2, history=3)
    for p in predictor.parameters():  # leave the zero-initialised gates: make the condition matter
        nn.init.normal_(p, std=0.3)
    z, none = torch.randn(4, 8), torch.zeros(4, 0)
    past_a, past_b = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    assert not torch.allclose(predictor(z, none, past_a), predictor(z, none, past_b))  # velocity is in the past frames
    rollout = predictor.rollout(z, torch.zeros(4, 3, 0), past_a)
    step1 = predictor(z, none, past_a)
    step2 = predictor(step1, none, torch.stack([past_a[:, 1], z], dim=1))
    assert torch.allclose(rollout[:, 0], step1, atol=1e-6) and torch.allclose(rollout[:, 1], step2, atol=1e-6)
    still = predictor(z, none, z.unsqueeze(1).expand(-1, 2, -1))
    assert torch.allclose(predictor(z, none), still, atol=1e-6)  # no past: still before


def test_an_unconditioned_predictor_is_a_function_of_the_embedding_alone():
    predictor = ActionConditionedPredictor(dim=8, action_dim=0, hidden=16, depth=2, history=1)
    assert predictor.action_embed is None
    z = torch.randn(3, 8)
    assert predictor.rollout(z, torch.zeros(3, 4, 0)).shape == (3, 4, 8)


def _passive_world_model(*overrides: str) -> nn.Module:
    from jepa_platform.testing import build_objective

    return build_objective(("objective=ac_jepa", "objective.action_dim=0", "objective.history=3", *overrides)).eval()


def test_a_passive_world_model_trains_on_clips_without_actions_and_scores_windows():
    model = _passive_world_model().train()
    loss = model.training_step({"frames": torch.randn(4, 6, 3, 32, 32)}, 0)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.levels[0].predictor.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="at least 4 frames"):
        model.training_step({"frames": torch.randn(2, 3, 3, 32, 32)}, 0)
    model.eval()
    assert model.future_errors(torch.randn(2, 6, 3, 32, 32), 4).shape == (2, 2)


def test_with_uncertainty_surprise_is_the_error_in_units_of_the_expected_error():
    torch.manual_seed(0)
    plain, calibrated = _passive_world_model(), _passive_world_model("objective.uncertainty=true")
    calibrated.load_state_dict({**plain.state_dict(), **{k: v for k, v in calibrated.state_dict().items() if k.startswith("uncertainty_head")}})
    last = calibrated.uncertainty_head[-1]
    nn.init.zeros_(last.weight)
    nn.init.constant_(last.bias, math.log(4.0))  # every dimension expects a squared error of 4
    clips = torch.randn(3, 6, 3, 32, 32)
    assert torch.allclose(calibrated.future_errors(clips, 3), plain.future_errors(clips, 3) / 4, rtol=1e-5)
    calibrated.train()
    out, _, _ = calibrated.losses(clips, torch.zeros(3, 5, 0), None)
    out.terms["uncertainty"].backward()
    assert calibrated.uncertainty_head[-1].weight.grad.abs().sum() > 0  # it learns...
    shaped = [n for n, p in calibrated.named_parameters() if p.grad is not None and not n.startswith("uncertainty_head")]
    assert not shaped  # ...from detached embeddings and errors: it never shapes the model


def test_planning_rollout_is_the_training_rollout_with_folded_modulations():
    """In eval mode (planners, validation) the predictor folds the condition's last layer into the blocks'
    modulations: the same predictions and action gradients as the layer-by-layer path that training uses."""
    torch.manual_seed(0)
    predictor = ActionConditionedPredictor(dim=8, action_dim=3, hidden=16, depth=2)
    for block in predictor.blocks:  # the gates start at zero: give the modulations something to carry
        torch.nn.init.normal_(block.modulation.weight, std=0.3)
        torch.nn.init.normal_(block.modulation.bias, std=0.3)
    z0 = torch.randn(5, 8)
    actions = torch.randn(5, 4, 3, requires_grad=True)
    trained = predictor.train().rollout(z0, actions)
    (grad_trained,) = torch.autograd.grad(trained.square().sum(), actions)
    planned = predictor.eval().rollout(z0, actions)
    (grad_planned,) = torch.autograd.grad(planned.square().sum(), actions)
    assert torch.allclose(planned, trained, atol=1e-5) and torch.allclose(grad_planned, grad_trained, atol=1e-4)
    assert not torch.equal(planned[:, 1:], planned[:, :1].expand(-1, 3, -1))  # the actions do change the predictions
