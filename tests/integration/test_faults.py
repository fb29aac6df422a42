"""A short run of the fault-injection harness, as a user runs it: one trial of one epoch, kill -9 once, resume, compare.

The epoch boundary is covered by tests/integration/test_data_distributed.py (mid-epoch and end-of-epoch resume)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 90 s; exact resume after a stop is in the default run (test_two_processes.py, SIGTERM)
def test_killed_and_resumed_run_matches_the_uninterrupted_one(data_root: Path):
    # trial seed 0 waits for a checkpoint file to be half-written before its kill, the hardest moment
    cmd = [sys.executable, "-m", "benchmarks.faults", "--trials", "1", "--kills", "1", "--epochs", "1", "--data-dir", str(data_root)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "matched 1/1" in result.stdout and "one value per step" in result.stdout, result.stdout
