"""Finding, checking and reading checkpoints: single files (one process, DDP) and sharded directories (FSDP).

A sharded checkpoint is what ``trainer=fsdp`` writes: a directory with one ``torch.distributed.checkpoint`` shard
file per rank plus Lightning's ``meta.pt`` (loops, callbacks, hyper-parameters). Everything here reads both kinds
without a process group, so ``jepa eval`` and ``jepa export`` work on one machine from any run.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from jepa_platform.errors import CheckpointError

#: Lightning's metadata file inside a sharded checkpoint directory
SHARDED_META = "meta.pt"


def is_sharded(path: Path) -> bool:
    return path.is_dir() and (path / SHARDED_META).is_file()


def _is_checkpoint(path: Path) -> bool:
    return path.is_file() or is_sharded(path)


def find_checkpoint(spec: str, runs_dir: Path, output_dir: Path) -> Path:
    """A checkpoint (file or sharded directory) from ``last`` (this run's, else the newest under ``runs_dir``), a run
    directory or a path."""
    if spec == "last":
        own = output_dir / "checkpoints" / "last.ckpt"
        if _is_checkpoint(own):
            return own
        found = sorted((p for p in runs_dir.glob("**/checkpoints/last.ckpt") if _is_checkpoint(p)), key=lambda p: p.stat().st_mtime)
        if not found:
            raise CheckpointError(
                f"ckpt_path=last: no checkpoints/last.ckpt under {runs_dir}: train a run first, or give ckpt_path=<file or run dir>"
            )
        return found[-1]
    path = Path(spec).expanduser()
    if is_sharded(path):
        return path
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if _is_checkpoint(candidate):
                return candidate
        raise CheckpointError(f"ckpt_path={spec}: the directory has no checkpoints/last.ckpt: give a .ckpt file or a run directory")
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={spec} does not exist: give a .ckpt file, a run directory, or ckpt_path=last")
    return path


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file safely (tensors and plain containers only); an unreadable file is a one-line error.
    For a sharded directory: its metadata (``meta.pt``) without the weights."""
    target = path / SHARDED_META if is_sharded(path) else path
    try:
        return torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load {path} safely (weights_only=True): {_first_line(exc)}") from exc


def _sharded_metadata(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    try:
        return FileSystemReader(str(path)).read_metadata()
    except Exception as exc:
        raise CheckpointError(f"cannot read the sharded checkpoint {path}: {_first_line(exc)}: is a rank's shard file missing?") from exc


def _sharded_weights(path: Path, prefix: str = "") -> dict[str, Any]:
    """The metadata entries of the model weights (``state_dict.<prefix>...``) of a sharded checkpoint, by full key."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = _sharded_metadata(path).state_dict_metadata
    return {k: v for k, v in meta.items() if k.startswith("state_dict." + prefix) and isinstance(v, TensorStorageMetadata)}


def state_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the model weights in a checkpoint, without loading them where it can (sharded)."""
    if not is_sharded(path):
        return {k: tuple(v.shape) for k, v in load_checkpoint(path).get("state_dict", {}).items()}
    return {k.removeprefix("state_dict."): tuple(v.size) for k, v in _sharded_weights(path).items()}


def read_checkpoint(path: Path, prefix: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The consolidated model weights of a checkpoint (keys starting with ``prefix``) as full CPU tensors, and the
    rest of the checkpoint (``global_step``, loops, callbacks...), each read once.

    A sharded checkpoint is read shard by shard into full tensors on this process (no process group needed)."""
    meta = load_checkpoint(path)
    if not is_sharded(path):
        state = meta.pop("state_dict", {})
        return {k: v for k, v in state.items() if k.startswith(prefix)}, meta
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    wanted = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in _sharded_weights(path, prefix).items()}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(wanted, storage_reader=FileSystemReader(str(path)), no_dist=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read the sharded checkpoint {path}: {_first_line(exc)}") from exc
    return {k.removeprefix("state_dict."): v for k, v in wanted.items()}, meta


def check_checkpoint_matches(found: dict[str, tuple[int, ...]], model: nn.Module, path: Path) -> None:
    """Fail before training if the checkpoint's weights (names and shapes, see :func:`state_shapes`) do not fit
    the configured model."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if missing or unexpected or reshaped:
        detail = "; ".join(
            f"{len(keys)} {what} (e.g. {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped))
            if keys
        )
        raise CheckpointError(f"{path} does not match this model ({detail}): resume with the objective and encoder config of the run that wrote it")


def trained_objective(objective_cfg: Any, ckpt: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The objective of a run's config with the weights of ``ckpt`` (file or sharded), on CPU, and the rest of the
    checkpoint (``global_step``...)."""
    from jepa_platform.train import build

    model = build(objective_cfg, "objective")
    state, meta = read_checkpoint(ckpt)
    if not any(k.startswith("encoder.") for k in state):
        raise CheckpointError(f"{ckpt} has no encoder weights (state_dict keys 'encoder.*'): give a checkpoint written by jepa train")
    check_checkpoint_matches({k: tuple(v.shape) for k, v in state.items()}, model, ckpt)
    model.load_state_dict(state)
    return model, meta
