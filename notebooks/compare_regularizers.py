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
# # Which regularizer keeps the most information at the same budget?
#
# A sweep trains every objective with the same encoder, data, optimiser, epochs and seeds, and groups its runs under
# one MLflow parent run:
#
# ```
# jepa train -m experiment=compare objective=vicreg,barlow,simclr,lejepa seed=0,1
# ```
#
# This notebook reads that sweep back from MLflow: the table of `jepa compare` (mean ± std over seeds), the curves
# with a band over seeds, each objective's final singular-value spectrum and correlation matrix (the PNGs every run
# logs), and at the end every run of the experiment, sweep or not, one row each. Open it with
# `jupytext --to notebook notebooks/compare_regularizers.py` (or run it as a script). It reads the newest sweep of
# the store in `$MLFLOW_TRACKING_URI` (default: `runs/mlflow.db` of `jepa train`); `JEPA_SWEEP=<parent run id>`
# picks another one.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from IPython.display import Markdown, display
from PIL import Image

from jepa_platform.tracking import figures
from jepa_platform.tracking.compare import COLUMNS, compare, curve_series, default_tracking_uri

uri = default_tracking_uri()
client = mlflow.MlflowClient(uri)
sweep = os.environ.get("JEPA_SWEEP")
if not sweep:
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`jepa.sweep` = 'parent'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise SystemExit(f"no sweep in {uri}: run jepa train -m ... first (see the top of this notebook)")
    sweep = parents[0].info.run_id
parent = client.get_run(sweep)
print(f"sweep {sweep} in {uri}\noverrides: {parent.data.params.get('sweep.overrides')}")

# %% [markdown]
# ## The table
# Final values (the last logged) per objective, mean ± std over seeds, best probe accuracy first. `uniformity` and
# `alignment` are Wang & Isola's (lower is better for both; read alignment next to uniformity, since a collapsed
# encoder aligns perfectly).

# %%
comparison = compare(client, sweep=sweep)
display(Markdown(comparison.table("markdown")))

# %% [markdown]
# ## Curves: one line per objective, a band of one standard deviation over seeds

# %%
metrics = ["val/probe_acc", "val/knn_acc", "train/energy", "val/repr/rank"]
fig, axes = plt.subplots(2, len(metrics), figsize=(4 * len(metrics), 6), layout="constrained")
for column, key in enumerate(metrics):
    by_step, by_time = curve_series(client, comparison, key)
    for row, (series, xlabel) in enumerate(((by_step, "step"), (by_time, "wall time (s)"))):
        figures.draw_bands(axes[row, column], series)
        axes[row, column].set_xlabel(xlabel)
        axes[row, column].set_title(key, fontsize=9)
axes[0, 0].legend(fontsize=7)
plt.show()

# %% [markdown]
# ## What each representation looks like at the end
# The singular-value spectrum (effective rank marked) and the correlation matrix of the validation representation of
# each objective's first seed: a cliff in the spectrum or bright off-diagonal blocks show (dimensional) collapse.

# %%
download = Path(tempfile.mkdtemp())
first_runs = [row.runs[0] for row in comparison.rows]
fig, axes = plt.subplots(2, len(first_runs), figsize=(3.2 * len(first_runs), 5.5), layout="constrained", squeeze=False)
for column, record in enumerate(first_runs):
    for row, name in enumerate(("repr_spectrum.png", "repr_correlation.png")):
        ax = axes[row, column]
        ax.axis("off")
        try:
            local = client.download_artifacts(record.run_id, f"plots/final/{name}", str(download / record.run_id))
        except Exception:
            ax.set_title(f"{record.group}: no {name}", fontsize=8)
            continue
        ax.imshow(Image.open(local))
        ax.set_title(record.group, fontsize=8)
plt.show()

# %% [markdown]
# ## Every run of the experiment
# Sweep or not, every objective logs the same metric names, so any runs line up: one row per run (newest first)
# with the final values of the shared metrics.

# %%
runs = client.search_runs([parent.info.experiment_id], order_by=["attributes.start_time DESC"])
rows = []
for run in runs:
    if run.data.tags.get("jepa.sweep") == "parent":  # a sweep's parent run holds no training
        continue
    tags = run.data.tags
    row = {"run": tags.get("mlflow.runName", run.info.run_id[:8]), "objective": tags.get("jepa.objective", "?"), "status": run.info.status}
    row.update({column: run.data.metrics.get(key) for column, key in COLUMNS if key})
    rows.append(row)
display(pd.DataFrame(rows).round(4))
