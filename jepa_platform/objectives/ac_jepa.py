"""AC-JEPA: an action-conditioned world model that predicts the next frame's embedding from the current one and
the action taken (the PLDM / LeWM recipe: prediction in embedding space plus an anti-collapse regulariser, no
decoder, no reward).

On a clip of frames ``x_0..x_H`` and actions ``a_0..a_{H-1}`` (a sequence DataModule with ``flatten_actions=true``):

- every frame is encoded, ``z_t = enc(x_t)``;
- **teacher-forced** one-step predictions ``P(z_t, a_t)`` are compared with ``z_{t+1}``: ``train/energy``, the
  one-step prediction error that a planner's cost is made of;
- an **open-loop rollout** from ``z_0`` feeds each prediction back in for ``H`` steps (``rollout`` term), which is
  what planning does: a model good at one step but drifting over ``H`` plans badly;
- **anti-collapse**: a :class:`~jepa_platform.losses.regularisers.Regulariser` passed in (VICReg's variance and
  covariance terms, PLDM; or SIGReg, LeJEPA and LeWM) on the frame embeddings, gathered over ranks; the targets get
  gradients too (no EMA, no stop-gradient, as in LeWM), unless ``stop_grad_targets``;
- a small **state head** regresses the true state (``states`` of the collected data, e.g. the agent's position)
  from *detached* embeddings: it never shapes the representation, and it is what guardrails check predicted
  embeddings with (``world_model.costs.Guardrail``). ``val/state_error`` is its mean Euclidean error;
- the **slow features** of the validation clips' embeddings (SFA, :mod:`jepa_platform.metrics.slowness`) are
  measured at every validation and saved with the weights: planners may measure the energy to the goal in that
  space (``planning_embedding``), where it follows the distance travelled instead of saturating a few steps away.

**Passive dynamics** (``action_dim=0``): clips without actions (a ball under gravity) train the same model with an
unconditioned predictor; ``history`` > 1 lets each prediction see the embeddings of the frames before (velocity and
acceleration are not in one frame). Such a model scores surprise (``jepa surprise``) by its prediction error.

**Levels**: the model is an encoder and a list of :class:`~jepa_platform.world_model.level.Level` s (level 1 here;
``levels_above`` adds :class:`~jepa_platform.world_model.level.UpperLevel` s that predict several steps at once from
macro-actions: :class:`~jepa_platform.objectives.HierarchicalACJEPA`). Planners read ``encode`` and ``levels``.

Validation logs ``val/rollout_energy/h<h>`` (open-loop error h steps ahead, h = 1..H) and ``val/state_error``; the
frame embeddings are exposed to the evaluation callbacks (``repr/*``, ``emb/*``, ``val/repr/*``; a probe and kNN
when the episodes carry labels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from jepa_platform.distributed import gather_with_grad
from jepa_platform.encoders.action_predictor import ActionConditionedPredictor
from jepa_platform.encoders.latent import LatentInference
from jepa_platform.errors import ConfigError
from jepa_platform.losses.functional import LossOutput, variance
from jepa_platform.losses.regularisers import Regulariser
from jepa_platform.metrics.slowness import SlownessStats
from jepa_platform.objectives.base import Objective
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective
from jepa_platform.world_model.level import Level, UpperLevel, state_head

#: builds a predictor from the widths the objective knows: ``(dim=, action_dim=, history=)``
PredictorFactory = Callable[..., ActionConditionedPredictor]
#: builds a level above from the level below's widths: ``(below_dim=, below_action_dim=, state_dim=, state_scale=)``
LevelFactory = Callable[..., UpperLevel]


def metric_prefix(index: int) -> str:
    """Where a level's metrics go: level 1's at the top (``train/*``, ``val/*``), level ``k``'s under ``level<k>/``."""
    return "" if index == 0 else f"level{index + 1}/"


@register_objective("ac_jepa")
class ACJEPA(Objective):
    """Action-conditioned JEPA world model: an encoder, an AdaLN action-conditioned predictor and a regulariser passed
    in, a multi-step loss in embedding space, a detached state head for guardrails (see module docstring).

    Args:
        encoder, optimizer: see :class:`~jepa_platform.objectives.base.Objective` (also takes its other arguments).
        predictor: builds level 1's predictor given ``dim``, ``action_dim`` and ``history`` (a partial
            :class:`ActionConditionedPredictor` with its width and depth); ``None``: its defaults.
        regulariser: anti-collapse terms on the frame embeddings; ``None`` or one without weights: none (a control
            that collapses).
        action_dim: width of one step's (flattened) action; 0: no actions (passive dynamics, e.g. intuitive physics).
        state_dim: width of the states the state heads regress (0: no head).
        history: embeddings each prediction sees, the current one included (1: the current one only); clips need at
            least ``history + 1`` frames. Planners give a start without past, which counts as ``history`` still frames.
        rollout_steps: open-loop steps of the rollout term (``None``: the whole clip).
        prediction_weight, rollout_weight: weights of the teacher-forced and open-loop terms.
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
        state_scale: the state heads regress ``states / state_scale`` (the environment's extent).
        latent_dim: width of a latent variable ``z`` the predictor takes next to the action, inferred in training from
            the embeddings before and after each step (:mod:`jepa_platform.encoders.latent`); 0: none. Planners give
            it the prior's mean or samples (``jepa plan --latent-samples``).
        latent_weight: weight of ``z``'s KL to the prior (nats per step): the price of each bit it carries.
        levels_above: named builders of the levels above level 1, lowest first (``conf/objective/hierarchical_ac_jepa.yaml``).
    """

    accepts_clips = True
    #: batches are clips with actions (contract tests give it two-rooms clips)
    needs_actions = True

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        predictor: PredictorFactory | None,
        regulariser: Regulariser | None,
        action_dim: int,
        state_dim: int,
        history: int,
        rollout_steps: int | None,
        prediction_weight: float,
        rollout_weight: float,
        smooth_weight: float,
        motion_var_weight: float,
        uncertainty: bool,
        stop_grad_targets: bool,
        state_scale: float,
        latent_dim: int,
        latent_weight: float,
        levels_above: Mapping[str, LevelFactory] | None,
        **kwargs: Any,
    ) -> None:
        if action_dim < 0 or state_dim < 0 or history < 1 or latent_dim < 0 or (rollout_steps is not None and rollout_steps < 1):
            raise ConfigError(
                "objective.action_dim >= 0, objective.state_dim >= 0, objective.history >= 1, objective.latent_dim >= 0 "
                "and objective.rollout_steps >= 1 (or null) are required"
            )
        if levels_above and history != 1:
            raise ConfigError("levels above level 1 need objective.history=1 (they read one embedding per step)")
        if levels_above and len(levels_above) > 1:  # a third level would read level 2 every stride steps: not built yet
            raise ConfigError(f"objective.levels_above has {len(levels_above)} levels: one level above level 1 is supported")
        super().__init__(encoder, optimizer, **kwargs)
        self.needs_actions = action_dim > 0
        d = self.feature_dim
        built = (predictor or ActionConditionedPredictor)(dim=d, action_dim=action_dim + latent_dim, history=history)
        latent = LatentInference(d, latent_dim, built.hidden) if latent_dim else None
        self.uncertainty_head = nn.Sequential(nn.Linear(history * d, built.hidden), nn.GELU(), nn.Linear(built.hidden, d)) if uncertainty else None
        levels = [Level(built, action_dim, latent=latent, state_head=state_head(d, state_dim), state_scale=state_scale)]
        for name, factory in (levels_above or {}).items():
            below = levels[-1]
            try:
                levels.append(factory(below_dim=below.dim, below_action_dim=below.action_dim, state_dim=state_dim, state_scale=state_scale))
            except TypeError as exc:
                raise ConfigError(f"objective.levels_above.{name} does not build a level: {exc}") from exc
        self.levels = nn.ModuleList(levels)
        self.regulariser = regulariser
        self.val_rollout = nn.ModuleList(nn.ModuleList() for _ in levels)
        self.val_state_error = nn.ModuleList(MeanMetric() for _ in levels)
        self.val_slowness = nn.ModuleList(SlownessStats(level.dim) for level in levels)

    # -- the world-model interface (planners read encode and levels) ---------------------------------------------
    def encode(self, frames: Tensor) -> Tensor:
        """``(B, C, H, W)`` (or ``(B, T, C, H, W)``) normalised frames to embeddings ``(B[, T], D)``."""
        if frames.dim() == 5:
            return self.encoder(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])
        return self.encoder(frames)

    def predict(self, z: Tensor, actions: Tensor) -> Tensor:
        """Level 1's open-loop predictions ``(N, H, D)`` from embeddings ``(N, D)`` and actions ``(N, H, A)``."""
        return self.levels[0].rollout(z, actions)

    @property
    def latent_dim(self) -> int:
        return self.levels[0].latent_dim

    # -- surprise (jepa surprise) ---------------------------------------------------------------------------------
    def surprise_window(self) -> tuple[int | None, int]:
        """``(context, horizon)``: the frames a prediction sees, and one step ahead."""
        return self.hparams.history, 1

    @torch.no_grad()
    def future_errors(self, frames: Tensor, context: int, actions: Tensor | None = None) -> Tensor:
        """Mean squared error ``(B, L - context)`` of the embeddings of each frame after the first ``context`` of
        windows ``(B, L, C, H, W)``, rolled out open loop from the context (its last ``history`` frames; a shorter
        context counts as still before), in units of the expected error when the model learnt it (``uncertainty``).
        ``actions`` ``(B, L - 1, A)`` are required when the model takes actions."""
        length = frames.shape[1]
        if not 1 <= context < length:
            raise ConfigError(f"a context of {context} frame(s) leaves nothing to predict in a window of {length}: use 1..{length - 1}")
        if self.hparams.action_dim and actions is None:
            raise ConfigError("this world model takes actions: score clips whose episodes have actions (actions.npy)")
        if actions is None:
            actions = frames.new_zeros(frames.shape[0], length - 1, 0)
        actions = actions.flatten(2) if actions.dim() == 4 else actions
        z = self.encode(frames)
        k = self.hparams.history
        seen = z[:, :context]
        if context < k:
            seen = torch.cat([seen[:, :1].expand(-1, k - context, -1), seen], dim=1)
        window = seen[:, seen.shape[1] - k :]
        predicted = self.levels[0].rollout(window[:, -1], actions[:, context - 1 :].to(z.dtype), window[:, :-1] if k > 1 else None)
        squared = (predicted - z[:, context:]).pow(2)
        if self.uncertainty_head is not None:  # what each prediction saw: the window of the rollout before it
            seen_by = torch.cat([window, predicted], dim=1).unfold(1, k, 1).movedim(-1, -2)[:, : predicted.shape[1]]
            squared = squared * torch.exp(-self.uncertainty_head(seen_by.flatten(2)))
        return squared.mean(dim=-1)

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
        needed = max([self.hparams.history + 1, *(level.stride + 1 for level in self.levels[1:])])
        if frames < needed:
            raise ConfigError(
                f"{type(self).__name__} (history {self.hparams.history}, level strides {[level.stride for level in self.levels]}) needs clips "
                f"of at least {needed} frames, got {frames}: raise data.clip_length (or lower objective.history or a level's stride)"
            )

    def _history(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """The current embeddings ``(B, n, D)`` of every step that has ``history`` frames up to it and a next frame, and
        the previous ``history - 1`` embeddings of each ``(B, n, history-1, D)`` (``None`` for ``history`` 1)."""
        k = self.hparams.history
        if k == 1:
            return z[:, :-1], None
        windows = z.unfold(1, k, 1).movedim(-1, -2)[:, :-1]  # (B, L-k, k, D)
        return windows[:, :, -1], windows[:, :, :-1]

    def losses(self, frames: Tensor, actions: Tensor, states: Tensor | None) -> tuple[LossOutput, Tensor, Tensor]:
        """Level 1's loss, the one-step energy of each clip ``(B,)``, and the frame embeddings ``(B, L, D)``."""
        hp = self.hparams
        level = self.levels[0]
        z = self.encode(frames)  # (B, L, D)
        k = hp.history
        targets = z[:, k:].detach() if hp.stop_grad_targets else z[:, k:]
        actions = actions[:, k - 1 :]
        current, past = self._history(z)
        kl = None
        if level.latent is not None:  # z of each step, inferred from where it started and where it ended
            latent, kl = level.latent(current, z[:, k:])
            actions = torch.cat([actions, latent], dim=-1)
        predictions = level.predictor(current, actions, past)
        one_step = F.mse_loss(predictions, targets)
        terms = {"prediction": one_step}
        steps = min(hp.rollout_steps or actions.shape[1], actions.shape[1])
        terms["rollout"] = F.mse_loss(level.rollout(z[:, k - 1], actions[:, :steps], z[:, : k - 1]), targets[:, :steps])
        total = hp.prediction_weight * one_step + hp.rollout_weight * terms["rollout"]
        if self.uncertainty_head is not None:
            window = current if past is None else torch.cat([past.flatten(-2), current], dim=-1)  # (B, L-k, k*D), oldest first
            log_var = self.uncertainty_head(window.detach())
            squared = (predictions.detach() - targets.detach()).pow(2)
            terms["uncertainty"] = 0.5 * (squared * torch.exp(-log_var) + log_var).mean()
            total = total + terms["uncertainty"]
        if kl is not None:
            terms["latent_kl"] = kl.mean()
            total = total + hp.latent_weight * terms["latent_kl"]
        if hp.smooth_weight:
            terms["smoothness"] = (z[:, 1:] - z[:, :-1]).pow(2).mean()
            total = total + hp.smooth_weight * terms["smoothness"]
        if hp.motion_var_weight:
            terms["motion_variance"] = variance(gather_with_grad((z - z.mean(dim=1, keepdim=True)).flatten(0, 1)))
            total = total + hp.motion_var_weight * terms["motion_variance"]
        if self.regulariser is not None and self.regulariser.active:
            regs, weighted = self.regulariser(gather_with_grad(z.flatten(0, 1)), self.global_step)
            terms.update(regs)
            total = total + weighted
        state_loss = level.state_loss(z, states)
        if state_loss is not None:
            terms["state_head"] = state_loss
            total = total + state_loss
        per_clip = (predictions.detach() - targets.detach()).pow(2).flatten(1).mean(dim=1)
        return LossOutput(total, terms), per_clip, z

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        frames, actions = self._clip(batch)
        states = batch.get("states")
        out, per_clip, z = self.losses(frames, actions, states)
        bs = frames.shape[0]
        self.log_loss(out, per_clip.mean(), bs)
        total, energies, below = out.total, {"prediction": per_clip}, z
        for index, level in enumerate(self.levels[1:], start=1):
            terms, level_total, level_per_clip, below = level.losses(below, actions, states, self.global_step)
            prefix = metric_prefix(index)
            values = {f"{prefix}loss/{name}": value for name, value in terms.items()}
            self.log_step_values({**values, f"{prefix}energy": level_per_clip.mean()}, bs)
            energies[prefix.rstrip("/")] = level_per_clip
            total = total + level_total
        flat = z.detach().flatten(0, 1)
        self.expose({"features": z[:, 0]}, {"repr": flat, "emb": flat}, energies=energies)
        return total

    # -- validation -------------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        frames, actions = self._clip(batch)
        z = self.encode(frames)  # once: every level reads these
        self.expose({"features": z[:, 0]})
        if dataloader_idx != 0:
            return
        k = self.hparams.history
        s = z
        for index, level in enumerate(self.levels):
            if index == 0:  # open loop from the first full history; the latent at its prior mean
                errors = (level.rollout(z[:, k - 1], actions[:, k - 1 :], z[:, : k - 1]) - z[:, k:]).pow(2).mean(dim=(0, 2))
            else:
                s = level.embed(s)
                errors = level.validation_errors(s, actions)
            self.val_slowness[index].update(s)
            rollout = self.val_rollout[index]
            while len(rollout) < len(errors):
                rollout.append(MeanMetric().to(self.device))
            for h, e in enumerate(errors):
                rollout[h].update(e, frames.shape[0])
            if level.state_head is not None and batch.get("states") is not None:
                self.val_state_error[index].update((level.decode_state(s) - batch["states"]).norm(dim=-1).mean(), frames.shape[0])

    def on_validation_epoch_end(self) -> None:
        for index, level in enumerate(self.levels):
            slowness_stats, prefix = self.val_slowness[index], metric_prefix(index)
            if not self.trainer.sanity_checking and slowness_stats.update_called:
                projection, slowness = slowness_stats.compute()
                level.slow_projection.copy_(projection)
                level.slowness.copy_(slowness)
                if index == 0:
                    self.log("val/slowness_min", slowness[0])
            if not self.trainer.sanity_checking:
                for h, metric in enumerate(self.val_rollout[index], start=1):
                    if metric.update_called:
                        self.log(f"{prefix}val/rollout_energy/h{h}", metric.compute())
                if self.val_state_error[index].update_called:
                    self.log(f"{prefix}val/state_error", self.val_state_error[index].compute())
            for metric in [*self.val_rollout[index], self.val_state_error[index], slowness_stats]:
                metric.reset()
