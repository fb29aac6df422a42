"""Planning compute per executed step, flat vs hierarchical, side by side in one run: the world model of
``experiment=maze`` (randomly initialised: weights do not change the cost), CEM at its defaults.

Flat: horizon 16, replan every 3 steps. Hierarchical: the same CEM at level 1 toward a subgoal (horizon = the
model's level-2 stride, 8), replanning every 3 steps, plus CEM over 4 macro-steps at level 2 every 8 steps. Prints
seconds and world-model evaluations per executed step and their ratios (hierarchical / flat). Whether hierarchical
planning reaches the same success at that compute is ``jepa plan --hierarchical`` (docs/hierarchical-planning.md).

    python -m benchmarks.hierarchical_planning [--steps 48] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from jepa_platform.config import build, compose_config
from jepa_platform.world_model.costs import PlanningCost
from jepa_platform.world_model.envs import MazeEnv
from jepa_platform.world_model.hierarchical import HierarchicalPlanner
from jepa_platform.world_model.mpc import run_episode
from jepa_platform.world_model.planners import CEM, WorldModel


def measure(device: str, steps: int) -> dict[str, dict[str, float]]:
    cfg = compose_config(["experiment=maze", "logger=none"])
    torch.manual_seed(0)
    model = build(cfg.objective, "objective").to(device)
    env = MazeEnv(**{k: v for k, v in cfg.data.env.items()})
    wm = WorldModel(model, lambda f: (f.float() / 255 - 0.5) / 0.25, env.action_space.low, env.action_space.high)
    start, goal = np.array([0.2, 0.2], np.float32), np.array([0.8, 0.2], np.float32)
    stride = model.levels[1].stride
    setups = {"flat cem": (CEM(), 16), "h-cem": (HierarchicalPlanner(CEM(), CEM(), high_horizon=4), stride)}
    out = {}
    for name, (planner, horizon) in setups.items():
        run_episode(env, planner, wm, PlanningCost(1.0, 1.0), start, goal, horizon, 3, 6, success_radius=0.0)  # warm-up
        tic = time.perf_counter()
        episode = run_episode(env, planner, wm, PlanningCost(1.0, 1.0), start, goal, horizon, 3, steps, success_radius=0.0)
        seconds = time.perf_counter() - tic
        out[name] = {"seconds_per_step": seconds / episode.steps, "evaluations_per_step": episode.evaluations / episode.steps}
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=48, help="executed steps per measurement (default 48)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    results = measure(args.device, args.steps)
    print(f"device {args.device}, {args.steps} executed steps, CEM defaults at both levels")
    print(f"{'planner':<12}{'s/step':>10}{'WM evals/step':>15}")
    for name, r in results.items():
        print(f"{name:<12}{r['seconds_per_step']:>10.4f}{r['evaluations_per_step']:>15.0f}")
    flat, hier = results["flat cem"], results["h-cem"]
    ratios = {
        "seconds": hier["seconds_per_step"] / flat["seconds_per_step"],
        "evaluations": hier["evaluations_per_step"] / flat["evaluations_per_step"],
    }
    print(f"hierarchical / flat: {ratios['seconds']:.2f} of the seconds, {ratios['evaluations']:.2f} of the evaluations per step")
    return ratios


if __name__ == "__main__":
    main()
