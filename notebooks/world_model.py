# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A JEPA world model that plans: collect, train, plan, look
#
# 1. collect exploratory trajectories in the two-rooms environment (`jepa data collect`),
# 2. train an action-conditioned JEPA on them (`jepa train experiment=two_rooms`),
# 3. plan to held-out goals with CEM, iCEM, MPPI and gradient descent under MPC, next to random and greedy baselines
#    (`jepa plan`),
# 4. look at the plans and at the energy landscape around a goal: the cost the planners descend.
#
# Open it as a notebook with `jupytext --to notebook notebooks/world_model.py`, or run it as a script. The default
# sizes take about 15 minutes on a 2-core CPU; `NOTEBOOK_SIZE=tiny` (what the test uses) takes seconds and plans
# badly, as a model trained for seconds should.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from data_modules.collect import collect
from jepa_platform.checkpoints import find_checkpoint, load_run_config, trained_objective
from jepa_platform.cli import run
from jepa_platform.config import build
from jepa_platform.world_model.envs import make_env

TINY = os.environ.get("NOTEBOOK_SIZE") == "tiny"
WORK = Path(os.environ.get("NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="world-model-"))
DATA, RUNS = WORK / "two_rooms", WORK / "runs"
SIZE = 32 if TINY else 64
ENV = {"image_size": SIZE}


def jepa(*args: str) -> str:
    """Run a `jepa` command and return what it printed."""
    return run(*args, runs_dir=str(RUNS), data_dir=str(WORK / "cache"))


# %% [markdown]
# ## 1. Collect
# Random and noisy-directional policies, so that some episodes cross the door. The true state goes into the shards
# for the state head (guardrails) and for evaluation only.

# %%
manifest, tallies, seconds = collect(
    "two_rooms",
    DATA,
    episodes=40 if TINY else 2000,
    val_episodes=8 if TINY else 200,
    length=12 if TINY else 32,
    env_kwargs=ENV,
    episodes_per_shard=20 if TINY else 250,
    progress=False,
)
print(f"{tallies['train'].episodes} episodes, {tallies['train'].crossing_episodes} cross the door, {seconds:.1f}s")
env = make_env("two_rooms", **ENV)
starts = [np.array(s, np.float32) for s in ([0.2, 0.2], [0.45, 0.5], [0.8, 0.7])]
Image.fromarray(np.concatenate([env.render_state(s) for s in starts], axis=1)).resize((3 * 128, 128), Image.NEAREST)

# %% [markdown]
# ## 2. Train
# The same command as `jepa train experiment=two_rooms`, on the directory collected above.

# %%
train_args = [
    "train",
    "experiment=two_rooms",
    "data=sequences",
    f"data.urls={DATA}",
    f"data.image_size={SIZE}",
    "data.clip_length=9",
    "data.clips_per_episode=4",
    "data.num_workers=1",
    "logger=none",
    "hydra.run.dir=" + str(RUNS / "world_model"),
]
if TINY:
    train_args += [
        "data.clip_length=5",
        "data.batch_size=16",
        "data.num_workers=0",
        "encoder.channels=[8,16,32]",
        "encoder.embed_dim=32",
        "objective.predictor.hidden=64",
        "trainer.max_epochs=1",
    ]
print(jepa(*train_args)[-600:])
run_dir = RUNS / "world_model"

# %% [markdown]
# ## 3. Plan
# Held-out start/goal pairs, a fixed step budget, every planner under MPC next to the baselines.

# %%
plan_args = ["plan", str(run_dir), "--episodes", "2" if TINY else "20", "--no-mlflow"]
if TINY:
    plan_args += [
        "--planners",
        "cem,mppi",
        "--baselines",
        "random",
        "--max-steps",
        "8",
        "--planner-arg",
        "cem.num_samples=32",
        "--planner-arg",
        "mppi.num_samples=32",
    ]
printed = jepa(*plan_args)
print(printed)

# %% [markdown]
# ## 4. Look at the plans
# Each picture: the rooms, the forbidden region (red; the guardrail keeps plans out of it), the path (blue), the start
# (green) and the goal (gold circle: the success radius).

# %%
plan_dir = sorted((run_dir / "plan").iterdir())[-1]
Image.open(plan_dir / ("cem.png"))

# %% [markdown]
# ## 5. The energy landscape around a goal
# The planners minimise the energy between the predicted embedding and the goal's. Here it is for the agent at every
# free position: low near the goal, and (when the model has learned the walls) higher across the wall than through
# the door.

# %%
cfg = load_run_config(run_dir)
model, _ = trained_objective(cfg.objective, find_checkpoint(str(run_dir), run_dir, run_dir))
transform = build(cfg.data.eval_transform, "data.eval_transform")
goal = np.array([0.8, 0.75], np.float32)
side = 12 if TINY else 40
grid = np.full((side, side), np.nan)
positions = [(i, j, np.array([(j + 0.5) / side, (i + 0.5) / side], np.float32)) for i in range(side) for j in range(side)]
free = [(i, j, p) for i, j, p in positions if env.free(p)]
with torch.no_grad():
    frames = torch.stack([torch.from_numpy(env.render_state(p)).permute(2, 0, 1) for _, _, p in free])
    z = model.encode(transform(frames))
    z_goal = model.encode(transform(torch.from_numpy(env.render_state(goal)).permute(2, 0, 1)[None]))[0]
    energy = (z - z_goal).pow(2).mean(dim=1)
for (i, j, _), e in zip(free, energy.tolist(), strict=True):
    grid[i, j] = e
fig, ax = plt.subplots(figsize=(5, 4))
shown = ax.imshow(grid, extent=(0, 1, 1, 0), cmap="viridis")
ax.plot(*goal, marker="*", color="white", markersize=14)
ax.set_title("energy to the goal (white star)")
fig.colorbar(shown)
fig.savefig(WORK / "energy.png", dpi=80)
Image.open(WORK / "energy.png")
