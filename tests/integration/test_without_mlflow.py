"""``logger=none`` trains, evaluates, exports, plans and scores surprise without ever importing MLflow (clusters and
GPU machines without it), checked in a fresh interpreter's ``sys.modules`` after the commands ran in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
from support.cli import run_jepa
env = {"JEPA_RUNS_DIR": sys.argv[1] + "/runs", "JEPA_DATA_DIR": sys.argv[2]}
codes = {}
def run(name, *args, run_id=None):
    done = run_jepa(list(args), {**env, **({"JEPA_RUN_ID": run_id} if run_id else {})})
    codes[name] = done.returncode
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
runs = sys.argv[1] + "/runs"
run("train", "train", "debug=fast", "logger=none", "final_eval=true", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", run_id="ssl")
run("eval", "eval", runs + "/ssl_vicreg", "--train-samples", "128", "--random-init", "skip")
run("export", "export", runs + "/ssl_vicreg")
run("train_wm", "train", "debug=fast_wm", "objective=ac_jepa", "logger=none", "final_eval=true", run_id="wm")
run("plan", "plan", runs + "/wm_ac_jepa", "--episodes", "1", "--max-steps", "4", "--horizon", "2", "--execute", "2", "--planners", "cem",
    "--planner-arg", "cem.num_samples=16")
run("train_physics", "train", "experiment=surprise_ac_jepa", "debug=fast_physics", "logger=none", "encoder.channels=[8,16,32]",
    "encoder.embed_dim=16", "objective.predictor.hidden=32", "trainer.limit_train_batches=2", run_id="phys")
run("surprise", "surprise", runs + "/phys_ac_jepa", "--pairs-per-type", "1", "--figures", "0")
print(json.dumps({"codes": codes, "mlflow": sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow."))}))
"""


def test_logger_none_imports_no_mlflow_anywhere(tmp_path: Path, data_root: Path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(data_root)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["codes"] == dict.fromkeys(["train", "eval", "export", "train_wm", "plan", "train_physics", "surprise"], 0), done.stderr[-3000:]
    assert found["mlflow"] == [], f"logger=none imported {found['mlflow'][:5]}"
    assert list((tmp_path / "runs" / "wm_ac_jepa").glob("predict/*/predict.json"))  # the world model's final evaluation
