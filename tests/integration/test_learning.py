"""Does training learn? The `make demo` recipe must beat the same encoder randomly initialised by 15 points of
linear-probe accuracy, as the foundation issue requires (slow: about seven minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jepa_platform.eval import cli as eval_cli
from jepa_platform.train import run_train


@pytest.mark.slow
def test_vicreg_beats_random_init(make_cfg, tmp_path: Path):
    cfg = make_cfg("experiment=demo", "logger=none", debug=False, run_name="learn")
    run_train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert eval_cli.main([str(run_dir), "--no-mlflow"]) == 0
    results = json.loads((run_dir / "eval.json").read_text())
    gain = results["eval/linear_probe_acc"] - results["eval/random_init/linear_probe_acc"]
    assert gain >= 0.15, results
