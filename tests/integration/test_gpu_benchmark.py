"""``benchmarks/gpu.py`` runs every row of its table, on the CPU with ``--quick``, so that the day a GPU is lent the
script is known to work; it must not import MLflow (the GPU machine has none)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = """
import sys, runpy
sys.argv = ["benchmarks.gpu", "--device", "cpu", "--quick", "--workers", "1", "--data-dir", sys.argv[1], "--out", sys.argv[2]]
runpy.run_module("benchmarks.gpu", run_name="__main__")
print("MLFLOW", sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")))
"""


@pytest.mark.slow  # about 2 minutes: ResNet-50 and ViT-B/16 steps on the CPU
def test_gpu_script_prints_every_row_and_imports_no_mlflow(tmp_path: Path, data_root: Path):
    out = tmp_path / "gpu_table.txt"
    done = subprocess.run([sys.executable, "-c", CHECK, str(data_root), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    for row in ("demo end to end", "demo loader only", "demo model step only", "resnet50 vicreg MFU", "vit_b16 ema_jepa MFU", "planner gradient"):
        assert row in table, table
    assert "MLFLOW []" in done.stdout, done.stdout[-500:]
