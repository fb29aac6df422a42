"""The planning interface: ``Planner.plan(world_model, obs, goal_obs, cost, horizon) -> actions``.

A planner sees observations (images) and the goal image only, through a :class:`WorldModel`: it encodes them,
rolls candidate action sequences out in embedding space, scores them with a
:class:`~jepa_platform.world_model.costs.PlanningCost`, and never touches the simulator's state or success signal.
Planners are batched over candidates on the world model's device and keep a warm start between MPC replans
(:meth:`Planner.shift`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from jepa_platform.errors import ConfigError
from jepa_platform.world_model.costs import PlanningCost


class WorldModel:
    """What planners talk to: level 1 of a world model (:class:`~jepa_platform.world_model.level.PlannableModel`:
    ``encode`` and ``levels``), whose ``rollout`` predicts and whose state head guardrails read; counts world-model
    evaluations (one per candidate per predicted step) and caches the goal's embedding.

    Args:
        model: the trained world-model objective (e.g. ``ac_jepa``), put in eval mode.
        transform: uint8 ``(T, C, H, W)`` frames to the encoder's input (the run's evaluation transform).
        action_low, action_high: the action bounds (the environment's action space).
        slow_power: weight of slow features in the energy (``planning_embedding`` of the model; 0: plain distance).
        latent_samples: for a model with a latent variable (``latent_dim``), score each candidate under this many
            draws of it from the prior, the same draws for every candidate (0: the prior's mean only).
        latent_risk: how the costs over draws combine: ``mean`` (expected cost) or ``max`` (the worst draw).
    """

    def __init__(
        self,
        model: nn.Module,
        transform: Callable[[Tensor], Tensor],
        action_low: np.ndarray,
        action_high: np.ndarray,
        slow_power: float = 0.0,
        latent_samples: int = 0,
        latent_risk: str = "mean",
        seed: int = 0,
    ) -> None:
        if latent_samples < 0 or latent_risk not in ("mean", "max"):
            raise ConfigError(f"latent samples must be >= 0 and the risk mean or max, got {latent_samples} and {latent_risk!r}")
        self.model = model.eval()
        self.transform = transform
        self.device = next(model.parameters()).device
        self.low = torch.as_tensor(action_low, dtype=torch.float32, device=self.device)
        self.high = torch.as_tensor(action_high, dtype=torch.float32, device=self.device)
        self.action_dim = int(self.low.numel())
        self.slow_power = slow_power
        self.level = model.levels[0]
        self.latent_dim = int(self.level.latent_dim)
        self.latent_samples = latent_samples if self.latent_dim else 0
        self.latent_risk = latent_risk
        self._latent_rng = torch.Generator(device=self.device).manual_seed(seed)
        self.evaluations = 0
        self._goal_cache: tuple[str, Tensor] | None = None

    @torch.no_grad()
    def encode(self, obs: np.ndarray) -> Tensor:
        """The embedding ``(D,)`` of one ``(H, W, C)`` uint8 observation."""
        frames = torch.from_numpy(np.ascontiguousarray(obs)).permute(2, 0, 1)[None]
        return self.model.encode(self.transform(frames).to(self.device))[0]

    def encode_goal(self, goal_obs: np.ndarray) -> Tensor:
        """The goal's embedding, computed once per goal image."""
        key = hashlib.blake2b(np.ascontiguousarray(goal_obs).tobytes(), digest_size=16).hexdigest()
        if self._goal_cache is None or self._goal_cache[0] != key:
            self._goal_cache = (key, self.encode(goal_obs))
        return self._goal_cache[1]

    def rollout(self, z0: Tensor, actions: Tensor) -> Tensor:
        """Predicted embeddings ``(N, H, D)`` of ``(N, H, A)`` action sequences from ``z0`` ``(D,)``."""
        self.evaluations += actions.shape[0] * actions.shape[1]
        return self.level.rollout(z0.expand(actions.shape[0], -1), actions)

    def rollout_samples(self, z0: Tensor, actions: Tensor) -> Tensor:
        """Predictions ``(S, N, H, D)`` of ``(N, H, A)`` action sequences under ``S = latent_samples`` draws of the latent
        variable from its prior (each draw shared by every candidate: their costs differ by the actions only)."""
        n, h, _ = actions.shape
        draws = torch.randn((self.latent_samples, 1, h, self.latent_dim), generator=self._latent_rng, device=self.device)
        full = torch.cat([actions.expand(self.latent_samples, -1, -1, -1), draws.expand(-1, n, -1, -1)], dim=-1)
        self.evaluations += self.latent_samples * n * h
        return self.level.rollout(z0.expand(self.latent_samples * n, -1), full.flatten(0, 1)).unflatten(0, (self.latent_samples, n))

    def planning(self, z: Tensor) -> Tensor:
        """Embeddings in the space where the energy to the goal is measured (the level's ``planning_embedding``:
        slow features weighted by ``slow_power``; the embedding itself for 0)."""
        return self.level.planning_embedding(z, self.slow_power)

    def planning_goal(self, goal: Tensor) -> Tensor:
        """The goal in the space where the energy is measured (a view planning toward a subgoal given in that space
        already returns it unchanged)."""
        return self.planning(goal)

    def states(self, z: Tensor) -> Tensor:
        """The state head's estimate of the states of embeddings ``(..., D)`` (for guardrails)."""
        return self.level.decode_state(z)

    def clamp(self, actions: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(actions, self.high), self.low)


@dataclass
class Scored:
    """Candidates ``(N, H, A)`` with their costs ``(N,)`` (``inf`` where a guardrail is violated)."""

    actions: Tensor
    costs: Tensor
    violating: Tensor


class Planner:
    """Base of every planner: warm start, scoring with guardrails, and the safe choice (see module docstring).

    Args:
        seed: seed of the planner's random numbers (a fixed seed makes an evaluation repeatable).
    """

    #: whether the planner searches with the world model (baselines like ``random`` do not)
    uses_model: bool = True

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.warm: Tensor | None = None
        self.fallbacks = 0

    def reset(self) -> None:
        """Forget the warm start (a new episode)."""
        self.warm, self.generator = None, None

    def shift(self, executed: int) -> None:
        """Drop the ``executed`` first steps of the warm start (MPC executed them); the tail is padded with zeros."""
        if self.warm is not None:
            self.warm = torch.cat([self.warm[executed:], torch.zeros_like(self.warm[:executed])])

    def rng(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.generator

    def initial_mean(self, wm: WorldModel, horizon: int) -> Tensor:
        """The warm start if it fits the horizon, else zeros ``(H, A)``."""
        if self.warm is not None and self.warm.shape[0] == horizon:
            return self.warm.clone()
        return torch.zeros(horizon, wm.action_dim, device=wm.device)

    @torch.no_grad()
    def score(self, wm: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, actions: Tensor) -> Scored:
        """Cost of each candidate; candidates whose predicted states break a guardrail get ``inf``.

        A predicted state breaks it when it lies deeper in a forbidden box (inflated by the margin) than the current
        state's estimate: outside the margin that means entering it; inside the margin (an estimate that erred
        inwards) only moves that lead out, or stay, are allowed."""
        goal = wm.planning_goal(goal)
        if getattr(wm, "latent_samples", 0):  # a cost per draw of the latent, then their mean or the worst
            z = wm.rollout_samples(z0, actions)  # (S, N, H, D)
            per_draw = torch.stack([cost(wm.planning(zs), goal, actions) for zs in z])
            costs = per_draw.mean(dim=0) if wm.latent_risk == "mean" else per_draw.amax(dim=0)
        else:
            z = wm.rollout(z0, actions)
            costs = cost(wm.planning(z), goal, actions)
        violating = torch.zeros_like(costs, dtype=torch.bool)
        if cost.guardrail is not None and len(cost.guardrail.boxes):
            allowed = cost.guardrail.depth(wm.states(z0)).clamp_min(0) + 1e-6
            depth = cost.guardrail.depth(wm.states(z))  # (N, H), or (S, N, H): a plan is safe only under every draw
            violating = (depth > allowed).any(dim=-1)
            violating = violating.any(dim=0) if violating.dim() == 2 else violating
            costs = torch.where(violating, torch.full_like(costs, float("inf")), costs)
        return Scored(actions, costs, violating)

    def choose(self, wm: WorldModel, best: Scored, horizon: int) -> Tensor:
        """The best safe candidate, or the stay plan (zeros) when none is safe."""
        i = int(torch.argmin(best.costs))
        if not torch.isfinite(best.costs[i]):
            self.fallbacks += 1
            self.warm = None
            return torch.zeros(horizon, wm.action_dim, device=wm.device)
        plan = best.actions[i]
        self.warm = plan.clone()
        return plan

    def plan(self, world_model: WorldModel, obs: np.ndarray, goal_obs: np.ndarray, cost: PlanningCost, horizon: int) -> Tensor:
        """Actions ``(horizon, A)`` that should bring ``obs`` to ``goal_obs``."""
        z0, goal = world_model.encode(obs), world_model.encode_goal(goal_obs)
        return self.search(world_model, z0, goal, cost, horizon)

    def search(self, wm: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, horizon: int) -> Tensor:
        raise NotImplementedError


def merge(a: Scored, b: Scored) -> Scored:
    return Scored(torch.cat([a.actions, b.actions]), torch.cat([a.costs, b.costs]), torch.cat([a.violating, b.violating]))


def best_of(scored: Scored, k: int) -> Scored:
    """The ``k`` lowest-cost candidates."""
    idx = torch.topk(scored.costs, min(k, scored.costs.numel()), largest=False).indices
    return Scored(scored.actions[idx], scored.costs[idx], scored.violating[idx])
