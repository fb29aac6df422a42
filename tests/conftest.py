"""Shared fixtures: a tiny generated dataset (once per session) and composed configs shrunk for CPU."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from support.data import moving_square_episode

from data_modules.builtin import ensure_shapes_dataset
from data_modules.sequences import write_episodes
from jepa_platform.config import compose_config

# the jepa processes that tests start import test classes (negative controls, outages) named in their configs
_TESTS_DIR = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_TESTS_DIR, os.environ.get("PYTHONPATH")) if p)

TINY = {"num_train": 512, "num_val": 256, "samples_per_shard": 128}
EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "jepa-plugin-example"
PLUGIN_DIR = pytest.StashKey[Path]()


def install_example_plugin(target: Path) -> None:
    """pip-install the example plugin package into ``target`` (not into the venv), as a user would install theirs."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(EXAMPLE_PLUGIN)]
    subprocess.run(cmd, check=True, capture_output=True)


def example_plugin_site() -> Path:
    """The example plugin installed once per version of its sources, in a folder of the venv: pip takes seconds, and
    every test process (pytest-xdist workers too) would otherwise pay them on every run."""
    built = ("build", "__pycache__")  # what pip leaves in the source folder
    files = sorted(p for p in EXAMPLE_PLUGIN.rglob("*") if p.is_file() and not set(built) & set(p.parts) and ".egg-info" not in str(p))
    digest = hashlib.sha256(b"".join(p.relative_to(EXAMPLE_PLUGIN).as_posix().encode() + p.read_bytes() for p in files)).hexdigest()[:16]
    cache = Path(sys.prefix) / "jepa-test-cache"
    cache.mkdir(exist_ok=True)
    target = cache / f"example-plugin-{digest}"
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process installs, the others wait for it
        if not target.is_dir():
            staging = Path(tempfile.mkdtemp(prefix="example-plugin-", dir=cache))
            install_example_plugin(staging)
            staging.rename(target)
    return target


def pytest_configure(config: pytest.Config) -> None:
    """Install the example plugin before collection, so that tests parametrised over the registries include it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one of several test processes: one thread each, not one per core
        import torch

        torch.set_num_threads(1)
    target = example_plugin_site()
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)  # subprocesses
    importlib.invalidate_caches()
    config.stash[PLUGIN_DIR] = target


@pytest.fixture(scope="session", autouse=True)
def migrated_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new SQLite MLflow store starts as a copy of one empty store migrated once per session: MLflow builds a new
    store by running its whole schema migration history (about a second each), which in-process tests would pay for
    every run directory they create. Stores that cannot be created (a path under a file, a read-only directory)
    still reach MLflow's own code, and so do the stores of subprocesses and of ``mlflow server``."""
    from mlflow.store.tracking import sqlalchemy_store

    template = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    sqlalchemy_store.SqlAlchemyStore(f"sqlite:///{template}", str(template.parent / "artifacts"))
    original = sqlalchemy_store.SqlAlchemyStore.__init__

    def init(self, db_uri: str, default_artifact_root: str, *args, **kwargs) -> None:
        path = Path(db_uri.removeprefix("sqlite:///")) if db_uri.startswith("sqlite:///") else None
        if path is not None and not path.exists():
            with contextlib.suppress(OSError):  # MLflow itself then says why the store cannot be created
                path.parent.mkdir(parents=True, exist_ok=True)
                if os.access(path.parent, os.W_OK):
                    shutil.copyfile(template, path)
        original(self, db_uri, default_artifact_root, *args, **kwargs)

    sqlalchemy_store.SqlAlchemyStore.__init__ = init
    yield template
    sqlalchemy_store.SqlAlchemyStore.__init__ = original


@pytest.fixture
def migrated_store(migrated_mlflow_store: Path) -> Callable[[Path], None]:
    """Put a migrated empty MLflow store at ``<runs>/mlflow.db`` for a ``jepa train`` subprocess (which the patch above
    does not reach): the subprocess then skips the seconds of schema migrations a new store costs."""

    def put(runs: Path) -> None:
        runs.mkdir(parents=True, exist_ok=True)
        if not (runs / "mlflow.db").exists():
            shutil.copyfile(migrated_mlflow_store, runs / "mlflow.db")

    return put


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding the tiny shapes dataset that `debug=fast` uses."""
    root = tmp_path_factory.mktemp("data")
    ensure_shapes_dataset(root, workers=1, **TINY)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(data_root: Path) -> Path:
    return ensure_shapes_dataset(data_root, workers=1, **TINY)


@pytest.fixture(scope="session")
def tiny_sequences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 training and 4 validation episodes of 24 frames, 4 episodes per shard, frames as PNG images."""
    out = tmp_path_factory.mktemp("sequences") / "moving-square"
    splits = {"train": (moving_square_episode(i) for i in range(12)), "val": (moving_square_episode(100 + i) for i in range(4))}
    write_episodes(out, splits, episodes_per_shard=4, frame_format="png")
    return out


@pytest.fixture
def make_cfg(tmp_path: Path, data_root: Path):
    """Compose `jepa train debug=fast` (or ``debug=<name>``) with runs and data under temporary directories."""

    def make(*overrides: str, run_name: str = "run", debug: bool | str = True):
        runs = tmp_path / "runs"
        base = [f"debug={'fast' if debug is True else debug}"] if debug else ["encoder=resnet_test", "trainer=cpu"]
        return compose_config([*base, f"paths.runs_dir={runs}", f"paths.data_dir={data_root}", *overrides], output_dir=str(runs / run_name))

    yield make
    GlobalHydra.instance().clear()
