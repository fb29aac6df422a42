# %% [markdown]
# # Compare runs in the MLflow store
#
# Every objective logs the same metric names, so runs line up side by side. Open this file as a notebook with
# jupytext (`jupytext --to notebook compare_runs.py`) or run it as a script: `.venv/bin/python notebooks/compare_runs.py`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow

RUNS_DIR = Path(os.environ.get("JEPA_RUNS_DIR", Path(__file__).resolve().parent.parent / "runs"))
client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{RUNS_DIR}/mlflow.db")
experiment = client.get_experiment_by_name("jepa")
runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"]) if experiment else []

# %% One row per run: the final values of the metrics every objective shares
KEYS = ["val/probe_acc", "val/knn_acc", "eval/linear_probe_acc", "eval/random_init/linear_probe_acc", "emb/rank", "train/energy"]
print(f"{'run':<34}{'objective':<12}" + "".join(f"{k.split('/')[-1][:14]:>16}" for k in KEYS))
for run in runs:
    name = run.data.tags.get("mlflow.runName", run.info.run_id[:8])
    objective = run.data.params.get("objective._target_", "?").rsplit(".", 1)[-1]
    values = "".join(f"{run.data.metrics[k]:>16.4f}" if k in run.data.metrics else f"{'-':>16}" for k in KEYS)
    print(f"{name[:33]:<34}{objective:<12}{values}")

# %% Curves of the newest runs
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for run in runs[:5]:
    label = run.data.tags.get("mlflow.runName", run.info.run_id[:8])
    for ax, key in zip(axes, ["train/loss", "emb/rank", "val/probe_acc"], strict=True):
        history = client.get_metric_history(run.info.run_id, key)
        ax.plot([m.step for m in history], [m.value for m in history], label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
axes[0].legend(fontsize=7)
fig.tight_layout()
out = RUNS_DIR / "compare_runs.png"
if runs:
    fig.savefig(out)
    print(f"saved {out}")
