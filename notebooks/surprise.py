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
# # Surprise at impossible events: a world model trained on possible clips only
#
# 1. train an action-free world model on the built-in intuitive-physics clips: a ball under gravity bounces, passes
#    behind an occluder and rebounds from a wall (`jepa train experiment=surprise_ac_jepa`);
# 2. score pairs of clips identical up to an impossible event (the ball vanishes, teleports, passes through the wall,
#    floats, changes colour behind the occluder), next to the same model untrained (`jepa surprise`);
# 3. look at surprise over time: the prediction error of each frame's embedding given the frames before it.
#
# Open it as a notebook with `jupytext --to notebook notebooks/surprise.py`, or run it as a script. The default
# sizes take about 20 minutes on a 2-core CPU; `NOTEBOOK_SIZE=tiny` (what the test uses) takes seconds, and a model
# trained for seconds is not expected to tell the impossible from the possible.

# %%
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from IPython.display import Image, display

from jepa_platform.cli import run
from jepa_platform.surprise.figures import pair_figure
from jepa_platform.surprise.pairs import read_pairs

TINY = os.environ.get("NOTEBOOK_SIZE") == "tiny"
WORK = Path(os.environ.get("NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="surprise-"))
RUNS = WORK / "runs"


def jepa(*args: str) -> str:
    """Run a `jepa` command and return what it printed."""
    return run(*args, runs_dir=str(RUNS), data_dir=str(WORK / "data"))


# %% [markdown]
# ## 1. Train on possible clips
# The clips are generated on first use; none of them holds an impossible event. Each prediction sees the embeddings
# of the last 4 frames (a ball's velocity and acceleration are not in one frame).

# %%
train_args = ["train", "experiment=surprise_ac_jepa", "logger=none", "hydra.run.dir=" + str(RUNS / "physics")]
if TINY:
    train_args += ["debug=fast_physics", "encoder.channels=[8,16,32]", "encoder.embed_dim=16", "objective.predictor.hidden=32"]
print(jepa(*train_args)[-400:])
run_dir = RUNS / "physics"

# %% [markdown]
# ## 2. Score the pairs
# Pairwise accuracy: the share of pairs whose impossible clip has the higher peak surprise. Relative surprise:
# (peak impossible - peak possible) / peak possible, averaged. The untrained model is the baseline.

# %%
pairs_per_type = 4 if TINY else 200
print(jepa("surprise", str(run_dir), "--pairs-per-type", str(pairs_per_type), "--no-mlflow"))
result_dir = sorted((run_dir / "surprise").iterdir())[-1]
record = json.loads((result_dir / "surprise.json").read_text())

# %% [markdown]
# ## 3. Surprise over time
# One pair per violation type: the possible clip (top row) and its impossible twin (second row), and the surprise of
# each frame for the trained and the untrained model. The red line is the violation frame: before it, the two clips
# are the same, and so is their surprise.

# %%
pairs = read_pairs(record["setup"]["pairs"], pairs_per_type)
shown = {}
for entry, pair in zip(record["pairs"], pairs.pairs, strict=True):
    shown.setdefault(entry["violation"], (entry, pair))


def curve(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values])


def show(figure) -> None:
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=80)
    display(Image(png.getvalue()))


for violation, (entry, pair) in shown.items():
    curves = {k: (curve(entry[f"{k}/possible"]), curve(entry[f"{k}/impossible"])) for k in record["results"]}
    title = f"{violation} ({entry['variant']}): violation at frame {entry['violation_frame']}"
    show(pair_figure(pair.possible.numpy(), pair.impossible.numpy(), curves, entry["violation_frame"], title))

# %% [markdown]
# ## 4. The table
# Accuracy per violation type, for the trained model and its random initialisation.

# %%
for model, figures in record["results"].items():
    print(model, {k: round(100 * v["pairwise_acc"], 1) for k, v in figures.items()})
