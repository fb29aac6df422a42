"""A third-party plugin package, installed the way a user installs one, works from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PLUGIN_DIR


@pytest.fixture
def site(request: pytest.FixtureRequest) -> Path:
    """The example plugin, pip-installed with ``--target`` once per session (conftest.py), as a user installs one."""
    return request.config.stash[PLUGIN_DIR]


def _jepa(*args: str, pythonpath: list[Path], cwd: Path, data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), "JEPA_DATA_DIR": str(data), "JEPA_RUNS_DIR": str(cwd / "runs")}
    return subprocess.run([sys.executable, "-m", "jepa_platform.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_installed_plugin_is_listed_and_trains(site: Path, tmp_path: Path, data_root: Path):
    listing = _jepa("list", pythonpath=[site], cwd=tmp_path, data=data_root)
    assert listing.returncode == 0, listing.stderr
    assert "simsiam" in listing.stdout and "[plugin: jepa-plugin-example]" in listing.stdout
    assert "small_convnet" in listing.stdout

    run = _jepa(
        "train", "objective=simsiam", "encoder=small_convnet", "debug=fast", "trainer.limit_train_batches=4", "objective.predictor_hidden_dim=32",
        pythonpath=[site], cwd=tmp_path, data=data_root,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "final: val/probe_acc=" in run.stdout and "train/energy=" in run.stdout


def test_without_the_plugin_its_name_is_a_clear_error(tmp_path: Path, data_root: Path):
    run = _jepa("train", "objective=simsiam", "debug=fast", pythonpath=[], cwd=tmp_path, data=data_root)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: unknown objective 'simsiam'")


def test_a_broken_plugin_warns_and_the_rest_still_work(site: Path, tmp_path: Path, data_root: Path):
    broken = tmp_path / "broken"
    dist = broken / "brokenplug-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[jepa_platform.objectives]\nbroken = brokenplug_missing:Objective\n")
    listing = _jepa("list", pythonpath=[broken, site], cwd=tmp_path, data=data_root)
    assert listing.returncode == 0
    assert "skipping objective plugin 'broken' from brokenplug" in listing.stderr
    assert "simsiam" in listing.stdout and "vicreg" in listing.stdout


def test_a_plugin_without_its_config_is_a_one_line_error(tmp_path: Path, data_root: Path):
    """A plugin's settings live in its package's conf/<group>/<name>.yaml; one that ships none says so and what to add."""
    plug = tmp_path / "noconf"
    (plug / "noconfplug").mkdir(parents=True)
    (plug / "noconfplug" / "__init__.py").write_text("")
    dist = plug / "noconfplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: noconfplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[jepa_platform.objectives]\nnoconf = noconfplug:Objective\n")
    run = _jepa("train", "objective=noconf", "debug=fast", pythonpath=[plug], cwd=tmp_path, data=data_root)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "error: objective 'noconf' (plugin: noconfplug) ships no config: add conf/objective/noconf.yaml to its package (docs/adding-an-objective.md)"
    )
