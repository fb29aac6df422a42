"""Planning throughput: candidate action sequences and world-model evaluations per second, per planner, on CPU and
(when present) on a GPU, with the predictor of ``experiment=two_rooms`` (weights do not matter for speed).

Prints, side by side in one run, each planner's seconds per replan, candidates/s and world-model evaluations/s
(one evaluation = one candidate advanced one step), and each planner's time per replan as a ratio of CEM's.

    python -m benchmarks.planning [--horizon 16] [--repeats 20] [--device cpu,cuda]
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


def measure(device: str, horizon: int, repeats: int) -> dict[str, dict[str, float]]:
    cfg = compose_config(["experiment=two_rooms", "logger=none"])
    torch.manual_seed(0)
    model = build(cfg.objective, "objective").to(device)
    env = TwoRoomsEnv()
    wm = WorldModel(model, lambda f: (f.float() / 255 - 0.5) / 0.25, env.action_space.low, env.action_space.high)
    obs, goal = env.render_state(np.array([0.2, 0.2], np.float32)), env.render_state(np.array([0.8, 0.8], np.float32))
    out = {}
    for name in ("cem", "icem", "mppi", "gradient"):
        planner = PLANNERS.get(name).cls(seed=0)
        with torch.no_grad():
            planner.plan(wm, obs, goal, PlanningCost(), horizon)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        evaluations0 = wm.evaluations
        tic = time.perf_counter()
        for _ in range(repeats):
            planner.reset()
            planner.plan(wm, obs, goal, PlanningCost(), horizon)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - tic) / repeats
        evaluations = (wm.evaluations - evaluations0) / repeats
        out[name] = {"seconds": seconds, "candidates_per_s": evaluations / horizon / seconds, "evaluations_per_s": evaluations / seconds}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for device in args.device.split(","):
        results = measure(device, args.horizon, args.repeats)
        print(f"device {device}, horizon {args.horizon}: default planner settings, one replan")
        print(f"{'planner':<10}{'s/replan':>10}{'candidates/s':>15}{'WM evals/s':>14}{'time / CEM':>12}")
        for name, r in results.items():
            ratio = r["seconds"] / results["cem"]["seconds"]
            print(f"{name:<10}{r['seconds']:>10.4f}{r['candidates_per_s']:>15.0f}{r['evaluations_per_s']:>14.0f}{ratio:>12.2f}")


if __name__ == "__main__":
    main()
