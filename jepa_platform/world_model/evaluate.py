"""``jepa plan RUN``: a world model's planners on fixed held-out start/goal pairs, next to two baselines.

It rebuilds the run's world model (``config.yaml``, checkpoint loaded with ``weights_only=True``) and the
environment its data came from, draws ``--episodes`` start/goal pairs from ``--seed`` (at least half of the goals in
the other room, none in or near a forbidden region), and runs every planner under MPC at a fixed step budget:
the model-based planners (``cem``, ``icem``, ``mppi``, ``gradient`` by default) and the baselines ``random`` and
``greedy`` (one-step lookahead). Each planner's episodes run as one batch (``--batch``; :mod:`.mpc`), each in its own
environment seeded from ``--seed`` and its index. The planner sees the observation and the goal image only; success, steps and
guardrail violations are counted in the simulator.

Prints one table (success rate, mean steps of the successful episodes, violations, fallbacks, planning seconds per
episode and per replan, world-model evaluations per episode and per second), writes ``plan.json`` and trajectory
pictures under ``RUN/plan/<time>/``, and logs ``plan/success_rate`` (best model-based planner), ``plan/violations``
(all model-based planners), ``plan/<planner>/*`` and the pictures to the run's MLflow run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jepa_platform.checkpoints import find_checkpoint, load_run_config, resolve_run, trained_objective
from jepa_platform.config import build, parse_value
from jepa_platform.errors import ConfigError
from jepa_platform.registry import PLANNERS
from jepa_platform.world_model.costs import Guardrail, PlanningCost
from jepa_platform.world_model.envs import make_env
from jepa_platform.world_model.mpc import Episode, run_episodes
from jepa_platform.world_model.pictures import episode_picture, grid
from jepa_platform.world_model.planners.base import WorldModel

log = logging.getLogger(__name__)
MODEL_PLANNERS = ("cem", "icem", "mppi", "gradient")
BASELINES = ("random", "greedy")


def environment_of(cfg: Any) -> tuple[str, dict[str, Any]]:
    """The environment (name, parameters) a run's data was collected in: from the built-in data config, or from the
    ``collection`` record that ``jepa data collect`` wrote into the dataset's manifest."""
    data = cfg.data
    if str(data.get("_target_", "")).endswith(("NavigationDataModule", "TwoRoomsDataModule")):
        from omegaconf import OmegaConf

        return str(data.get("environment", "two_rooms")), {
            **OmegaConf.to_container(data.get("env") or {}, resolve=True),
            "image_size": int(data.image_size),
        }
    urls = str(data.get("urls", ""))
    manifest = Path(urls) / "manifest.json"
    if manifest.is_file():
        record = json.loads(manifest.read_text()).get("collection")
        if record:
            return str(record["env"]), dict(record.get("env_kwargs") or {})
    raise ConfigError(
        "cannot tell which environment this run's data came from: train on data=two_rooms or on a directory written by jepa data collect"
    )


def held_out_pairs(env: Any, episodes: int, seed: int, margin: float, min_distance: float = 0.3) -> list[tuple[np.ndarray, np.ndarray]]:
    """``episodes`` start/goal pairs from ``seed``: even episodes have the goal in the other room, odd ones anywhere;
    both at least ``margin`` from forbidden boxes and ``min_distance`` apart."""
    rng = np.random.default_rng([seed, 7919])
    pairs = []
    for i in range(episodes):
        while True:
            start = env.sample_free_state(rng, margin=margin)
            room = 1 - env.room(start) if i % 2 == 0 else None
            goal = env.sample_free_state(rng, room=room, margin=margin)
            if np.linalg.norm(goal - start) >= min_distance:
                break
        pairs.append((start, goal))
    return pairs


BUCKETS = ("same room", "next room", "2+ rooms")


def distance_bucket(rooms_apart: int) -> str:
    """The goal-distance group of a pair: the same room, the next room, or two or more doors away."""
    return BUCKETS[min(max(rooms_apart, 0), 2)]


def farthest_rooms(env: Any, samples: int = 64) -> int:
    """The most doors between two of ``samples`` free positions (``-1`` for an environment without ``rooms_apart``)."""
    if not hasattr(env, "rooms_apart"):
        return -1
    rng = np.random.default_rng(0)
    points = [env.sample_free_state(rng, margin=-1.0) for _ in range(samples)]
    return max(env.rooms_apart(a, b) for a in points for b in points)


def pairs_by_distance(env: Any, episodes: int, seed: int, margin: float, min_distance: float = 0.3) -> list[tuple[np.ndarray, np.ndarray]]:
    """``episodes`` start/goal pairs from ``seed`` whose goals are, in turn, in the same room, the next room (one door
    away) and two or more doors away (``env.rooms_apart``); both ends at least ``margin`` from forbidden boxes and
    ``min_distance`` apart."""
    rng = np.random.default_rng([seed, 104729])
    pairs = []
    for i in range(episodes):
        wanted = i % len(BUCKETS)
        for _ in range(100_000):
            start = env.sample_free_state(rng, margin=margin)
            goal = env.sample_free_state(rng, margin=margin)
            if np.linalg.norm(goal - start) >= min_distance and min(env.rooms_apart(start, goal), 2) == wanted:
                break
        else:
            raise ConfigError(f"no start/goal pair {BUCKETS[wanted]} apart in this environment: use an environment with more rooms")
        pairs.append((start, goal))
    return pairs


def planner_kwargs(specs: list[str]) -> dict[str, dict[str, Any]]:
    """``cem.num_samples=100`` -> ``{"cem": {"num_samples": 100}}`` (values in JSON, else strings)."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        name, dot, arg = key.partition(".")
        if not (sep and dot and name and arg):
            raise ConfigError(f"--planner-arg {spec!r}: write PLANNER.ARG=VALUE, e.g. cem.num_samples=100")
        out.setdefault(name, {})[arg] = parse_value(value)
    return out


def make_planner(name: str, kwargs: dict[str, Any], seed: int) -> Any:
    cls = PLANNERS.get(name).cls
    try:
        return cls(**{"seed": seed, **kwargs})
    except TypeError as exc:
        raise ConfigError(f"planner {name} does not take {sorted(kwargs)}: {exc}") from exc


def summarise(episodes: list[Episode]) -> dict[str, float]:
    n = len(episodes)
    wins = [e for e in episodes if e.success]
    replans = sum(e.replans for e in episodes)
    planning = sum(e.planning_seconds for e in episodes)
    evaluations = sum(e.evaluations for e in episodes)
    return {
        "success_rate": len(wins) / n,
        "mean_steps": float(np.mean([e.steps for e in wins])) if wins else math.nan,
        "violations": float(sum(e.violations for e in episodes)),
        "fallbacks": float(sum(e.fallbacks for e in episodes)),
        "planning_seconds_per_episode": planning / n,
        "seconds_per_replan": planning / max(replans, 1),
        "evaluations_per_episode": evaluations / n,
        "evaluations_per_second": evaluations / planning if planning > 0 else math.nan,
    }


def summarise_by_distance(episodes: list[Episode]) -> dict[str, dict[str, float]]:
    """:func:`summarise` of all episodes (``all``) and of each goal-distance group present."""
    out = {"all": summarise(episodes)}
    for bucket in BUCKETS:
        chosen = [e for e in episodes if e.rooms_apart >= 0 and distance_bucket(e.rooms_apart) == bucket]
        if chosen:
            out[bucket] = {**summarise(chosen), "episodes": float(len(chosen))}
    return out


def format_table(results: dict[str, dict[str, dict[str, float]]], episodes: int, max_steps: int) -> str:
    """One row per planner over all pairs and, when the pairs have distance groups, one per group under it."""
    head = f"{'planner':<12}{'goals':<11}{'success':>9}{'steps':>8}{'violations':>12}{'fallbacks':>11}{'plan s/ep':>11}{'s/replan':>10}"
    head += f"{'WM evals/ep':>13}{'evals/s':>11}"
    lines = [f"{episodes} held-out start/goal pairs, budget {max_steps} steps", head, "-" * len(head)]
    grouped = any(len(by) > 2 for by in results.values())
    for name, by in results.items():
        for group, r in by.items():
            if group != "all" and not grouped:
                continue
            label = "all" if group == "all" else f"{group}"
            lines.append(
                f"{name if group == 'all' else '':<12}{label:<11}{100 * r['success_rate']:>8.1f}%{r['mean_steps']:>8.1f}{int(r['violations']):>12d}"
                f"{int(r['fallbacks']):>11d}{r['planning_seconds_per_episode']:>11.3f}{r['seconds_per_replan']:>10.4f}"
                f"{r['evaluations_per_episode']:>13.0f}{r['evaluations_per_second']:>11.0f}"
            )
    return "\n".join(lines)


def load_world_model(run: str, runs_dir: str, ckpt_arg: str | None) -> tuple[Path, Any, Path, Any, Any, Any]:
    """A run's trained world model and what planning it needs: ``(run_dir, cfg, checkpoint, model, env, transform)``,
    the environment rebuilt from the run's data (one-line errors for a run that is not a world model)."""
    run_dir = resolve_run(run, Path(runs_dir))
    cfg = load_run_config(run_dir)
    ckpt = Path(ckpt_arg) if ckpt_arg else find_checkpoint(str(run_dir), run_dir, run_dir)
    model, _meta = trained_objective(cfg.objective, ckpt)
    if not getattr(model, "levels", None):  # the interface planners read (world_model.level.PlannableModel)
        raise ConfigError(f"{run_dir} is not a world model ({type(model).__name__} has no levels): train one with experiment=two_rooms")
    env_name, env_kwargs = environment_of(cfg)
    env = make_env(env_name, **env_kwargs)
    for needed in ("render_state", "sample_free_state", "room"):
        if not hasattr(env.unwrapped, needed):
            raise ConfigError(f"environment {env_name} has no {needed}(): jepa plan needs start/goal states it can render (see docs/world-model.md)")
    return run_dir, cfg, ckpt, model, env, build(cfg.data.eval_transform, "data.eval_transform")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jepa plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory of a world model (runs/<run>) or 'last'")
    p.add_argument("--ckpt", default=None, help="checkpoint (default: the run's newest complete one)")
    p.add_argument("--runs-dir", default=os.environ.get("JEPA_RUNS_DIR", "runs"), help="where 'last' looks (default: $JEPA_RUNS_DIR or ./runs)")
    p.add_argument("--planners", default=",".join(MODEL_PLANNERS), help=f"model-based planners, comma-separated (default {','.join(MODEL_PLANNERS)})")
    p.add_argument("--baselines", default=",".join(BASELINES), help="baselines in the same table (default random,greedy; '' for none)")
    p.add_argument("--planner-arg", action="append", default=[], metavar="PLANNER.ARG=VALUE", help="planner parameter (repeatable)")
    p.add_argument("--episodes", type=int, default=50, help="held-out start/goal pairs (default 50)")
    p.add_argument("--seed", type=int, default=1000, help="seed of the pairs (default 1000; collection uses other seeds)")
    p.add_argument("--horizon", type=int, default=16, help="planning horizon in steps (default 16)")
    p.add_argument("--execute", type=int, default=3, help="actions executed before replanning (default 3)")
    p.add_argument("--max-steps", type=int, default=100, help="step budget per episode (default 100)")
    p.add_argument("--success-radius", type=float, default=0.06, help="success: within this distance of the goal (default 0.06)")
    p.add_argument("--terminal-weight", type=float, default=1.0, help="weight of the goal energy at the plan's end")
    p.add_argument("--step-weight", type=float, default=1.0, help="weight of the goal energy averaged over the plan's steps (default 1)")
    p.add_argument(
        "--slow-power",
        type=float,
        default=2.0,
        help="measure the energy on the model's slow features, each scaled by slowness^(-power/2) (0: plain embedding distance; default 2)",
    )
    p.add_argument("--action-weight", type=float, default=0.0, help="weight of the mean squared action")
    p.add_argument("--margin", type=float, default=0.08, help="guardrail margin around forbidden boxes (state units)")
    p.add_argument("--no-guardrail", action="store_true", help="plan without guardrails (violations are still counted)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--batch", type=int, default=None, help="episodes planned at once, one world-model call per iteration (default: all; 1: one at a time)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the world model's rollout (CUDA graphs on a GPU; slower on a CPU)")
    p.add_argument("--pictures", type=int, default=None, help="trajectory pictures per planner (default: every episode)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to the run's MLflow run")
    h = p.add_argument_group("hierarchical planning (a hierarchical_ac_jepa run; docs/hierarchical-planning.md)")
    h.add_argument(
        "--hierarchical", action="store_true", help="also plan with h-<planner> for every --planners: subgoals at level 2, reached at level 1"
    )
    h.add_argument("--high-horizon", type=int, default=4, help="macro-steps the high level plans (default 4)")
    h.add_argument("--high-period", type=int, default=None, help="level-1 steps between high-level replans (default: the model's level2_stride)")
    h.add_argument("--low-horizon", type=int, default=None, help="the low level's horizon toward a subgoal (default: the model's level2_stride)")
    h.add_argument(
        "--high-planner-arg", action="append", default=[], metavar="PLANNER.ARG=VALUE", help="parameter of the high-level planner (repeatable)"
    )
    z = p.add_argument_group("latent variable (world models trained with objective.latent_dim > 0)")
    z.add_argument("--latent-samples", type=int, default=0, help="score each plan under this many draws of the latent (default 0: its mean)")
    z.add_argument(
        "--latent-risk", default="mean", choices=("mean", "max"), help="combine the draws' costs by their mean or the worst (default mean)"
    )
    return p


def hierarchical_planners(
    names: list[str], extra: dict[str, dict[str, Any]], high_extra: dict[str, dict[str, Any]], args: argparse.Namespace, cost: PlanningCost
) -> dict[str, Any]:
    """``h-<name>`` for every model-based planner: ``name`` at both levels (the low level with ``--planner-arg``, the high
    level with ``--high-planner-arg``)."""
    from jepa_platform.world_model.hierarchical import HierarchicalPlanner

    high_cost = PlanningCost(args.terminal_weight, args.step_weight)
    out = {}
    for name in names:
        high, low = make_planner(name, high_extra.get(name, {}), args.seed), make_planner(name, extra.get(name, {}), args.seed)
        out[f"h-{name}"] = HierarchicalPlanner(high, low, args.high_horizon, args.high_period, high_cost, seed=args.seed)
    return out


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.episodes < 1 or args.horizon < 1 or args.execute < 1 or args.max_steps < 1:
        raise ConfigError("--episodes, --horizon, --execute and --max-steps must be >= 1")
    if args.execute > min(args.horizon, args.low_horizon or args.horizon):
        raise ConfigError(f"--execute {args.execute} exceeds --horizon or --low-horizon: execute at most the planned actions")
    if args.high_horizon < 1 or (args.high_period is not None and args.high_period < 1) or args.latent_samples < 0:
        raise ConfigError("--high-horizon and --high-period must be >= 1 and --latent-samples >= 0")
    if args.batch is not None and args.batch < 1:
        raise ConfigError(f"--batch {args.batch}: plan at least one episode at a time (or leave it out: all at once)")
    run_dir, cfg, ckpt, model, env, transform = load_world_model(args.run, args.runs_dir, args.ckpt)
    if args.hierarchical and len(model.levels) < 2:
        raise ConfigError(f"{run_dir} has no level 2 ({type(model).__name__}): --hierarchical needs a hierarchical_ac_jepa run (experiment=maze)")
    wm = WorldModel(
        model.to(args.device),
        transform,
        env.action_space.low,
        env.action_space.high,
        slow_power=args.slow_power,
        latent_samples=args.latent_samples,
        latent_risk=args.latent_risk,
        seed=args.seed,
        compile=args.compile,
    )
    boxes = [] if args.no_guardrail else getattr(env.unwrapped, "forbidden", np.zeros((0, 4))).tolist()
    cost = PlanningCost(args.terminal_weight, args.step_weight, args.action_weight, Guardrail(boxes, args.margin) if boxes else None)
    unwrapped = env.unwrapped
    if farthest_rooms(unwrapped) >= 2:  # goals at increasing distances, a third each
        pairs = pairs_by_distance(unwrapped, args.episodes, args.seed, margin=args.margin + 0.02)
    else:
        pairs = held_out_pairs(unwrapped, args.episodes, args.seed, margin=args.margin + 0.02)
    extra, high_extra = planner_kwargs(args.planner_arg), planner_kwargs(args.high_planner_arg)
    model_names = [n for n in args.planners.split(",") if n]
    names = model_names + [n for n in args.baselines.split(",") if n]
    unknown = sorted((set(extra) | set(high_extra)) - set(names))
    if unknown:
        raise ConfigError(f"--planner-arg for {', '.join(unknown)}, which is not planned: add it to --planners")
    planners = {name: make_planner(name, extra.get(name, {}), args.seed) for name in names}  # checks every name first
    if args.hierarchical:
        planners.update(hierarchical_planners([n for n in model_names if planners[n].uses_model], extra, high_extra, args, cost))

    batch = min(args.batch or len(pairs), len(pairs))
    episode_seeds = [int(np.random.default_rng([args.seed, 7, i]).integers(2**31)) for i in range(len(pairs))]
    env_name, env_kwargs = environment_of(cfg)
    envs = [env, *(make_env(env_name, **env_kwargs) for _ in range(batch - 1))]  # one per episode of a batch
    geometry = env.unwrapped.describe() if hasattr(env.unwrapped, "describe") else {}
    out_dir = run_dir / "plan" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, float]]] = {}
    records: dict[str, list[dict]] = {}
    stride = model.levels[1].stride if len(model.levels) > 1 else 0
    for name, planner in planners.items():
        tic = time.perf_counter()
        horizon, execute = (args.horizon, args.execute) if name != "greedy" else (1, 1)
        if name.startswith("h-"):
            horizon = args.low_horizon or stride or args.horizon
        episodes = [
            episode
            for first in range(0, len(pairs), batch)
            for episode in run_episodes(
                envs, planner, wm, cost, pairs[first : first + batch], horizon, execute, args.max_steps, args.success_radius, episode_seeds[first:]
            )
        ]
        results[name] = summarise_by_distance(episodes)
        records[name] = [e.__dict__ for e in episodes]
        log.info("%s: %.0f%% success in %.1fs", name, 100 * results[name]["all"]["success_rate"], time.perf_counter() - tic)
        shown = episodes if args.pictures is None else episodes[: args.pictures]
        pictures = [episode_picture(e, geometry, args.success_radius, f"{name} #{i}") for i, e in enumerate(shown)]
        (out_dir / name).mkdir(exist_ok=True)
        for i, picture in enumerate(pictures):
            picture.save(out_dir / name / f"episode_{i:03d}.png")
        if pictures:
            grid(pictures).save(out_dir / f"{name}.png")

    table = format_table(results, args.episodes, args.max_steps)
    print(table)
    setup = {k: v for k, v in vars(args).items() if k not in ("run", "runs_dir")}
    (out_dir / "plan.json").write_text(json.dumps({"setup": setup, "checkpoint": str(ckpt), "results": results, "episodes": records}, indent=2))
    (out_dir / "table.txt").write_text(table + "\n")
    print(f"results and pictures: {out_dir}")
    if not args.no_mlflow:
        from jepa_platform.tracking import log_to_run

        if log_to_run(run_dir, plan_metrics(results, planners), out_dir, f"plan/{out_dir.name}"):
            print("logged plan/* and the trajectory pictures to the run's MLflow run")
    return 0


def plan_metrics(results: dict[str, dict[str, dict[str, float]]], planners: dict[str, Any]) -> dict[str, float]:
    """``plan/<planner>/<figure>`` for every planner over all pairs, ``plan/<planner>/<group>/<figure>`` per goal
    distance (``same_room``, ``next_room``, ``2_or_more_rooms``), and ``plan/success_rate`` (best model-based planner) and
    ``plan/violations`` (sum over the model-based planners)."""
    metrics = {}
    for name, by in results.items():
        for group, r in by.items():
            prefix = f"plan/{name}" if group == "all" else f"plan/{name}/{group.replace('+', '_or_more').replace(' ', '_')}"
            metrics.update({f"{prefix}/{k}": v for k, v in r.items() if math.isfinite(v)})
    model_based = [name for name, p in planners.items() if p.uses_model and name not in BASELINES]
    if model_based:
        metrics["plan/success_rate"] = max(results[n]["all"]["success_rate"] for n in model_based)
        metrics["plan/violations"] = sum(results[n]["all"]["violations"] for n in model_based)
    return metrics
