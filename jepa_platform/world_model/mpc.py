"""Model-predictive control of a batch of episodes: plan ``horizon`` actions for every episode at once, execute the
first ``execute`` of each in its own environment, observe, replan.

One replan is one call of the planner over all running episodes (their observations encoded in one call of the
encoder) and one transfer of the plans to the host; the environments then step one by one on the host. An episode
that succeeds or runs out of steps leaves the batch (:meth:`Planner.select` keeps the others' warm starts). Episodes
of one batch replan in lockstep: each runs exactly the replans it would run alone, with the same random draws
(:mod:`~jepa_platform.world_model.planners.base`), so the results do not depend on the batch size.

Why not ``gymnasium.vector``: its ``reset`` passes one ``options`` to every sub-environment (each episode starts
from its own state here), and it steps every sub-environment every time, also those whose episode has ended.

The loop talks to the environments only to act and to observe images; success (the true state within
``success_radius`` of the goal state) and guardrail violations (true states in a forbidden box) are read from the
simulator's ``info`` *after* each step, for the record, and never reach the planner. Planning time and world-model
evaluations of a replan are shared equally by the episodes in it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from jepa_platform.world_model.costs import PlanningCost
from jepa_platform.world_model.planners.base import Planner, WorldModel


@dataclass
class Episode:
    """What one MPC episode did (``states`` from the simulator, for the record and the pictures)."""

    success: bool
    steps: int
    violations: int
    planning_seconds: float
    evaluations: int
    replans: int
    fallbacks: int
    states: list[list[float]] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    goal: list[float] = field(default_factory=list)
    #: ``[step, x, y]`` of each subgoal a hierarchical planner set (its level-2 state head's reading)
    subgoals: list[list[float]] = field(default_factory=list)
    #: the share of ``evaluations`` made at level 2 (hierarchical planners)
    evaluations_level2: int = 0
    #: doors between the start's room and the goal's
    rooms_apart: int = -1


def run_episodes(
    envs: Sequence[gym.Env],
    planner: Planner,
    world_model: WorldModel,
    cost: PlanningCost,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    horizon: int,
    execute: int,
    max_steps: int,
    success_radius: float,
    seeds: Sequence[int] | None = None,
) -> list[Episode]:
    """One episode per ``(start, goal)`` pair, each in its own environment of ``envs``, planned as one batch (see
    module docstring). ``seeds``: each episode's environment seed (what is random in the environment, e.g. a door
    that may close, then depends on the episode alone, not on the episodes run before it in that environment)."""
    if len(envs) < len(pairs):
        raise ValueError(f"{len(pairs)} episodes need as many environments, got {len(envs)}")
    goals = [np.asarray(goal, np.float32) for _start, goal in pairs]
    episodes, observations, goal_frames = [], [], []
    for k, (env, (start, goal)) in enumerate(zip(envs, pairs, strict=False)):
        goal_frames.append(env.unwrapped.render_state(goals[k]))
        obs, info = env.reset(seed=None if seeds is None else int(seeds[k]), options={"state": start})
        observations.append(obs)
        episodes.append(
            Episode(
                success=bool(np.linalg.norm(info["state"] - goals[k]) < success_radius),
                steps=0,
                violations=0,
                planning_seconds=0.0,
                evaluations=0,
                replans=0,
                fallbacks=0,
                states=[info["state"].tolist()],
                start=np.asarray(start).tolist(),
                goal=np.asarray(goal).tolist(),
                rooms_apart=_rooms_apart(env, start, goal),
            )
        )
    planner.reset()
    world_model.reset_draws()
    active = [i for i, e in enumerate(episodes) if not e.success]
    encode = planner.uses_model
    goal_z = world_model.encode(np.stack([goal_frames[i] for i in active])) if encode and active else None
    while active:
        tic = time.perf_counter()
        evaluations, level2 = world_model.evaluations, _level2_evaluations(planner)
        if encode:
            z0 = world_model.encode(np.stack([observations[i] for i in active]))
        else:  # a baseline that ignores the model: the batch size is all it reads
            z0 = goal_z = torch.zeros(len(active), 0, device=world_model.device)
        plans = planner.plan(world_model, z0, goal_z, cost, horizon)[:, :execute]
        todo, fell = _to_host(plans, planner.fallen_back)
        share = (time.perf_counter() - tic) / len(active)
        evaluations = (world_model.evaluations - evaluations) // len(active)
        level2 = (_level2_evaluations(planner) - level2) // len(active)
        subgoals = planner.take_subgoals() if hasattr(planner, "take_subgoals") else [[] for _ in active]
        for j, i in enumerate(active):
            episode, env = episodes[i], envs[i]
            episode.planning_seconds += share
            episode.replans += 1
            episode.evaluations += evaluations
            episode.evaluations_level2 += level2
            episode.fallbacks += int(fell[j])
            episode.subgoals += subgoals[j]
            for action in todo[j]:
                obs, _reward, _terminated, _truncated, info = env.step(action)
                observations[i] = obs
                episode.steps += 1
                episode.states.append(info["state"].tolist())
                episode.violations += int(info.get("in_forbidden", False))
                episode.success = bool(np.linalg.norm(info["state"] - goals[i]) < success_radius)
                if episode.success or episode.steps >= max_steps:
                    break
        planner.shift(todo.shape[1])
        running = [j for j, i in enumerate(active) if not (episodes[i].success or episodes[i].steps >= max_steps)]
        if len(running) < len(active):
            keep = torch.tensor(running, dtype=torch.long, device=world_model.device)
            planner.select(keep)
            if encode:
                goal_z = goal_z[keep]
            active = [active[j] for j in running]
    return episodes


def run_episode(
    env: gym.Env,
    planner: Planner,
    world_model: WorldModel,
    cost: PlanningCost,
    start: np.ndarray,
    goal: np.ndarray,
    horizon: int,
    execute: int,
    max_steps: int,
    success_radius: float,
) -> Episode:
    """One episode from ``start`` towards the image of ``goal`` under MPC (a batch of one)."""
    return run_episodes([env], planner, world_model, cost, [(start, goal)], horizon, execute, max_steps, success_radius)[0]


def _to_host(plans: torch.Tensor, fallen_back: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """The plans ``(E, K, A)`` and the fallback flags ``(E,)`` on the host, in one transfer."""
    flags = fallen_back if fallen_back is not None else torch.zeros(plans.shape[0], dtype=torch.bool, device=plans.device)
    both = torch.cat([plans.detach().flatten(1).float(), flags[:, None].to(device=plans.device, dtype=torch.float32)], dim=1).cpu().numpy()
    return both[:, :-1].reshape(plans.shape[0], plans.shape[1], -1).astype(np.float32), both[:, -1] > 0


def _rooms_apart(env: gym.Env, start: np.ndarray, goal: np.ndarray) -> int:
    unwrapped = env.unwrapped
    return int(unwrapped.rooms_apart(np.asarray(start), np.asarray(goal))) if hasattr(unwrapped, "rooms_apart") else -1


def _level2_evaluations(planner: Planner) -> int:
    """World-model evaluations a hierarchical planner has made at level 2 so far (0 for flat planners)."""
    return int(getattr(getattr(planner, "level2", None), "evaluations_level2", 0))
