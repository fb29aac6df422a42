"""``jepa data collect ENV OUT_DIR``: exploratory trajectories (frames, actions, states) as sequence shards.

Policies: ``random`` (actions drawn uniformly at every step) and ``noisy_directional`` (a heading held for a
geometric number of steps, with noise: long straight runs that cross doors and slide along walls, which a world
model must see to learn them), or ``mixed`` (each episode one or the other). Any gymnasium environment works:
frames come from ``render()`` (``render_mode="rgb_array"``), states from ``info["state"]`` or from a vector
observation, discrete actions are stored one-hot. Shards are written with :func:`data_modules.sequences.write_episodes`
(atomically: a crash leaves no half-written dataset under OUT_DIR).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from data_modules.sequences import write_episodes
from data_modules.shards import MANIFEST
from jepa_platform.config import parse_value
from jepa_platform.errors import ConfigError, DataError

POLICIES = ("random", "noisy_directional", "mixed")


class ActionSampler:
    """Exploration actions for one episode of a gymnasium action space (Box or Discrete)."""

    def __init__(self, space: gym.Space, policy: str, rng: np.random.Generator, mean_run: float = 8.0, noise: float = 0.3) -> None:
        if policy not in ("random", "noisy_directional"):
            raise ConfigError(f"policy {policy!r} is not one of random, noisy_directional")
        if not isinstance(space, gym.spaces.Box | gym.spaces.Discrete):
            raise ConfigError(f"cannot explore action space {space}: Box and Discrete are supported")
        self.space, self.policy, self.rng, self.mean_run, self.noise = space, policy, rng, mean_run, noise
        self.left = 0
        self.heading: np.ndarray | int = 0

    def _uniform(self) -> np.ndarray | int:
        if isinstance(self.space, gym.spaces.Discrete):
            return int(self.rng.integers(self.space.n))
        return self.rng.uniform(self.space.low, self.space.high).astype(np.float32)

    def __call__(self) -> np.ndarray | int:
        if self.policy == "random":
            return self._uniform()
        if self.left <= 0:
            self.left = int(self.rng.geometric(1 / self.mean_run))
            if isinstance(self.space, gym.spaces.Box) and self.space.shape == (2,):  # a direction of random length
                angle = self.rng.uniform(0, 2 * np.pi)
                self.heading = np.array([np.cos(angle), np.sin(angle)], np.float32) * self.rng.uniform(0.6, 1.0) * self.space.high
            else:
                self.heading = self._uniform()
        self.left -= 1
        if isinstance(self.space, gym.spaces.Discrete):
            return self.heading if self.rng.random() > self.noise else self._uniform()
        span = (self.space.high - self.space.low) / 2
        return np.clip(self.heading + self.rng.normal(0, self.noise, self.space.shape) * span, self.space.low, self.space.high).astype(np.float32)


def encode_action(space: gym.Space, action: Any) -> np.ndarray:
    """The stored action: a Box action as floats, a Discrete one one-hot."""
    if isinstance(space, gym.spaces.Discrete):
        return np.eye(space.n, dtype=np.float32)[int(action)]
    return np.asarray(action, np.float32).reshape(-1)


def _state(info: dict, obs: Any) -> np.ndarray | None:
    if "state" in info:
        return np.asarray(info["state"], np.float32).reshape(-1)
    obs = np.asarray(obs)
    return obs.astype(np.float32).reshape(-1) if obs.ndim == 1 else None


def _frame(env: gym.Env, obs: Any) -> np.ndarray:
    obs = np.asarray(obs)
    try:
        frame = obs if obs.ndim == 3 and obs.dtype == np.uint8 and obs.shape[-1] == 3 else env.render()
    except gym.error.Error as exc:
        raise ConfigError(f"the environment cannot render frames: {exc}") from exc
    if frame is None or np.asarray(frame).ndim != 3:
        raise ConfigError("the environment gives no RGB frames: create it with render_mode='rgb_array'")
    return np.asarray(frame, np.uint8)


def episode(env: gym.Env, length: int, policy: str, rng: np.random.Generator, seed: int) -> dict[str, Any]:
    """One exploratory episode of at most ``length`` frames (fewer if the environment ends it)."""
    sampler = ActionSampler(env.action_space, policy, rng)
    obs, info = env.reset(seed=seed)
    frames, actions, states, rooms, forbidden = (
        [_frame(env, obs)],
        [],
        [_state(info, obs)],
        [info.get("room")],
        [bool(info.get("in_forbidden", False))],
    )
    for _ in range(length - 1):
        action = sampler()
        obs, _reward, terminated, truncated, info = env.step(action)
        actions.append(encode_action(env.action_space, action))
        frames.append(_frame(env, obs))
        states.append(_state(info, obs))
        rooms.append(info.get("room"))
        forbidden.append(bool(info.get("in_forbidden", False)))
        if terminated or truncated:
            break
    out: dict[str, Any] = {"frames": np.stack(frames), "actions": np.stack(actions) if actions else None, "policy": policy}
    if all(s is not None for s in states):
        out["states"] = np.stack(states)
    if all(r is not None for r in rooms):
        out["room_changes"] = int(sum(a != b for a, b in itertools.pairwise(rooms)))
        out["rooms"] = sorted({int(r) for r in rooms})
    out["forbidden_frames"] = int(sum(forbidden))
    return out


class Tally:
    """Counts for the summary, filled while episodes stream into the writer."""

    def __init__(self) -> None:
        self.episodes = self.frames = self.crossing_episodes = self.crossings = self.forbidden = 0
        self.has_rooms = False

    def add(self, ep: dict[str, Any]) -> None:
        self.episodes += 1
        self.frames += len(ep["frames"])
        if "room_changes" in ep:
            self.has_rooms = True
            self.crossings += ep["room_changes"]
            self.crossing_episodes += ep["room_changes"] > 0
        self.forbidden += ep["forbidden_frames"]


def collect(
    env_name: str,
    out_dir: Path,
    episodes: int = 1000,
    val_episodes: int = 100,
    length: int = 32,
    policy: str = "mixed",
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    frame_format: str = "png",
    episodes_per_shard: int = 100,
    progress: bool = True,
) -> tuple[dict, dict[str, Tally], float]:
    """Collect and write ``episodes`` training and ``val_episodes`` validation episodes; returns the manifest, the
    per-split tallies and the seconds taken."""
    from jepa_platform.world_model.envs import make_env

    if policy not in POLICIES:
        raise ConfigError(f"--policy {policy!r} is not one of {', '.join(POLICIES)}")
    if episodes < 1 or val_episodes < 0 or length < 2:
        raise ConfigError("--episodes >= 1, --val-episodes >= 0 and --length >= 2 are required")
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST).exists():
        raise DataError(f"{out_dir} already holds a dataset: choose another OUT_DIR (collected data is never overwritten)")
    env = make_env(env_name, **(env_kwargs or {}))
    tallies = {"train": Tally(), "val": Tally()}
    start = time.perf_counter()
    bar = _progress(episodes + val_episodes, progress)

    def stream(split: str, count: int, offset: int) -> Iterator[dict]:
        for i in range(count):
            rng = np.random.default_rng([seed, offset, i])
            chosen = policy if policy != "mixed" else ("noisy_directional" if i % 2 == 0 else "random")
            ep = episode(env, length, chosen, rng, seed=int(rng.integers(2**31)))
            tallies[split].add(ep)
            bar.update(1)
            yield {k: v for k, v in ep.items() if k != "forbidden_frames"}

    splits = {"train": stream("train", episodes, 0), **({"val": stream("val", val_episodes, 1)} if val_episodes else {})}
    # the manifest records how to make the same environment again (jepa plan reads it)
    record = {"env": env_name, "env_kwargs": env_kwargs or {}, "policy": policy, "seed": seed, "length": length}
    try:
        manifest = write_episodes(out_dir, splits, episodes_per_shard, frame_format, extra={"collection": record})
    finally:
        bar.close()
        env.close()
    return manifest, tallies, time.perf_counter() - start


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="episode", disable=not enabled, desc="collect")


def summary(out_dir: Path, manifest: dict, tallies: dict[str, Tally], seconds: float) -> str:
    lines = [f"wrote {out_dir} in {seconds:.1f}s"]
    for split, tally in tallies.items():
        entry = manifest["splits"].get(split)
        if not entry or not tally.episodes:
            continue
        line = f"  {split:>5}: {tally.episodes} episodes, {tally.frames} frames in {entry['num_shards']} shards ({entry['bytes'] / 2**20:.1f} MiB)"
        if tally.has_rooms:
            line += f"; {tally.crossing_episodes} episodes cross a door ({tally.crossings} crossings)"
        lines.append(line)
    lines.append(f"train a world model on it: jepa train experiment=two_rooms data.urls={out_dir}")
    return "\n".join(lines)


def _parse_env_args(pairs: list[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--env-arg {pair!r}: write KEY=VALUE (VALUE in JSON or plain text)")
        key, value = pair.split("=", 1)
        kwargs[key] = parse_value(value)
    return kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("env", help="a registered environment (two_rooms; jepa list) or any gymnasium id")
    parser.add_argument("out_dir", type=Path, help="new directory for the shards and manifest.json")
    parser.add_argument("--episodes", type=int, default=1000, help="training episodes (default 1000)")
    parser.add_argument("--val-episodes", type=int, default=100, help="validation episodes (default 100)")
    parser.add_argument("--length", type=int, default=32, help="frames per episode (default 32)")
    parser.add_argument("--policy", default="mixed", choices=POLICIES, help="exploration policy (default mixed: half of each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes (default 0)")
    parser.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE", help="environment parameter (repeatable), e.g. door_width=0.3")
    parser.add_argument("--format", dest="frame_format", default="png", choices=("png", "npy"), help="frame encoding (default png)")
    parser.add_argument("--episodes-per-shard", type=int, default=100, help="episodes per shard (default 100)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    manifest, tallies, seconds = collect(
        args.env,
        args.out_dir,
        episodes=args.episodes,
        val_episodes=args.val_episodes,
        length=args.length,
        policy=args.policy,
        seed=args.seed,
        env_kwargs=_parse_env_args(args.env_arg),
        frame_format=args.frame_format,
        episodes_per_shard=args.episodes_per_shard,
        progress=not args.no_progress,
    )
    print(summary(args.out_dir, manifest, tallies, seconds))
    return 0
