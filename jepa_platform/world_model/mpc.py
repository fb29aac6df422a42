"""Model-predictive control: plan ``horizon`` actions, execute the first ``execute`` of them, observe, replan.

The loop talks to the environment only to act and to observe images; success (the true state within
``success_radius`` of the goal state) and guardrail violations (true states in a forbidden box) are read from the
simulator's ``info`` *after* each step, for the record, and never reach the planner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

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
    """One episode from ``start`` towards the image of ``goal`` under MPC (see module docstring)."""
    unwrapped = env.unwrapped
    goal_obs = unwrapped.render_state(np.asarray(goal, np.float32))
    obs, info = env.reset(options={"state": start})
    planner.reset()
    fallbacks0, evaluations0 = planner.fallbacks, world_model.evaluations
    level2_0 = _level2_evaluations(planner)
    take_subgoals = getattr(planner, "take_subgoals", None)
    subgoals: list[list[float]] = []
    states = [info["state"].tolist()]
    steps = violations = replans = 0
    planning = 0.0
    success = bool(np.linalg.norm(info["state"] - goal) < success_radius)
    while not success and steps < max_steps:
        tic = time.perf_counter()
        actions = planner.plan(world_model, obs, goal_obs, cost, horizon)
        planning += time.perf_counter() - tic
        replans += 1
        if take_subgoals is not None:
            subgoals += take_subgoals()
        todo = actions[:execute].detach().cpu().numpy()
        for action in todo:
            obs, _reward, _terminated, _truncated, info = env.step(action)
            steps += 1
            states.append(info["state"].tolist())
            violations += int(info.get("in_forbidden", False))
            success = bool(np.linalg.norm(info["state"] - goal) < success_radius)
            if success or steps >= max_steps:
                break
        planner.shift(len(todo))
    return Episode(
        success=success,
        steps=steps,
        violations=violations,
        planning_seconds=planning,
        evaluations=world_model.evaluations - evaluations0,
        replans=replans,
        fallbacks=planner.fallbacks - fallbacks0,
        states=states,
        start=np.asarray(start).tolist(),
        goal=np.asarray(goal).tolist(),
        subgoals=subgoals,
        evaluations_level2=_level2_evaluations(planner) - level2_0,
        rooms_apart=int(unwrapped.rooms_apart(np.asarray(start), np.asarray(goal))) if hasattr(unwrapped, "rooms_apart") else -1,
    )


def _level2_evaluations(planner: Planner) -> int:
    """World-model evaluations a hierarchical planner has made at level 2 so far (0 for flat planners)."""
    return int(getattr(getattr(planner, "level2", None), "evaluations_level2", 0))
