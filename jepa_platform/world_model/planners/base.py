"""The planning interface: ``Planner.plan(world_model, z0, goal, cost, horizon) -> actions``, batched over episodes.

A planner sees embeddings of observations and of the goal image only, through a :class:`WorldModel`: it rolls
candidate action sequences out in embedding space, scores them with a
:class:`~jepa_platform.world_model.costs.PlanningCost`, and never touches the simulator's state or success signal.

Every tensor has the episodes first: ``z0`` and ``goal`` are ``(E, D)``, candidates ``(E, N, H, A)``, costs
``(E, N)``, a plan ``(E, H, A)``. One iteration of a planner scores the candidates of every episode in one call of the
world model, and nothing inside a planner's iterations reads a tensor on the host (elites, weights, fallbacks and
guardrail checks are masks and ``torch.where`` on the device), so on a GPU the iterations queue without waiting.

Random draws (noise, restarts) have no episode dimension: one draw is shared by every episode, so an episode's plan
does not depend on which other episodes are in its batch (``jepa plan --batch 1`` gives the table of ``--batch 50``).

A planner keeps a warm start per episode between MPC replans (:meth:`Planner.shift`); when episodes end, the loop
keeps the state of the others (:meth:`Planner.select`, over the attributes named in ``episode_state``).
"""

from __future__ import annotations

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
    evaluations (one per candidate per predicted step, summed over episodes).

    Args:
        model: the trained world-model objective (e.g. ``ac_jepa``), put in eval mode.
        transform: uint8 ``(T, C, H, W)`` frames to the encoder's input (the run's evaluation transform).
        action_low, action_high: the action bounds (the environment's action space).
        slow_power: weight of slow features in the energy (``planning_embedding`` of the model; 0: plain distance).
        latent_samples: for a model with a latent variable (``latent_dim``), score each candidate under this many
            draws of it from the prior, the same draws for every candidate (0: the prior's mean only).
        latent_risk: how the costs over draws combine: ``mean`` (expected cost) or ``max`` (the worst draw).
        seed: seed of the latent draws (:meth:`reset_draws` restarts them).
        compile: run the level's rollout through ``torch.compile`` (on CUDA with CUDA graphs,
            ``mode="reduce-overhead"``), its rows padded to a power of two so that a shrinking batch compiles a few
            shapes only. Pays off where launches dominate (a GPU); on a CPU the compilations cost more than they save.
    """

    #: rows per call of the level's rollout on a CPU: a larger call spills its activations out of the L2 cache and
    #: runs slower per row (measured with ``experiment=two_rooms``: about 20% faster CEM and MPPI replans of 50
    #: episodes than one call over all 15,000 rows); on an accelerator one call takes every row
    CPU_ROWS = 2048

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
        compile: bool = False,
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
        self.seed = seed
        self.reset_draws()
        self.evaluations = 0
        self.compile = compile
        self._compiled: Callable[[Tensor, Tensor], Tensor] | None = None
        self.max_rows = self.CPU_ROWS if self.device.type == "cpu" else None

    def reset_draws(self) -> None:
        """Restart the latent draws from the seed (the MPC loop does at every batch of episodes, so that an episode
        sees the same draws whichever batch it is in)."""
        self._latent_rng = torch.Generator(device=self.device).manual_seed(self.seed)

    @torch.no_grad()
    def encode(self, obs: np.ndarray) -> Tensor:
        """The embeddings ``(E, D)`` of ``(E, H, W, C)`` uint8 observations, in one call of the encoder."""
        frames = torch.from_numpy(np.ascontiguousarray(obs)).permute(0, 3, 1, 2)
        return self.model.encode(self.transform(frames).to(self.device, non_blocking=True))

    def rollout(self, z0: Tensor, actions: Tensor) -> Tensor:
        """Predicted embeddings ``(E, N, H, D)`` of action sequences ``(E, N, H, A)`` from ``z0`` ``(E, D)``: one call of
        the level's rollout over all ``E x N`` sequences."""
        e, n, h, _ = actions.shape
        self.evaluations += e * n * h
        starts = z0[:, None].expand(-1, n, -1).flatten(0, 1)
        return self.rollout_rows(starts, actions.flatten(0, 1)).unflatten(0, (e, n))

    def rollout_rows(self, starts: Tensor, actions: Tensor) -> Tensor:
        """The level's rollout of ``(R, D)`` starts under ``(R, H, A)`` actions: one call, in blocks of
        :attr:`CPU_ROWS` rows on a CPU, or compiled (``compile``)."""
        if self.compile:
            return self._compiled_rollout(starts, actions)
        if self.max_rows is None or starts.shape[0] <= self.max_rows:
            return self.level.rollout(starts, actions)
        blocks = zip(starts.split(self.max_rows), actions.split(self.max_rows), strict=True)
        return torch.cat([self.level.rollout(s, a) for s, a in blocks])

    def _compiled_rollout(self, starts: Tensor, actions: Tensor) -> Tensor:
        if self._compiled is None:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self._compiled = torch.compile(self.level.rollout, mode=mode, dynamic=False)
        rows = starts.shape[0]
        padded = max(256, 1 << (rows - 1).bit_length())
        if padded > rows:  # repeats of the last row, dropped after
            starts = torch.cat([starts, starts[-1:].expand(padded - rows, -1)])
            actions = torch.cat([actions, actions[-1:].expand(padded - rows, -1, -1)])
        out = self._compiled(starts, actions)[:rows]
        return out.clone() if self.device.type == "cuda" else out  # CUDA graphs reuse their output buffers

    def rollout_samples(self, z0: Tensor, actions: Tensor) -> Tensor:
        """Predictions ``(S, E, N, H, D)`` of ``(E, N, H, A)`` action sequences under ``S = latent_samples`` draws of the
        latent variable from its prior (each draw shared by every candidate of every episode: costs differ by the
        actions only)."""
        e, n, h, _ = actions.shape
        s = self.latent_samples
        draws = torch.randn((s, 1, 1, h, self.latent_dim), generator=self._latent_rng, device=self.device)
        full = torch.cat([actions.expand(s, -1, -1, -1, -1), draws.expand(-1, e, n, -1, -1)], dim=-1)
        self.evaluations += s * e * n * h
        starts = z0[None, :, None].expand(s, -1, n, -1).flatten(0, 2)
        return self.rollout_rows(starts, full.flatten(0, 2)).unflatten(0, (s, e, n))

    def episodes_per_call(self, candidates: int) -> int:
        """Episodes whose candidates a planner scores in one block (all of them on an accelerator; on a CPU, as many
        as fill :attr:`CPU_ROWS` rows, so that rollout, energy and guardrail of a block stay in the cache)."""
        return 1 << 30 if self.max_rows is None else max(1, self.max_rows // max(candidates, 1))

    def episodes(self, index: slice) -> WorldModel:
        """The world model as the episodes ``index`` of the batch see it (a view holding per-episode state slices it)."""
        return self

    def planning(self, z: Tensor) -> Tensor:
        """Embeddings in the space where the energy to the goal is measured (the level's ``planning_embedding``:
        slow features weighted by ``slow_power``; the embedding itself for 0)."""
        return self.level.planning_embedding(z, self.slow_power)

    def planning_goal(self, goal: Tensor) -> Tensor:
        """The goals ``(E, D)`` in the space where the energy is measured (a view planning toward subgoals given in
        that space already returns them unchanged)."""
        return self.planning(goal)

    def states(self, z: Tensor) -> Tensor:
        """The state head's estimate of the states of embeddings ``(..., D)`` (for guardrails)."""
        return self.level.decode_state(z)

    def clamp(self, actions: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(actions, self.high), self.low)


@dataclass
class Scored:
    """Candidates ``(E, N, H, A)`` with their costs ``(E, N)`` (``inf`` where a guardrail is violated)."""

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
    #: attributes holding a tensor per episode (episodes first), kept for the episodes still running by :meth:`select`
    episode_state: tuple[str, ...] = ("warm", "fallen_back")

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.warm: Tensor | None = None
        #: ``(E,)`` bool: the last plan of each episode was the stay plan (no safe candidate)
        self.fallen_back: Tensor | None = None

    def reset(self) -> None:
        """Forget the warm starts and restart the random draws (a new batch of episodes)."""
        for name in self.episode_state:
            setattr(self, name, None)
        self.generator = None

    def shift(self, executed: int) -> None:
        """Drop the ``executed`` first steps of the warm starts (MPC executed them); the tail is padded with zeros."""
        if self.warm is not None:
            self.warm = shifted(self.warm, executed, dim=1)

    def select(self, keep: Tensor) -> None:
        """Keep the per-episode state of episodes ``keep`` (indices into the current batch), in that order."""
        for name in self.episode_state:
            value = getattr(self, name)
            if isinstance(value, Tensor):
                setattr(self, name, value[keep.to(value.device)])

    def rng(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.generator

    def initial_mean(self, wm: WorldModel, episodes: int, horizon: int) -> Tensor:
        """The warm starts ``(E, H, A)`` if they fit, else zeros."""
        if self.warm is not None and self.warm.shape[:2] == (episodes, horizon):
            return self.warm.clone()
        return torch.zeros(episodes, horizon, wm.action_dim, device=wm.device)

    @torch.no_grad()
    def score(self, wm: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, actions: Tensor) -> Scored:
        """Cost ``(E, N)`` of candidates ``(E, N, H, A)``; candidates whose predicted states break a guardrail get ``inf``.

        A predicted state breaks it when it lies deeper in a forbidden box (inflated by the margin) than the current
        state's estimate: outside the margin that means entering it; inside the margin (an estimate that erred
        inwards) only moves that lead out, or stay, are allowed. Scored in blocks of episodes on a CPU
        (:meth:`WorldModel.episodes_per_call`)."""
        episodes, step = actions.shape[0], wm.episodes_per_call(actions.shape[1])
        if step >= episodes:
            return self._score(wm, z0, goal, cost, actions)
        blocks = [slice(i, i + step) for i in range(0, episodes, step)]
        parts = [self._score(wm.episodes(b), z0[b], goal[b], cost, actions[b]) for b in blocks]
        return Scored(actions, torch.cat([p.costs for p in parts]), torch.cat([p.violating for p in parts]))

    def _score(self, wm: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, actions: Tensor) -> Scored:
        goal = wm.planning_goal(goal)
        if getattr(wm, "latent_samples", 0):  # a cost per draw of the latent, then their mean or the worst
            z = wm.rollout_samples(z0, actions)  # (S, E, N, H, D)
            per_draw = cost(wm.planning(z), goal, actions)  # (S, E, N)
            costs = per_draw.mean(dim=0) if wm.latent_risk == "mean" else per_draw.amax(dim=0)
        else:
            z = wm.rollout(z0, actions)
            costs = cost(wm.planning(z), goal, actions)
        violating = torch.zeros_like(costs, dtype=torch.bool)
        if cost.guardrail is not None and len(cost.guardrail.boxes):
            allowed = cost.guardrail.depth(wm.states(z0)).clamp_min(0) + 1e-6  # (E,)
            depth = cost.guardrail.depth(wm.states(z))  # (E, N, H), or (S, E, N, H): a plan is safe only under every draw
            violating = (depth > allowed[:, None, None]).any(dim=-1)
            violating = violating.any(dim=0) if violating.dim() == 3 else violating
            costs = torch.where(violating, torch.full_like(costs, float("inf")), costs)
        return Scored(actions, costs, violating)

    def choose(self, wm: WorldModel, best: Scored, horizon: int) -> Tensor:
        """Each episode's best safe candidate ``(E, H, A)``, or the stay plan (zeros) where none is safe (flagged in
        :attr:`fallen_back`; the warm start is then zeros too)."""
        index = best.costs.argmin(dim=1)  # (E,)
        lowest = best.costs.gather(1, index[:, None])[:, 0]
        plans = best.actions[torch.arange(index.numel(), device=index.device), index]
        safe = torch.isfinite(lowest)
        plans = torch.where(safe[:, None, None], plans, torch.zeros_like(plans))
        self.fallen_back = ~safe
        self.warm = plans.clone()
        return plans

    def plan(self, world_model: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, horizon: int) -> Tensor:
        """Actions ``(E, horizon, A)`` that should bring embeddings ``z0`` ``(E, D)`` to the goals' ``(E, D)`` (MPC calls
        this; a planner with more than one level overrides it)."""
        return self.search(world_model, z0, goal, cost, horizon)

    def search(self, wm: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, horizon: int) -> Tensor:
        raise NotImplementedError


def shifted(x: Tensor, executed: int, dim: int) -> Tensor:
    """``x`` without its first ``executed`` entries along ``dim``, zeros appended (a warm start after MPC executed them)."""
    executed = min(executed, x.shape[dim])
    return torch.cat([x.narrow(dim, executed, x.shape[dim] - executed), torch.zeros_like(x.narrow(dim, 0, executed))], dim=dim)


def merge(a: Scored, b: Scored) -> Scored:
    """Candidates of both, per episode."""
    return Scored(torch.cat([a.actions, b.actions], dim=1), torch.cat([a.costs, b.costs], dim=1), torch.cat([a.violating, b.violating], dim=1))


def best_of(scored: Scored, k: int) -> Scored:
    """Each episode's ``k`` lowest-cost candidates, lowest first."""
    idx = torch.topk(scored.costs, min(k, scored.costs.shape[1]), dim=1, largest=False).indices  # (E, k)
    return Scored(
        scored.actions.gather(1, idx[:, :, None, None].expand(-1, -1, *scored.actions.shape[2:])),
        scored.costs.gather(1, idx),
        scored.violating.gather(1, idx),
    )


def finite_mean_std(actions: Tensor, costs: Tensor, mean: Tensor, std: Tensor, min_std: float) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation ``(E, H, A)`` of each episode's candidates ``(E, K, H, A)`` of finite cost; an episode
    with fewer than two keeps ``mean`` and ``std`` (a refit on masks: no data-dependent shapes, no host reads)."""
    weights = torch.isfinite(costs).to(actions.dtype)[:, :, None, None]  # (E, K, 1, 1)
    count = weights.sum(dim=1)  # (E, 1, 1)
    new_mean = (weights * actions).sum(dim=1) / count.clamp_min(1)
    variance = (weights * (actions - new_mean[:, None]).pow(2)).sum(dim=1) / (count - 1).clamp_min(1)
    enough = count >= 2
    return torch.where(enough, new_mean, mean), torch.where(enough, variance.sqrt().clamp_min(min_std), std)
