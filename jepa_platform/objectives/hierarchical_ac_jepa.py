"""Hierarchical AC-JEPA: a two-level world model whose second level predicts ``stride`` steps ahead in a more
abstract embedding, from a latent macro-action, so that a planner can search a long horizon in few steps (HWM,
hierarchical planning with latent world models, 2026).

- **Level 1** is :class:`~jepa_platform.objectives.ac_jepa.ACJEPA` unchanged: frame embeddings ``z_t`` predicted one
  step ahead from the action (its ``train/*`` and ``val/*`` metrics).
- **Level 2** reads the level-1 embeddings (detached by default: level 2 trains on top of level 1 from the same
  clips without changing it, in the same run): ``s_t = g(z_t)``, a smaller embedding; a **macro-action**
  ``m_t = A(a_t .. a_{t+k-1})`` encodes the ``k = stride`` actions between ``t`` and ``t + k``; a predictor
  ``P2(s_t, m_t)`` predicts ``s_{t+k}`` (teacher-forced from every ``t``, and open loop over consecutive macro-steps).
  Its own anti-collapse terms: VICReg variance and covariance on ``s`` and on ``m`` (``m`` must spread over the box
  the high-level planner searches, ``[-macro_bound, macro_bound]``), temporal smoothness on ``s``. A level-2 state head
  on detached ``s`` (where subgoals are drawn; not used by planners). Optional latent ``z`` at level 2 as at level 1.
- **Why a latent macro-action and not a subgoal embedding as the high-level action** (both appear in HWM's
  discussion): the planner of the interface searches a bounded box of a few dimensions (``macro_dim``), where CEM,
  MPPI and gradient descent work, instead of a ``level2_dim`` space where most points are no reachable state; and the
  level-2 predictor learns which macro-actions a wall stops, so a plan over macro-actions only proposes reachable
  subgoals, the predicted ``s`` after each macro-step. Those predicted embeddings are the subgoals handed to level 1.

Metrics: ``level2/loss/<term>``, ``level2/energy`` (teacher-forced error), ``level2/val/rollout_energy/h<h>`` (open
loop, h macro-steps ahead), ``level2/val/state_error``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from jepa_platform.distributed import gather_with_grad
from jepa_platform.encoders.action_predictor import ActionConditionedPredictor
from jepa_platform.encoders.latent import LatentInference
from jepa_platform.errors import ConfigError
from jepa_platform.losses.functional import covariance, variance
from jepa_platform.metrics.slowness import SlownessStats, slow_weights
from jepa_platform.objectives.ac_jepa import ACJEPA
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective


@register_objective("hierarchical_ac_jepa")
class HierarchicalACJEPA(ACJEPA):
    """Two-level action-conditioned world model (see module docstring).

    Args:
        encoder, optimizer, **kwargs: level 1, as :class:`~jepa_platform.objectives.ac_jepa.ACJEPA`.
        level2_stride: ``k``, level-1 steps per level-2 step; clips need at least ``k + 1`` frames.
        level2_dim: width of the level-2 embedding.
        macro_dim: width of the macro-action.
        macro_bound: the box ``[-b, b]^macro_dim`` the high-level planner searches.
        level2_hidden, level2_depth: the level-2 predictor's hidden width and blocks.
        level2_var_weight, level2_cov_weight: VICReg weights on the level-2 embeddings.
        macro_var_weight: VICReg variance and covariance weight on the macro-actions.
        level2_smooth_weight: temporal smoothness of the level-2 embeddings.
        level2_latent_dim, level2_latent_weight: a latent variable at level 2 and the weight of its KL.
        level2_detach: level 2 reads detached level-1 embeddings (trains on top of level 1 without changing it).
    """

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        level2_stride: int = 8,
        level2_dim: int = 16,
        macro_dim: int = 4,
        macro_bound: float = 2.0,
        level2_hidden: int = 128,
        level2_depth: int = 2,
        level2_var_weight: float = 1.0,
        level2_cov_weight: float = 0.04,
        macro_var_weight: float = 1.0,
        level2_smooth_weight: float = 1.0,
        level2_latent_dim: int = 0,
        level2_latent_weight: float = 0.03,
        level2_detach: bool = True,
        **kwargs: Any,
    ) -> None:
        if level2_stride < 1 or level2_dim < 1 or macro_dim < 1 or macro_bound <= 0 or level2_latent_dim < 0:
            raise ConfigError("objective.level2_stride, level2_dim and macro_dim >= 1, macro_bound > 0 and level2_latent_dim >= 0 are required")
        super().__init__(encoder, optimizer, **kwargs)
        if self.hparams.history != 1:
            raise ConfigError("hierarchical_ac_jepa needs objective.history=1 (level 2 reads one embedding per step)")
        d1 = self.feature_dim
        self.abstract = nn.Sequential(nn.Linear(d1, level2_hidden), nn.GELU(), nn.Linear(level2_hidden, level2_dim))
        chunk = level2_stride * self.hparams.action_dim
        self.macro_encoder = nn.Sequential(nn.Linear(chunk, level2_hidden), nn.GELU(), nn.Linear(level2_hidden, macro_dim))
        self.predictor2 = ActionConditionedPredictor(level2_dim, macro_dim + level2_latent_dim, level2_hidden, level2_depth)
        self.latent2 = LatentInference(level2_dim, level2_latent_dim, level2_hidden) if level2_latent_dim else None
        state_dim = self.hparams.state_dim
        self.state_head2 = nn.Sequential(nn.Linear(level2_dim, 128), nn.GELU(), nn.Linear(128, state_dim)) if state_dim else None
        self.val2_rollout: nn.ModuleList = nn.ModuleList()
        self.val2_state_error = MeanMetric()
        self.val2_slowness = SlownessStats(level2_dim)
        # slow features of the level-2 embeddings (measured at every validation, saved with the weights), as level 1's
        self.register_buffer("slow_projection2", torch.eye(level2_dim))
        self.register_buffer("slowness2", torch.ones(level2_dim))

    # -- the level-2 interface (the hierarchical planner uses these) ----------------------------------------------
    def abstract_embedding(self, z: Tensor) -> Tensor:
        """Level-2 embeddings ``(..., level2_dim)`` of level-1 embeddings ``(..., D)``."""
        return self.abstract(z)

    def predict_level2(self, s: Tensor, macros: Tensor) -> Tensor:
        """Open-loop level-2 predictions ``(N, H, level2_dim)`` from ``(N, level2_dim)`` and macro-actions
        ``(N, H, macro_dim)`` (a latent at level 2, if any, at its prior mean unless the macros carry it)."""
        extra = self.hparams.level2_latent_dim
        if extra and macros.shape[-1] == self.hparams.macro_dim:
            macros = torch.cat([macros, macros.new_zeros(*macros.shape[:-1], extra)], dim=-1)
        return self.predictor2.rollout(s, macros)

    def level2_planning_embedding(self, s: Tensor, slow_power: float = 0.0) -> Tensor:
        """Level-2 embeddings in the space where the high level measures the energy to the goal: projected on the
        slow features of the validation clips' level-2 embeddings, each scaled by ``slowness^(-slow_power / 2)``
        (as :meth:`ACJEPA.planning_embedding` at level 1); the embedding itself for ``slow_power=0``."""
        if not slow_power:
            return s
        return (s @ self.slow_projection2) * slow_weights(self.slowness2, slow_power)

    def decode_level2_state(self, s: Tensor) -> Tensor:
        """The level-2 state head's estimate of the state of level-2 embeddings (for drawing subgoals)."""
        if self.state_head2 is None:
            raise ConfigError("this world model has no state head (objective.state_dim=0)")
        return self.state_head2(s) * self.hparams.state_scale

    def macro_actions(self, actions: Tensor) -> Tensor:
        """Macro-actions ``(..., macro_dim)`` of ``(..., stride, A)`` action chunks, inside the box the high-level
        planner searches (``macro_bound x tanh``: every macro-action the data shows is one it can choose)."""
        return self.hparams.macro_bound * torch.tanh(self.macro_encoder(actions.flatten(-2)) / self.hparams.macro_bound)

    # -- level-2 loss -----------------------------------------------------------------------------------------------
    def _check_length(self, frames: int) -> None:
        super()._check_length(frames)
        if frames < self.hparams.level2_stride + 1:
            raise ConfigError(
                f"hierarchical_ac_jepa with level2_stride {self.hparams.level2_stride} needs clips of at least "
                f"{self.hparams.level2_stride + 1} frames, got {frames}: raise data.clip_length (or lower objective.level2_stride)"
            )

    def level2(self, z: Tensor, actions: Tensor, states: Tensor | None) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Level-2 loss terms, their weighted total and the teacher-forced error of each clip ``(B,)``, from level-1
        embeddings ``(B, L, D)`` and actions ``(B, L-1, A)``."""
        hp = self.hparams
        k = hp.level2_stride
        z = z.detach() if hp.level2_detach else z
        s = self.abstract(z)  # (B, L, d2)
        chunks = actions.unfold(1, k, 1).movedim(-1, -2)  # (B, L-k, k, A): the k actions after every t
        m = self.macro_actions(chunks)
        inputs, reached = s[:, :-k], s[:, k:]
        kl = None
        if self.latent2 is not None:
            latent, kl = self.latent2(inputs, reached)
            m_in = torch.cat([m, latent], dim=-1)
        else:
            m_in = m
        predicted = self.predictor2(inputs, m_in)
        terms = {"prediction": F.mse_loss(predicted, reached)}
        starts = torch.arange(0, s.shape[1] - k, k, device=s.device)  # consecutive macro-steps from t = 0
        terms["rollout"] = F.mse_loss(self.predictor2.rollout(s[:, 0], m_in[:, starts]), s[:, starts + k])
        flat_s = gather_with_grad(s.flatten(0, 1))
        terms["variance"], terms["covariance"] = variance(flat_s), covariance(flat_s)
        flat_m = gather_with_grad(m.flatten(0, 1))
        terms["macro_variance"], terms["macro_covariance"] = variance(flat_m), covariance(flat_m)
        terms["smoothness"] = (s[:, 1:] - s[:, :-1]).pow(2).mean()
        total = (
            terms["prediction"]
            + terms["rollout"]
            + hp.level2_var_weight * terms["variance"]
            + hp.level2_cov_weight * terms["covariance"]
            + hp.macro_var_weight * (terms["macro_variance"] + hp.level2_cov_weight * terms["macro_covariance"])
            + hp.level2_smooth_weight * terms["smoothness"]
        )
        if kl is not None:
            terms["latent_kl"] = kl.mean()
            total = total + hp.level2_latent_weight * terms["latent_kl"]
        if self.state_head2 is not None and states is not None:
            terms["state_head"] = F.mse_loss(self.state_head2(s.detach()), states / hp.state_scale)
            total = total + terms["state_head"]
        per_clip = (predicted.detach() - reached.detach()).pow(2).flatten(1).mean(dim=1)
        return terms, total, per_clip

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        frames, actions = self._clip(batch)
        out, per_clip, z = self.losses(frames, actions, batch.get("states"))
        terms2, total2, per_clip2 = self.level2(z, actions, batch.get("states"))
        bs = frames.shape[0]
        self.log_loss(out, per_clip.mean(), bs)
        for name, value in terms2.items():
            self.log(f"level2/loss/{name}", value, batch_size=bs, sync_dist=True)
        self.log("level2/energy", per_clip2.mean(), batch_size=bs, sync_dist=True)
        flat = z.detach().flatten(0, 1)
        self.expose({"features": z[:, 0]}, {"repr": flat, "emb": flat}, energies={"prediction": per_clip, "level2": per_clip2})
        return out.total + total2

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().validation_step(batch, batch_idx, dataloader_idx)
        if dataloader_idx != 0:
            return
        frames, actions = self._clip(batch)
        k = self.hparams.level2_stride
        s = self.abstract(self.encode(frames))
        self.val2_slowness.update(s)
        starts = torch.arange(0, s.shape[1] - k, k, device=s.device)
        m = self.macro_actions(actions.unfold(1, k, 1).movedim(-1, -2)[:, starts])
        errors = (self.predict_level2(s[:, 0], m) - s[:, starts + k]).pow(2).mean(dim=(0, 2))
        while len(self.val2_rollout) < len(errors):
            self.val2_rollout.append(MeanMetric().to(self.device))
        for h, e in enumerate(errors):
            self.val2_rollout[h].update(e, frames.shape[0])
        if self.state_head2 is not None and batch.get("states") is not None:
            self.val2_state_error.update((self.decode_level2_state(s) - batch["states"]).norm(dim=-1).mean(), frames.shape[0])

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking and self.val2_slowness.update_called:
            projection, slowness = self.val2_slowness.compute()
            self.slow_projection2.copy_(projection)
            self.slowness2.copy_(slowness)
        self.val2_slowness.reset()
        if not self.trainer.sanity_checking:
            for h, metric in enumerate(self.val2_rollout, start=1):
                if metric.update_called:
                    self.log(f"level2/val/rollout_energy/h{h}", metric.compute())
            if self.val2_state_error.update_called:
                self.log("level2/val/state_error", self.val2_state_error.compute())
        for metric in [*self.val2_rollout, self.val2_state_error]:
            metric.reset()
