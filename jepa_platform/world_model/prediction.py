"""``jepa predict RUN [RUN ...]``: open-loop multi-step prediction error of world models on fresh held-out episodes of
their environment, with and without their latent variable, split by whether something unpredictable happened in the
window (the stochastic maze's door closed).

For each run, ``--episodes`` episodes of ``--horizon + 1`` frames are drawn with the noisy-directional exploration
policy from ``--seed`` (collection uses other seeds); the model encodes the first frame and rolls the episode's
actions out open loop. Errors, per step ahead:

- ``error``: mean squared error to the embeddings of the frames reached, divided by the mean variance of those
  embeddings (each model has its own embedding space: this makes runs comparable; 1 is the error of predicting the
  mean embedding);
- ``position``: distance between the state head's reading of the prediction and the true position (state units).

Modes: ``mean`` (the latent at its prior mean, or a model without one), ``best-of-S`` (S draws from the prior, the
closest to what happened kept per episode: does any imagined future match the real one? The usual score of
stochastic predictors) and ``posterior`` (the latent inferred from the true embeddings: how much the latent can
explain, an upper bound). Groups: ``door event`` (the door's state changed within the window), ``no event``.

Prints one table, writes ``predict.json`` under ``RUN/predict/<time>/`` and logs ``predict/<mode>/<group>/*`` to each
run's MLflow run.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data_modules.collect import ActionSampler
from jepa_platform.errors import ConfigError
from jepa_platform.world_model.evaluate import load_world_model

GROUPS = ("all", "door event", "no event")


def held_out_episodes(env: Any, episodes: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """``frames (N, L, H, W, 3)``, ``actions (N, L-1, 2)``, ``states (N, L, 2)`` and ``event (N,)`` (the door's state
    changed) of noisy-directional episodes from ``seed``."""
    frames, actions, states, events = [], [], [], []
    for i in range(episodes):
        rng = np.random.default_rng([seed, 31337, i])
        sampler = ActionSampler(env.action_space, "noisy_directional", rng)
        obs, info = env.reset(seed=int(rng.integers(2**31)))
        ep_frames, ep_actions, ep_states, doors = [obs], [], [info["state"]], [info.get("door_open", True)]
        for _ in range(length - 1):
            action = sampler()
            obs, _r, _t, _tr, info = env.step(action)
            ep_frames.append(obs)
            ep_actions.append(np.asarray(action, np.float32))
            ep_states.append(info["state"])
            doors.append(info.get("door_open", True))
        frames.append(np.stack(ep_frames))
        actions.append(np.stack(ep_actions))
        states.append(np.stack(ep_states))
        events.append(len(set(doors)) > 1)
    return {"frames": np.stack(frames), "actions": np.stack(actions), "states": np.stack(states), "event": np.asarray(events)}


@torch.no_grad()
def prediction_errors(model: Any, transform: Any, data: dict[str, np.ndarray], samples: int, seed: int, device: str) -> dict[str, dict[str, Tensor]]:
    """Per mode, ``error`` and ``position`` ``(N, H)`` (see module docstring)."""
    frames = torch.from_numpy(data["frames"]).permute(0, 1, 4, 2, 3)  # (N, L, 3, S, S)
    z = torch.stack([model.encode(transform(clip).to(device)) for clip in frames])  # (N, L, D)
    actions = torch.from_numpy(data["actions"]).to(device)
    states = torch.from_numpy(data["states"]).to(device)[:, 1:]
    target = z[:, 1:]
    scale = target.flatten(0, 1).var(dim=0).mean().clamp_min(1e-12)

    level = model.levels[0]

    def score(predicted: Tensor) -> dict[str, Tensor]:
        out = {"error": (predicted - target).pow(2).mean(dim=-1) / scale}
        if level.state_head is not None:
            out["position"] = (level.decode_state(predicted) - states).norm(dim=-1)
        return out

    modes = {"mean": score(level.rollout(z[:, 0], actions))}
    latent_dim = level.latent_dim
    if latent_dim and samples:
        g = torch.Generator(device=device).manual_seed(seed)
        draws = [
            score(level.rollout(z[:, 0], torch.cat([actions, torch.randn(*actions.shape[:-1], latent_dim, generator=g, device=device)], dim=-1)))
            for _ in range(samples)
        ]
        errors = torch.stack([d["error"] for d in draws])  # (S, N, H)
        best = errors.mean(dim=-1).argmin(dim=0)  # (N,)
        pick = torch.arange(best.numel(), device=device)
        modes[f"best-of-{samples}"] = {k: torch.stack([d[k] for d in draws])[best, pick] for k in draws[0]}
    if level.latent is not None:
        level.latent.eval()
        inferred, _kl = level.latent(z[:, :-1], z[:, 1:])
        modes["posterior"] = score(level.rollout(z[:, 0], torch.cat([actions, inferred], dim=-1)))
    return modes


def summarise(modes: dict[str, dict[str, Tensor]], event: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """``{mode: {group: {"episodes", "error_h<h>", "position_h<h>"}}}`` at 1, half and all of the horizon."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    mask = torch.from_numpy(event)
    for mode, figures in modes.items():
        out[mode] = {}
        horizon = figures["error"].shape[1]
        steps = sorted({1, max(1, horizon // 2), horizon})
        for group, chosen in (("all", torch.ones_like(mask)), ("door event", mask), ("no event", ~mask)):
            if not chosen.any():
                continue
            row = {"episodes": float(chosen.sum())}
            for name, values in figures.items():
                for h in steps:
                    row[f"{name}_h{h}"] = float(values[chosen.to(values.device), h - 1].mean())
            out[mode][group] = row
    return out


def format_table(results: dict[str, dict[str, dict[str, dict[str, float]]]]) -> str:
    first = next(iter(next(iter(next(iter(results.values())).values())).values()))
    keys = [k for k in first if k != "episodes"]
    head = f"{'run':<16}{'mode':<12}{'group':<12}{'n':>5}" + "".join(f"{k:>14}" for k in keys)
    lines = [head, "-" * len(head)]
    for run, by_mode in results.items():
        for mode, by_group in by_mode.items():
            for group, row in by_group.items():
                cells = "".join(f"{row.get(k, float('nan')):>14.4f}" for k in keys)
                lines.append(f"{run[-16:]:<16}{mode:<12}{group:<12}{int(row['episodes']):>5}{cells}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jepa predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories of world models (or 'last')")
    p.add_argument("--runs-dir", default=os.environ.get("JEPA_RUNS_DIR", "runs"), help="where 'last' looks (default: $JEPA_RUNS_DIR or ./runs)")
    p.add_argument("--episodes", type=int, default=200, help="held-out episodes (default 200)")
    p.add_argument("--horizon", type=int, default=16, help="steps predicted open loop (default 16)")
    p.add_argument("--samples", type=int, default=16, help="draws of the latent for best-of-S (default 16; 0: none)")
    p.add_argument("--seed", type=int, default=2000, help="seed of the episodes and the draws (default 2000)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to the runs' MLflow runs")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.episodes < 1 or args.horizon < 1 or args.samples < 0:
        raise ConfigError("--episodes and --horizon must be >= 1 and --samples >= 0")
    results, stamp = {}, datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    for run in args.runs:
        run_dir, _cfg, ckpt, model, env, transform = load_world_model(run, args.runs_dir, None)
        model = model.to(args.device).eval()
        data = held_out_episodes(env.unwrapped, args.episodes, args.horizon + 1, args.seed)
        summary = summarise(prediction_errors(model, transform, data, args.samples, args.seed, args.device), data["event"])
        results[run_dir.name] = summary
        out_dir = run_dir / "predict" / stamp
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "predict.json").write_text(json.dumps({"setup": vars(args), "checkpoint": str(ckpt), "results": summary}, indent=2))
        if not args.no_mlflow:
            from jepa_platform.tracking import log_to_run

            metrics = {
                f"predict/{mode}/{group.replace(' ', '_')}/{k}": v
                for mode, by in summary.items()
                for group, row in by.items()
                for k, v in row.items()
            }
            log_to_run(run_dir, metrics)
    print(format_table(results))
    return 0
