"""AC-JEPA: an action-conditioned world model that predicts the next frame's embedding from the current one and
the action taken (the PLDM / LeWM recipe: prediction in embedding space plus an anti-collapse regulariser, no
decoder, no reward).

On a clip of frames ``x_0..x_H`` and actions ``a_0..a_{H-1}`` (a sequence DataModule with ``flatten_actions=true``):

- every frame is encoded, ``z_t = enc(x_t)``;
- **teacher-forced** one-step predictions ``P(z_t, a_t)`` are compared with ``z_{t+1}``: ``train/energy``, the
  one-step prediction error that a planner's cost is made of;
- an **open-loop rollout** from ``z_0`` feeds each prediction back in for ``H`` steps (``rollout`` term), which is
  what planning does: a model good at one step but drifting over ``H`` plans badly;
- **anti-collapse**: VICReg's variance and covariance terms (PLDM) or SIGReg (LeJEPA, LeWM) on the frame
  embeddings, gathered over ranks; the targets get gradients too (no EMA, no stop-gradient, as in LeWM), unless
  ``stop_grad_targets``;
- a small **state head** regresses the true state (``states`` of the collected data, e.g. the agent's position)
  from *detached* embeddings: it never shapes the representation, and it is what guardrails check predicted
  embeddings with (``world_model.costs.Guardrail``). ``val/state_error`` is its mean Euclidean error;
- the **slow features** of the validation clips' embeddings (SFA, :mod:`jepa_platform.metrics.slowness`) are
  measured at every validation and saved with the weights: planners may measure the energy to the goal in that
  space (``planning_embedding``), where it follows the distance travelled instead of saturating a few steps away.

**Passive dynamics** (``action_dim=0``): clips without actions (a ball under gravity) train the same model with an
unconditioned predictor; ``history`` > 1 lets each prediction see the embeddings of the frames before (velocity and
acceleration are not in one frame). Such a model scores surprise (``jepa surprise``) by its prediction error.

Validation logs ``val/rollout_energy/h<h>`` (open-loop error h steps ahead, h = 1..H) and ``val/state_error``; the
frame embeddings are exposed to the evaluation callbacks (``repr/*``, ``emb/*``, ``val/repr/*``; a probe and kNN
when the episodes carry labels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from jepa_platform.distributed import gather_with_grad
from jepa_platform.encoders.action_predictor import ActionConditionedPredictor
from jepa_platform.encoders.latent import LatentInference
from jepa_platform.errors import ConfigError
from jepa_platform.losses.functional import LossOutput, covariance, random_directions, sigreg, variance
from jepa_platform.metrics.slowness import SlownessStats, slow_weights
from jepa_platform.objectives.base import Objective
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective

REGULARISERS = ("vicreg", "sigreg", "none")


@register_objective("ac_jepa")
class ACJEPA(Objective):
    """Action-conditioned JEPA world model: encoder + AdaLN action-conditioned predictor, multi-step loss in embedding
    space, VICReg or SIGReg anti-collapse, a detached state head for guardrails (see module docstring).

    Args:
        encoder, optimizer: see :class:`~jepa_platform.objectives.base.Objective` (also takes its other arguments).
        action_dim: width of one step's (flattened) action; 0: no actions (passive dynamics, e.g. intuitive physics).
        state_dim: width of the states the state head regresses (0: no head).
        predictor_hidden, predictor_depth: the predictor's hidden width and residual blocks.
        history: embeddings each prediction sees, the current one included (1: the current one only); clips need at
            least ``history + 1`` frames. Planners give a start without past, which counts as ``history`` still frames.
        rollout_steps: open-loop steps of the rollout term (``None``: the whole clip).
        prediction_weight, rollout_weight: weights of the teacher-forced and open-loop terms.
        regulariser: ``vicreg`` (variance + covariance), ``sigreg`` or ``none`` (a control that collapses).
        var_weight, cov_weight: VICReg weights; sigreg_weight, num_slices: SIGReg weight and random directions.
        smooth_weight: weight of the temporal smoothness term ``|z_{t+1} - z_t|^2`` (PLDM): with the variance and
            covariance terms it favours slowly varying features, so that embedding distance follows distance
            travelled (walls included) rather than saturating a few steps away, which long-horizon planning needs.
        motion_var_weight: weight of a variance hinge on the embeddings centred on each clip's mean (their change
            over time): a varied but static scene satisfies the batch variance on its own, and prediction then gains
            by encoding what moves weakly, which is what a model of dynamics (and its surprise) needs most.
        uncertainty: learn the expected squared error of each one-step prediction (a head on the detached history,
            Gaussian negative log-likelihood of the detached errors: it never shapes the model); surprise is then the
            error in units of that expectation, so that moments that are always hard to predict (a bounce) count
            less than a confident prediction that fails.
        stop_grad_targets: detach the target embeddings (an EMA-free BYOL-style variant).
        state_scale: the state head regresses ``states / state_scale`` (the environment's extent).
        latent_dim: width of a latent variable ``z`` the predictor takes next to the action, inferred in training from
            the embeddings before and after each step (:mod:`jepa_platform.encoders.latent`); 0: none. Planners give
            it the prior's mean or samples (``jepa plan --latent-samples``).
        latent_weight: weight of ``z``'s KL to the prior (nats per step): the price of each bit it carries.
    """

    accepts_clips = True
    #: batches are clips with actions (contract tests give it two-rooms clips)
    needs_actions = True

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        action_dim: int = 2,
        state_dim: int = 2,
        predictor_hidden: int = 256,
        predictor_depth: int = 3,
        history: int = 1,
        rollout_steps: int | None = None,
        prediction_weight: float = 1.0,
        rollout_weight: float = 1.0,
        regulariser: str = "vicreg",
        var_weight: float = 1.0,
        cov_weight: float = 0.04,
        sigreg_weight: float = 0.1,
        num_slices: int = 256,
        smooth_weight: float = 0.0,
        motion_var_weight: float = 0.0,
        uncertainty: bool = False,
        stop_grad_targets: bool = False,
        state_scale: float = 1.0,
        latent_dim: int = 0,
        latent_weight: float = 0.03,
        **kwargs: Any,
    ) -> None:
        if regulariser not in REGULARISERS:
            raise ConfigError(f"objective.regulariser={regulariser!r} is not one of {', '.join(REGULARISERS)}")
        if action_dim < 0 or state_dim < 0 or history < 1 or latent_dim < 0 or (rollout_steps is not None and rollout_steps < 1):
            raise ConfigError(
                "objective.action_dim >= 0, objective.state_dim >= 0, objective.history >= 1, objective.latent_dim >= 0 "
                "and objective.rollout_steps >= 1 (or null) are required"
            )
        super().__init__(encoder, optimizer, **kwargs)
        self.needs_actions = action_dim > 0
        self.predictor = ActionConditionedPredictor(self.feature_dim, action_dim + latent_dim, predictor_hidden, predictor_depth, history)
        self.latent = LatentInference(self.feature_dim, latent_dim, predictor_hidden) if latent_dim else None
        width = history * self.feature_dim
        self.uncertainty_head = (
            nn.Sequential(nn.Linear(width, predictor_hidden), nn.GELU(), nn.Linear(predictor_hidden, self.feature_dim)) if uncertainty else None
        )
        self.state_head = nn.Sequential(nn.Linear(self.feature_dim, 128), nn.GELU(), nn.Linear(128, state_dim)) if state_dim else None
        self.val_rollout: nn.ModuleList = nn.ModuleList()
        self.val_state_error = MeanMetric()
        self.val_slowness = SlownessStats(self.feature_dim)
        # slow features of the embeddings (measured at every validation, saved with the weights): the planning space
        self.register_buffer("slow_projection", torch.eye(self.feature_dim))
        self.register_buffer("slowness", torch.ones(self.feature_dim))

    # -- the world-model interface (planners use these) -----------------------------------------------------------
    def encode(self, frames: Tensor) -> Tensor:
        """``(B, C, H, W)`` (or ``(B, T, C, H, W)``) normalised frames to embeddings ``(B[, T], D)``."""
        if frames.dim() == 5:
            return self.encoder(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])
        return self.encoder(frames)

    def predict(self, z: Tensor, actions: Tensor) -> Tensor:
        """Open-loop predictions ``(N, H, D)`` from embeddings ``(N, D)`` and actions ``(N, H, A)``; with a latent
        variable, actions of width ``action_dim + latent_dim`` carry its values and plain actions get its prior mean."""
        return self.predictor.rollout(z, self.with_latent(actions))

    @property
    def latent_dim(self) -> int:
        return self.hparams.get("latent_dim", 0)

    def with_latent(self, actions: Tensor) -> Tensor:
        """Actions padded with the latent's prior mean (zeros) when they do not carry latent values."""
        if self.latent_dim and actions.shape[-1] == self.hparams.action_dim:
            return torch.cat([actions, actions.new_zeros(*actions.shape[:-1], self.latent_dim)], dim=-1)
        return actions

    def planning_embedding(self, z: Tensor, slow_power: float = 0.0) -> Tensor:
        """Embeddings ``(..., D)`` in the space where planners measure the energy to the goal: projected on the slow
        features of the validation clips, each scaled by ``slowness^(-slow_power / 2)``
        (:mod:`jepa_platform.metrics.slowness`); the embedding itself for ``slow_power=0``."""
        if not slow_power:
            return z
        return (z @ self.slow_projection) * slow_weights(self.slowness, slow_power)

    def decode_state(self, z: Tensor) -> Tensor:
        """The state head's estimate of the state (in data units) for embeddings ``(..., D)``."""
        if self.state_head is None:
            raise ConfigError("this world model has no state head (objective.state_dim=0): guardrails need one")
        return self.state_head(z) * self.hparams.state_scale

    # -- surprise (jepa surprise) ---------------------------------------------------------------------------------
    def surprise_window(self) -> tuple[int | None, int]:
        """``(context, horizon)``: the frames a prediction sees, and one step ahead."""
        return self.hparams.history, 1

    @torch.no_grad()
    def future_errors(self, frames: Tensor, context: int, actions: Tensor | None = None) -> Tensor:
        """Mean squared error ``(B, L - context)`` of the embeddings of each frame after the first ``context`` of
        windows ``(B, L, C, H, W)``, rolled out open loop from the context (its last ``history`` frames; a shorter
        context counts as still before). ``actions`` ``(B, L - 1, A)`` are required when the model takes actions."""
        length = frames.shape[1]
        if not 1 <= context < length:
            raise ConfigError(f"a context of {context} frame(s) leaves nothing to predict in a window of {length}: use 1..{length - 1}")
        if self.hparams.action_dim and actions is None:
            raise ConfigError("this world model takes actions: score clips whose episodes have actions (actions.npy)")
        if actions is None:
            actions = frames.new_zeros(frames.shape[0], length - 1, 0)
        actions = self.with_latent(actions.flatten(2) if actions.dim() == 4 else actions)
        z = self.encode(frames)
        k = self.hparams.history
        seen = z[:, :context]
        if context < k:
            seen = torch.cat([seen[:, :1].expand(-1, k - context, -1), seen], dim=1)
        window, errors = seen[:, seen.shape[1] - k :], []
        for t in range(context, length):  # open loop: each prediction feeds the next window
            predicted = self.predictor(window[:, -1], actions[:, t - 1].to(z.dtype), window[:, :-1] if k > 1 else None)
            squared = (predicted - z[:, t]).pow(2)
            if self.uncertainty_head is not None:
                squared = squared * torch.exp(-self.uncertainty_head(window.flatten(1)))
            errors.append(squared.mean(dim=-1))
            window = torch.cat([window[:, 1:], predicted.unsqueeze(1)], dim=1)
        return torch.stack(errors, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Frame embeddings: ``(B, D)`` for images, ``(B, T, D)`` for clips."""
        return self.encode(x)

    # -- loss -----------------------------------------------------------------------------------------------------
    def _clip(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        if "frames" in batch and not self.hparams.action_dim:  # passive dynamics: actions of width 0
            frames = batch["frames"]
            self._check_length(frames.shape[1])
            return frames, frames.new_zeros(frames.shape[0], frames.shape[1] - 1, 0)
        if "frames" not in batch or "actions" not in batch:
            raise ConfigError(
                f"ac_jepa trains on clips with actions, got keys {', '.join(batch)}: use a sequence DataModule whose episodes have actions"
            )
        frames, actions = batch["frames"], batch["actions"]
        actions = actions.flatten(2) if actions.dim() == 4 else actions  # (B, L-1, s, A) chunks -> (B, L-1, s*A)
        if actions.shape[-1] != self.hparams.action_dim:
            raise ConfigError(
                f"objective.action_dim={self.hparams.action_dim} but the data's actions have width {actions.shape[-1]}: set objective.action_dim"
            )
        self._check_length(frames.shape[1])
        return frames, actions.to(frames.dtype)

    def _check_length(self, frames: int) -> None:
        if frames < self.hparams.history + 1:
            raise ConfigError(
                f"ac_jepa with history {self.hparams.history} needs clips of at least {self.hparams.history + 1} frames, got {frames}: "
                "raise data.clip_length (or lower objective.history)"
            )

    def _history(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """The current embeddings ``(B, n, D)`` of every step that has ``history`` frames up to it and a next frame, and
        the previous ``history - 1`` embeddings of each ``(B, n, history-1, D)`` (``None`` for ``history`` 1)."""
        k = self.hparams.history
        if k == 1:
            return z[:, :-1], None
        windows = z.unfold(1, k, 1).movedim(-1, -2)[:, :-1]  # (B, L-k, k, D)
        return windows[:, :, -1], windows[:, :, :-1]

    def regularisation(self, z: Tensor) -> dict[str, Tensor]:
        """Anti-collapse terms on frame embeddings ``(N, D)`` of the global batch."""
        reg = self.hparams.regulariser
        if reg == "vicreg":
            return {"variance": variance(z), "covariance": covariance(z)}
        if reg == "sigreg":
            generator = torch.Generator(device=z.device).manual_seed(1_000_003 + self.global_step)
            return {"sigreg": sigreg(z, random_directions(z.shape[-1], self.hparams.num_slices, generator, z.device))}
        return {}

    def losses(self, frames: Tensor, actions: Tensor, states: Tensor | None) -> tuple[LossOutput, Tensor, Tensor]:
        """The loss, the one-step energy of each clip ``(B,)``, and the frame embeddings ``(B, L, D)`` of one clip batch."""
        hp = self.hparams
        z = self.encode(frames)  # (B, L, D)
        k = hp.history
        targets = z[:, k:].detach() if hp.stop_grad_targets else z[:, k:]
        actions = actions[:, k - 1 :]
        current, past = self._history(z)
        kl = None
        if self.latent is not None:  # z of each step, inferred from where it started and where it ended
            latent, kl = self.latent(current, z[:, k:])
            actions = torch.cat([actions, latent], dim=-1)
        predictions = self.predictor(current, actions, past)
        one_step = F.mse_loss(predictions, targets)
        if self.uncertainty_head is not None:
            window = current if past is None else torch.cat([past.flatten(-2), current], dim=-1)  # (B, L-k, k*D), oldest first
            log_var = self.uncertainty_head(window.detach())
            squared = (predictions.detach() - targets.detach()).pow(2)
            terms_uncertainty = 0.5 * (squared * torch.exp(-log_var) + log_var).mean()
        else:
            terms_uncertainty = None
        steps = min(hp.rollout_steps or actions.shape[1], actions.shape[1])
        rollout = F.mse_loss(self.predictor.rollout(z[:, k - 1], actions[:, :steps], z[:, : k - 1]), targets[:, :steps])
        terms = {"prediction": one_step, "rollout": rollout}
        total = hp.prediction_weight * one_step + hp.rollout_weight * rollout
        if terms_uncertainty is not None:
            terms["uncertainty"] = terms_uncertainty
            total = total + terms_uncertainty
        if kl is not None:
            terms["latent_kl"] = kl.mean()
            total = total + hp.latent_weight * terms["latent_kl"]
        if hp.smooth_weight:
            terms["smoothness"] = (z[:, 1:] - z[:, :-1]).pow(2).mean()
            total = total + hp.smooth_weight * terms["smoothness"]
        if hp.motion_var_weight:
            terms["motion_variance"] = variance(gather_with_grad((z - z.mean(dim=1, keepdim=True)).flatten(0, 1)))
            total = total + hp.motion_var_weight * terms["motion_variance"]
        regs = self.regularisation(gather_with_grad(z.flatten(0, 1)))
        weights = {"variance": hp.var_weight, "covariance": hp.cov_weight, "sigreg": hp.sigreg_weight}
        for name, value in regs.items():
            total = total + weights[name] * value
        terms.update(regs)
        if self.state_head is not None and states is not None:
            state_loss = F.mse_loss(self.state_head(z.detach()), states / hp.state_scale)
            terms["state_head"] = state_loss
            total = total + state_loss
        per_clip = (predictions.detach() - targets.detach()).pow(2).flatten(1).mean(dim=1)
        return LossOutput(total, terms), per_clip, z

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        frames, actions = self._clip(batch)
        out, per_clip, z = self.losses(frames, actions, batch.get("states"))
        bs = frames.shape[0]
        self.log_loss(out, per_clip.mean(), bs)
        flat = z.detach().flatten(0, 1)
        self.expose({"features": z[:, 0]}, {"repr": flat, "emb": flat}, energies={"prediction": per_clip})
        return out.total

    # -- validation -------------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        frames, actions = self._clip(batch)
        z = self.encode(frames)
        self.expose({"features": z[:, 0]})
        if dataloader_idx != 0:
            return
        self.val_slowness.update(z)
        k = self.hparams.history
        predicted = self.predictor.rollout(z[:, k - 1], self.with_latent(actions[:, k - 1 :]), z[:, : k - 1])  # (B, H, D); z at its prior mean
        errors = (predicted - z[:, k:]).pow(2).mean(dim=(0, 2))  # (H,)
        while len(self.val_rollout) < len(errors):
            self.val_rollout.append(MeanMetric().to(self.device))
        for h, e in enumerate(errors):
            self.val_rollout[h].update(e, frames.shape[0])
        if self.state_head is not None and batch.get("states") is not None:
            error = (self.decode_state(z) - batch["states"]).norm(dim=-1).mean()
            self.val_state_error.update(error, frames.shape[0])

    def on_validation_epoch_end(self) -> None:
        metrics: Sequence[Metric] = [*self.val_rollout, self.val_state_error, self.val_slowness]
        if not self.trainer.sanity_checking and self.val_slowness.update_called:
            projection, slowness = self.val_slowness.compute()
            self.slow_projection.copy_(projection)
            self.slowness.copy_(slowness)
            self.log("val/slowness_min", slowness[0])
        if not self.trainer.sanity_checking:
            for h, metric in enumerate(self.val_rollout, start=1):
                if metric.update_called:
                    self.log(f"val/rollout_energy/h{h}", metric.compute())
            if self.val_state_error.update_called:
                self.log("val/state_error", self.val_state_error.compute())
        for metric in metrics:
            metric.reset()
