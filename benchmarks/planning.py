"""Planning throughput: one replan of every planner for one episode and for a batch of episodes, side by side in
one run, with the predictor of ``experiment=two_rooms`` (weights do not matter for speed).

Prints, per planner and batch size, seconds per replan, seconds per replan per episode and world-model
evaluations/s (one evaluation = one candidate advanced one step), and how much faster per episode the batch is.

    python -m benchmarks.planning [--horizon 16] [--repeats 5] [--episodes 1,50] [--device cpu,cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from jepa_platform.config import build, compose_config
from jepa_platform.registry import PLANNERS
from jepa_platform.world_model.costs import PlanningCost
from jepa_platform.world_model.envs import TwoRoomsEnv
from jepa_platform.world_model.planners import WorldModel

PLANNED = ("cem", "icem", "mppi", "gradient")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(device: str, horizon: int, repeats: int, episodes: int = 1) -> dict[str, dict[str, float]]:
    """Per planner: ``seconds`` per replan of ``episodes`` episodes, ``evaluations_per_s``, ``candidates_per_s``."""
    cfg = compose_config(["experiment=two_rooms", "logger=none"])
    torch.manual_seed(0)
    model = build(cfg.objective, "objective").to(device)
    env = TwoRoomsEnv()
    wm = WorldModel(model, lambda f: (f.float() / 255 - 0.5) / 0.25, env.action_space.low, env.action_space.high)
    rng = np.random.default_rng(0)
    starts = np.stack([env.render_state(env.sample_free_state(rng)) for _ in range(episodes)])
    goals = np.stack([env.render_state(env.sample_free_state(rng)) for _ in range(episodes)])
    z0, goal = wm.encode(starts), wm.encode(goals)
    out = {}
    for name in PLANNED:
        planner = PLANNERS.get(name).cls(seed=0)
        planner.plan(wm, z0, goal, PlanningCost(), horizon)  # warm-up
        _sync(device)
        evaluations0 = wm.evaluations
        tic = time.perf_counter()
        for _ in range(repeats):
            planner.reset()
            planner.plan(wm, z0, goal, PlanningCost(), horizon)
        _sync(device)
        seconds = (time.perf_counter() - tic) / repeats
        evaluations = (wm.evaluations - evaluations0) / repeats
        out[name] = {"seconds": seconds, "candidates_per_s": evaluations / horizon / seconds, "evaluations_per_s": evaluations / seconds}
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[int, dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--episodes", default="1,50", help="batch sizes, comma-separated (default 1,50)")
    parser.add_argument("--device", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    sizes = [int(e) for e in args.episodes.split(",")]
    results: dict[str, dict[int, dict[str, float]]] = {}
    for device in args.device.split(","):
        by_size = {e: measure(device, args.horizon, args.repeats, e) for e in sizes}
        print(f"device {device}, horizon {args.horizon}: default planner settings, one replan of E episodes")
        head = f"{'planner':<10}{'E':>5}{'s/replan':>10}{'s/replan/ep':>13}{'WM evals/s':>14}{'per-episode speed-up vs E=' + str(sizes[0]):>32}"
        print(head)
        for name in PLANNED:
            base = by_size[sizes[0]][name]["seconds"] / sizes[0]
            for e in sizes:
                r = by_size[e][name]
                speedup = base / (r["seconds"] / e)
                print(f"{name:<10}{e:>5}{r['seconds']:>10.4f}{r['seconds'] / e:>13.5f}{r['evaluations_per_s']:>14,.0f}{speedup:>32.1f}")
            results[f"{device}/{name}"] = {e: by_size[e][name] for e in sizes}
    return results


if __name__ == "__main__":
    main()
