"""One level of an action-conditioned world model, the unit that world models are built from and planners read.

A world model (:class:`~jepa_platform.objectives.ACJEPA`) is an encoder plus a list of levels. Level 1 predicts the
frame embeddings one step ahead from the action; each level above reads the embeddings of the level below through
its own ``embed`` (a smaller, more abstract embedding) and predicts ``stride`` steps of the level below at once from
a macro-action, the encoding of the ``stride`` actions in between (HWM, hierarchical planning with latent world
models). Every level has the same parts: a predictor (:class:`ActionConditionedPredictor`, whose ``rollout`` is the
one open-loop rollout of training, validation, planning and surprise), an optional latent variable, an optional
state head, and the slow features of its embeddings measured at validation (the space planners may measure the
energy to a goal in).

What planners read (:class:`PlannableModel`): ``model.encode(frames)`` and ``model.levels``; of a level, ``embed``,
``rollout``, ``planning_embedding``, ``decode_state``, ``action_dim``, ``action_bound`` (``None``: the
environment's action space), ``stride`` and ``latent_dim``. A model without a level above cannot plan
hierarchically, which ``len(model.levels)`` says instead of ``hasattr`` guesses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_platform.distributed import gather_with_grad
from jepa_platform.encoders.action_predictor import ActionConditionedPredictor
from jepa_platform.encoders.latent import LatentInference
from jepa_platform.errors import ConfigError
from jepa_platform.losses.regularisers import Regulariser
from jepa_platform.metrics.slowness import slow_weights


class LevelLike(Protocol):
    """What a planner reads of one level (:class:`Level`, or a test's oracle)."""

    action_dim: int
    action_bound: float | None
    stride: int
    latent_dim: int

    def embed(self, z: Tensor) -> Tensor: ...
    def rollout(self, s0: Tensor, actions: Tensor) -> Tensor: ...
    def planning_embedding(self, s: Tensor, slow_power: float = 0.0) -> Tensor: ...
    def decode_state(self, s: Tensor) -> Tensor: ...


class PlannableModel(Protocol):
    """What planners read of a world model: an encoder of frames and its levels (level 1 first)."""

    levels: Sequence[LevelLike]

    def encode(self, frames: Tensor) -> Tensor: ...


def state_head(dim: int, state_dim: int) -> nn.Module | None:
    """A small MLP regressing the true state from (detached) embeddings; ``None`` for ``state_dim`` 0."""
    return nn.Sequential(nn.Linear(dim, 128), nn.GELU(), nn.Linear(128, state_dim)) if state_dim else None


class Level(nn.Module):
    """One level (module docstring).

    Args:
        predictor: predicts this level's next embedding from the current one and an action (its ``action_dim``
            includes ``latent_dim``).
        action_dim: width of this level's actions as a planner searches them (without the latent).
        stride: steps of the level below per step of this level (1 at level 1).
        embed: embeddings of the level below to this level's (``None``: level 1, the frame embeddings themselves).
        action_encoder: ``(..., stride * A_below)`` flattened action chunks to this level's actions (``None``: the
            chunk itself, level 1).
        action_bound: this level's actions lie in ``[-b, b]`` (``b x tanh`` of the encoder's output), the box a
            planner searches; ``None``: the environment's bounds (level 1).
        latent: the latent variable's inference network (``None``: no latent).
        state_head: regresses ``states / state_scale`` from detached embeddings (``None``: no head).
        state_scale: the extent of the states (the environment's).
    """

    def __init__(
        self,
        predictor: ActionConditionedPredictor,
        action_dim: int,
        stride: int = 1,
        embed: nn.Module | None = None,
        action_encoder: nn.Module | None = None,
        action_bound: float | None = None,
        latent: LatentInference | None = None,
        state_head: nn.Module | None = None,
        state_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.predictor, self.embedder, self.action_encoder = predictor, embed, action_encoder
        self.latent, self.state_head = latent, state_head
        self.dim, self.action_dim, self.stride = predictor.dim, action_dim, stride
        self.action_bound, self.state_scale = action_bound, state_scale
        self.latent_dim = latent.latent_dim if latent is not None else 0
        # slow features of the validation embeddings (measured at every validation, saved with the weights)
        self.register_buffer("slow_projection", torch.eye(self.dim))
        self.register_buffer("slowness", torch.ones(self.dim))

    #: FSDP shards each part (predictor, embed, encoders, heads) as its own unit: training calls them one by one
    fsdp_shard_children = True

    def embed(self, z: Tensor) -> Tensor:
        """This level's embeddings ``(..., dim)`` of the level below's ``(..., D_below)``."""
        return z if self.embedder is None else self.embedder(z)

    def encode_actions(self, chunks: Tensor) -> Tensor:
        """This level's actions ``(..., action_dim)`` of ``(..., stride, A_below)`` chunks of the level below's."""
        flat = chunks.flatten(-2)
        if self.action_encoder is None:
            return flat
        encoded = self.action_encoder(flat)
        return encoded if self.action_bound is None else self.action_bound * torch.tanh(encoded / self.action_bound)

    def with_latent(self, actions: Tensor) -> Tensor:
        """Actions padded with the latent's prior mean (zeros) unless they already carry latent values."""
        if self.latent_dim and actions.shape[-1] == self.action_dim:
            return torch.cat([actions, actions.new_zeros(*actions.shape[:-1], self.latent_dim)], dim=-1)
        return actions

    def rollout(self, s0: Tensor, actions: Tensor, past: Tensor | None = None) -> Tensor:
        """Open-loop predictions ``(N, H, dim)`` from ``(N, dim)`` and actions ``(N, H, action_dim[+latent_dim])``
        (``past``: the ``history - 1`` embeddings before ``s0``, for predictors that see more than one)."""
        return self.predictor.rollout(s0, self.with_latent(actions), past)

    def planning_embedding(self, s: Tensor, slow_power: float = 0.0) -> Tensor:
        """Embeddings in the space where planners measure the energy to the goal: projected on the slow features,
        each scaled by ``slowness^(-slow_power / 2)`` (:mod:`jepa_platform.metrics.slowness`); ``s`` itself for 0."""
        if not slow_power:
            return s
        return (s @ self.slow_projection) * slow_weights(self.slowness, slow_power)

    def decode_state(self, s: Tensor) -> Tensor:
        """The state head's estimate of the state (in data units) of embeddings ``(..., dim)``."""
        if self.state_head is None:
            raise ConfigError("this world model has no state head (objective.state_dim=0): guardrails need one")
        return self.state_head(s) * self.state_scale

    def state_loss(self, s: Tensor, states: Tensor | None) -> Tensor | None:
        """The state head's regression loss on detached embeddings (``None`` without a head or states)."""
        if self.state_head is None or states is None:
            return None
        return F.mse_loss(self.state_head(s.detach()), states / self.state_scale)


class UpperLevel(Level):
    """A level above another: ``s = embed(z_below)``, macro-actions encoded from ``stride`` actions of the level below,
    and its own training terms (:meth:`losses`). Built by the objective from the level below's widths.

    Args:
        below_dim, below_action_dim: widths of the level below's embeddings and actions.
        state_dim, state_scale: the state head's output and the states' extent (0: no head).
        stride: steps of the level below per step of this level; clips need ``stride + 1`` frames.
        dim: width of this level's embedding.
        macro_dim: width of the macro-action; macro_bound: the box ``[-b, b]^macro_dim`` a planner searches.
        hidden, depth: the predictor's hidden width and blocks (also the widths of ``embed`` and the action encoder).
        latent_dim, latent_weight: a latent variable at this level and the weight of its KL (nats per step).
        regulariser: anti-collapse terms on this level's embeddings.
        macro_regulariser: anti-collapse terms on the macro-actions (they must spread over the box a planner searches).
        smooth_weight: temporal smoothness of this level's embeddings (distance follows distance travelled).
        detach: train on detached embeddings of the level below (on top of it, without changing it).
    """

    def __init__(
        self,
        below_dim: int,
        below_action_dim: int,
        state_dim: int,
        state_scale: float,
        stride: int,
        dim: int,
        macro_dim: int,
        macro_bound: float,
        hidden: int,
        depth: int,
        latent_dim: int,
        latent_weight: float,
        regulariser: Regulariser | None,
        macro_regulariser: Regulariser | None,
        smooth_weight: float,
        detach: bool,
    ) -> None:
        if stride < 1 or dim < 1 or macro_dim < 1 or macro_bound <= 0 or latent_dim < 0:
            raise ConfigError("a level above needs stride, dim and macro_dim >= 1, macro_bound > 0 and latent_dim >= 0")
        # built in this order so that a seed gives the weights it gave before levels were one type
        embed = nn.Sequential(nn.Linear(below_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        action_encoder = nn.Sequential(nn.Linear(stride * below_action_dim, hidden), nn.GELU(), nn.Linear(hidden, macro_dim))
        predictor = ActionConditionedPredictor(dim, macro_dim + latent_dim, hidden, depth)
        latent = LatentInference(dim, latent_dim, hidden) if latent_dim else None
        super().__init__(predictor, macro_dim, stride, embed, action_encoder, macro_bound, latent, state_head(dim, state_dim), state_scale)
        self.latent_weight, self.smooth_weight, self.detach = latent_weight, smooth_weight, detach
        self.regulariser, self.macro_regulariser = regulariser, macro_regulariser

    def chunks(self, actions: Tensor) -> Tensor:
        """The ``stride`` actions of the level below after every step ``t``: ``(B, L-1, A)`` -> ``(B, L-stride, stride, A)``."""
        return actions.unfold(1, self.stride, 1).movedim(-1, -2)

    def macro_starts(self, s: Tensor) -> Tensor:
        """The steps ``0, stride, 2 stride, ...`` where consecutive macro-steps of clips ``(B, L, dim)`` start."""
        return torch.arange(0, s.shape[1] - self.stride, self.stride, device=s.device)

    def losses(self, z: Tensor, actions: Tensor, states: Tensor | None, step: int) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """This level's terms, their weighted total, the teacher-forced error of each clip ``(B,)`` and its embeddings
        ``(B, L, dim)``, from the level below's embeddings ``(B, L, D)`` and actions ``(B, L-1, A)``."""
        k = self.stride
        s = self.embed(z.detach() if self.detach else z)
        macros = self.encode_actions(self.chunks(actions))  # (B, L-k, macro_dim): after every t
        inputs, reached = s[:, :-k], s[:, k:]
        terms: dict[str, Tensor] = {}
        conditioned = macros
        if self.latent is not None:
            latent, kl = self.latent(inputs, reached)
            conditioned = torch.cat([macros, latent], dim=-1)
            terms["latent_kl"] = kl.mean()
        predicted = self.predictor(inputs, conditioned)
        terms["prediction"] = F.mse_loss(predicted, reached)
        starts = self.macro_starts(s)
        terms["rollout"] = F.mse_loss(self.rollout(s[:, 0], conditioned[:, starts]), s[:, starts + k])
        total = terms["prediction"] + terms["rollout"] + self.latent_weight * terms.get("latent_kl", 0.0)
        for prefix, regulariser, x in (("", self.regulariser, s), ("macro_", self.macro_regulariser, macros)):
            if regulariser is not None and regulariser.active:
                regs, weighted = regulariser(gather_with_grad(x.flatten(0, 1)), step)
                terms.update({prefix + name: value for name, value in regs.items()})
                total = total + weighted
        if self.smooth_weight:
            terms["smoothness"] = (s[:, 1:] - s[:, :-1]).pow(2).mean()
            total = total + self.smooth_weight * terms["smoothness"]
        state_loss = self.state_loss(s, states)
        if state_loss is not None:
            terms["state_head"] = state_loss
            total = total + state_loss
        per_clip = (predicted.detach() - reached.detach()).pow(2).flatten(1).mean(dim=1)
        return terms, total, per_clip, s

    def validation_errors(self, s: Tensor, actions: Tensor) -> Tensor:
        """Open-loop error ``(H,)`` over consecutive macro-steps from ``t = 0`` of embeddings ``(B, L, dim)``."""
        starts = self.macro_starts(s)
        macros = self.encode_actions(self.chunks(actions)[:, starts])
        return (self.rollout(s[:, 0], macros) - s[:, starts + self.stride]).pow(2).mean(dim=(0, 2))
