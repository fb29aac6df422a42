"""Checks that every objective must pass, importable by plugin authors' own tests.

:func:`ddp_gradient_check` runs one training step of each named objective under DistributedDataParallel on
``world_size`` CPU processes (gloo, loopback) and compares the gradients with one process stepping on the
concatenated batch. The encoder is timm's ``test_convnext`` and the projector uses LayerNorm: BatchNorm's per-rank
statistics differ from the global batch's by design (``trainer.sync_batchnorm`` fixes that on GPU), whereas this
check is about the loss terms' gathering. It runs in float64 so that the comparison measures the method, not
float32 rounding (Barlow Twins' gradients reach 1e3 on a 16-sample batch, where float32 agrees to ~1e-6 relative).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback
from torch import nn

from jepa_platform.objectives.barlow import BarlowTwins

#: overrides that give every objective a BatchNorm-free encoder and projector, small enough for CPU
DDP_CHECK_OVERRIDES = ("encoder=tiny", "encoder.name=test_convnext", "trainer=cpu")


def example_batch(
    batch_size: int, num_views: int = 2, image_size: int = 32, num_classes: int = 10, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """A deterministic training batch in the format of the image DataModules."""
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(batch_size, 3, image_size, image_size, generator=g).to(dtype) for _ in range(num_views)]
    return {"views": views, "label": torch.randint(0, num_classes, (batch_size,), generator=g)}


def example_clip_batch(
    batch_size: int, clip_length: int = 5, image_size: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """A deterministic clip batch with 2-D actions and states, in the format of the sequence DataModules."""
    g = torch.Generator().manual_seed(seed)
    return {
        "frames": torch.randn(batch_size, clip_length, 3, image_size, image_size, generator=g).to(dtype),
        "actions": (torch.rand(batch_size, clip_length - 1, 2, generator=g) * 2 - 1).to(dtype),
        "states": torch.rand(batch_size, clip_length, 2, generator=g).to(dtype),
    }


def objective_class(overrides: tuple[str, ...] | list[str]) -> type:
    """The class that ``jepa train <overrides>`` would build as its objective."""
    from hydra.utils import get_object

    from jepa_platform.config import compose_config

    return get_object(compose_config(list(overrides)).objective._target_)


def encoder_overrides(name: str) -> list[str]:
    """Overrides that give objective ``name`` a small encoder and data it accepts: ``debug=fast_vit`` (a test ViT) for
    objectives that need patch tokens (masked JEPAs), ``debug=fast_wm`` (two-rooms clips with actions) for world
    models, else the tiny ResNet of ``debug=fast``."""
    cls = objective_class((f"objective={name}",))
    if getattr(cls, "needs_token_encoder", False):
        return ["debug=fast_vit"]
    if getattr(cls, "needs_actions", False):
        return ["debug=fast_wm"]
    return ["debug=fast"]


def build_objective(overrides: tuple[str, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Instantiate the objective of ``jepa train <overrides>`` (plugins included), shrunk for CPU, with the same
    weights every call: a 64-64 projector with LayerNorm where the objective has those arguments, and timm's test
    ViT for objectives that need patch tokens."""
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from jepa_platform.config import compose_config

    base = list(DDP_CHECK_OVERRIDES)
    cls = objective_class(overrides)
    if getattr(cls, "needs_token_encoder", False):
        base = ["encoder=vit_test", "trainer=cpu"]
    elif getattr(cls, "needs_actions", False):
        base = ["debug=fast_wm"]
    cfg = compose_config([*base, *overrides])
    with open_dict(cfg):
        if "projector_norm" in cfg.objective:
            cfg.objective.projector_norm = "layer"
        if "projector_dims" in cfg.objective:
            cfg.objective.projector_dims = [64, 64]
    torch.manual_seed(seed)
    return instantiate(cfg.objective, _convert_="all").to(dtype)


def objective_batch(model: nn.Module, batch_size: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """:func:`example_batch` passed through the objective's training collate (as the DataLoader workers would), so
    that objectives that sample masks per batch get them, drawn from ``seed``."""
    from torch.utils.data import default_collate

    if getattr(model, "needs_actions", False):
        return example_clip_batch(batch_size, seed=seed, dtype=dtype)
    batch = example_batch(batch_size, seed=seed, dtype=dtype)
    collate = model.train_collate(default_collate) if hasattr(model, "train_collate") else default_collate
    if collate is default_collate:
        return batch
    samples = [{"views": [v[i] for v in batch["views"]], "label": batch["label"][i]} for i in range(batch_size)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return collate(samples)


class _Step(nn.Module):
    """Routes DDP's forward to the objective's ``training_step``, as Lightning's DDP wrapper does."""

    def __init__(self, objective: nn.Module) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.objective.training_step(batch, 0)


def _gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of every tensor in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, dict):
        return {k: _slice_batch(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_slice_batch(v, start, stop) for v in batch]
    return batch


def _worker(rank: int, world_size: int, port: int, cases: dict[str, list[str]], per_rank: int, out_dir: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    references, batches = {}, {}
    for name, overrides in cases.items():  # single process on the concatenated batch, before any process group exists
        model = build_objective(tuple(overrides), dtype=torch.float64)
        batches[name] = objective_batch(model, per_rank * world_size, dtype=torch.float64)
        model.training_step(batches[name], 0).backward()
        references[name] = _gradients(model)

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    results = {}
    try:
        for name, overrides in cases.items():
            local = _slice_batch(batches[name], rank * per_rank, (rank + 1) * per_rank)
            ddp = nn.parallel.DistributedDataParallel(_Step(build_objective(tuple(overrides), dtype=torch.float64)))
            ddp(local).backward()
            grads = {k.removeprefix("objective."): v for k, v in _gradients(ddp.module).items()}
            ref = references[name]
            results[name] = {
                "max_abs_diff": max(float((grads[k] - ref[k]).abs().max()) for k in ref) if set(grads) == set(ref) else float("inf"),
                "max_abs_grad": max(float(g.abs().max()) for g in ref.values()),
                "params_with_grad": len(ref),
                "same_params": set(grads) == set(ref),
            }
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_gradient_check(cases: list[str] | dict[str, list[str]], world_size: int = 2, per_rank: int = 8) -> dict[str, dict[str, Any]]:
    """Per case (and rank): the largest gradient difference between one DDP step and one single-process step.

    ``cases`` are objective names, or ``{label: [overrides of jepa train]}``. Returns
    ``{"<label>@rank<r>": {"max_abs_diff", "max_abs_grad", "params_with_grad", "same_params"}}``.
    """
    if not isinstance(cases, dict):
        cases = {name: [f"objective={name}"] for name in cases}
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(world_size, _free_port(), cases, per_rank, out), nprocs=world_size, start_method="spawn")
        results = {}
        for r in range(world_size):
            for name, values in json.loads(Path(out, f"rank{r}.json").read_text()).items():
                results[f"{name}@rank{r}"] = values
    return results


class UngatheredBarlowTwins(BarlowTwins):
    """Barlow Twins with the cross-correlation computed per rank: the bug that :func:`ddp_gradient_check` catches.

    Standardising and correlating each rank's half-batch gives a different loss than the global batch, so its DDP
    gradients differ from single-process ones. Used as the negative control of the DDP test; never train with it.
    """

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x


def moving_square_episode(index: int, length: int = 24, size: int = 16) -> dict:
    """An episode whose frame ``t`` shows a square at the position the actions lead to; pixel (0, 0) holds ``t``."""
    rng = np.random.default_rng(index)
    actions = rng.integers(-1, 2, size=(length, 2)).astype(np.float32)
    pos = np.clip(np.cumsum(np.vstack([[size // 2, size // 2], actions[:-1]]), axis=0), 2, size - 3).astype(int)
    frames = np.zeros((length, size, size, 3), np.uint8)
    for t, (y, x) in enumerate(pos):
        frames[t, y - 2 : y + 2, x - 2 : x + 2] = 255
        frames[t, 0, 0] = t
    return {"frames": frames, "actions": actions, "states": pos.astype(np.float32), "episode_id": index}


def _epoch_keys_worker(rank: int, world_size: int, port: int, urls: str, kwargs: dict[str, Any], epochs: int, out_dir: str) -> None:
    from data_modules import ImageDataModule

    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        dm = ImageDataModule(urls, **kwargs)
        loader = dm.train_dataloader()  # one loader, persistent workers, iterated once per epoch as Lightning does
        keys = [[k for batch in loader for k in batch["__key__"]] for _ in range(epochs)]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"keys": keys, "batches": len(loader)}))
    finally:
        dist.destroy_process_group()


def epoch_keys_by_rank(urls: str, world_size: int = 2, epochs: int = 2, **kwargs: Any) -> list[dict[str, Any]]:
    """Sample keys each rank of a ``world_size``-process gloo group reads per epoch from an ImageDataModule.

    Returns per rank ``{"keys": [[epoch 0 keys], [epoch 1 keys], ...], "batches": len(loader)}``.
    """
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_epoch_keys_worker, args=(world_size, _free_port(), urls, kwargs, epochs, out), nprocs=world_size, start_method="spawn")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world_size)]


def write_tar(path: Path, samples: list[dict[str, Any]]) -> None:
    """A shard written with plain ``tarfile`` (not the project's writer): ``{"__key__": k, "<field>": bytes, ...}``."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for field, data in sample.items():
                if field == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{field}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def environment(env: dict[str, str] | None) -> Iterator[None]:
    """Set the variables of ``env`` for the duration of the block, then restore them as they were."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_jepa(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``jepa <args>`` in this process, as the command line would run it, without an interpreter's start-up (seconds
    of imports per call in a test suite): environment variables from ``env`` for the call, the exit status, and what
    it printed. Commands that must be a process of their own (signals, multi-process launches) need a subprocess."""
    from hydra.core.global_hydra import GlobalHydra

    from jepa_platform import cli
    from jepa_platform.launch import run_stamp

    out, err = io.StringIO(), io.StringIO()
    try:
        GlobalHydra.instance().clear()
        run_stamp.cache_clear()
        with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
        run_stamp.cache_clear()
    return subprocess.CompletedProcess(["jepa", *args], code, out.getvalue(), err.getvalue())


class OracleWorldModel(nn.Module):
    """A world model whose embedding *is* the agent's position (read from the frame's red pixels) and whose
    predictor moves it by ``speed x action`` inside the unit square, ignoring walls: planner contract tests check
    the search itself on it, independently of learning (plugin planners too)."""

    def __init__(self, speed: float = 0.05, image_size: int = 64) -> None:
        super().__init__()
        self.speed, self.image_size = speed, image_size
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Centroid of the agent's pixels, in [0, 1] coordinates, from frames scaled to [0, 1]."""
        red = (frames[:, 0] - frames[:, 1:].mean(dim=1) - 0.25).clamp_min(0)  # (B, H, W): the agent is red, nothing else is
        weights = red / red.sum(dim=(1, 2), keepdim=True).clamp_min(1e-9)
        c = (torch.arange(frames.shape[-1], device=frames.device, dtype=frames.dtype) + 0.5) / frames.shape[-1]
        return torch.stack([(weights.sum(dim=1) * c).sum(dim=1), (weights.sum(dim=2) * c).sum(dim=1)], dim=1) + 0 * self.anchor

    def predict(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        steps = torch.cumsum(actions.clamp(-1, 1) * self.speed, dim=1)
        return (z[:, None] + steps).clamp(0, 1)

    def decode_state(self, z: torch.Tensor) -> torch.Tensor:
        return z


class OracleHierarchicalWorldModel(OracleWorldModel):
    """:class:`OracleWorldModel` with a level 2 that is the position too: a macro-action ``m`` in ``[-1, 1]^2`` moves it
    by ``m x speed x stride`` (walls ignored). Hierarchical-planner tests check the two-level search on it."""

    def __init__(self, speed: float = 0.05, image_size: int = 64, stride: int = 4) -> None:
        super().__init__(speed, image_size)
        from types import SimpleNamespace

        self.hparams = SimpleNamespace(macro_bound=1.0, macro_dim=2, level2_stride=stride)

    def abstract_embedding(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def predict_level2(self, s: torch.Tensor, macros: torch.Tensor) -> torch.Tensor:
        steps = torch.cumsum(macros.clamp(-1, 1) * self.speed * self.hparams.level2_stride, dim=1)
        return (s[:, None] + steps).clamp(0, 1)

    def decode_level2_state(self, s: torch.Tensor) -> torch.Tensor:
        return s


class MlflowServer:
    """A real ``mlflow server`` for tests: SQLite backend and artifacts under ``root``, on 127.0.0.1 at a free port
    (or ``port``), in its own process group so that :meth:`stop` takes its web workers down with it."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = Path(root), port or _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> MlflowServer:
        import shutil
        import sys
        import time
        import urllib.request

        self.root.mkdir(parents=True, exist_ok=True)
        mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        cmd = [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        cmd += ["--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination", str(self.root / "artifacts")]
        log = (self.root / "server.log").open("a")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: see {self.root / 'server.log'}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout:g} s: see {self.root / 'server.log'}")

    def stop(self) -> None:
        """Kill the server and its workers at once (SIGKILL: a crash, not a clean shutdown)."""
        import signal

        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None


class ServerOutage(Callback):
    """Test callback: kills the tracking server (SIGKILL, as a crash) after each optimiser step in ``kill_at`` and
    starts it again, on the same port and store, after each step in ``restart_at``."""

    def __init__(self, root: str, port: int, kill_at: list[int], restart_at: list[int]) -> None:
        self.server = MlflowServer(Path(root), port)
        self.kill_at, self.restart_at = set(kill_at), set(restart_at)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step in self.kill_at:
            kill_server_on(self.server.port)
        elif trainer.global_step in self.restart_at:
            self.server.start()


def kill_server_on(port: int) -> None:
    """SIGKILL the process group of whatever ``mlflow server`` listens on ``port`` (found by its command line)."""
    import signal

    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "server" in cmdline and "--port" in cmdline and str(port) in cmdline and any("mlflow" in c for c in cmdline):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)


def execute_notebook(path: Path, workdir: Path, env: dict[str, str] | None = None, timeout: int = 600) -> list[dict[str, Any]]:
    """Execute a jupytext ``.py`` notebook in a fresh kernel (nbclient) with ``env`` set for the kernel and
    ``workdir`` as its working directory; returns the outputs of its code cells (errors raise)."""
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    with environment(env):  # the kernel inherits this process's environment
        NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
