"""Finding, checking and reading checkpoints: single files (one process, DDP) and sharded directories (FSDP).

A sharded checkpoint is what ``trainer=fsdp`` writes: a directory with one ``torch.distributed.checkpoint`` shard
file per rank plus Lightning's ``meta.pt`` (loops, callbacks, hyper-parameters). Everything here reads both kinds
without a process group, so ``jepa eval`` and ``jepa export`` work on one machine from any run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor, nn

from jepa_platform.errors import CheckpointError

#: Lightning's metadata file inside a sharded checkpoint directory
SHARDED_META = "meta.pt"


def is_sharded(path: Path) -> bool:
    return path.is_dir() and (path / SHARDED_META).is_file()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on local disks: the file is written beside its final name
    (``.<name>.partial``), flushed to disk and renamed, so a kill at any moment leaves the old file or the new one,
    never half of one, and never under the final name. (Lightning's own writer stages in the system temporary
    directory: a copy, not a rename, when that is another filesystem.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(str(path))
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        with partial.open("wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, target)


def checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` of a complete checkpoint (file or sharded directory), read without its weights
    (memory-mapped); ``None`` for anything incomplete or unreadable (a file cut short by a kill, a directory
    without its manifest)."""
    try:
        return int(load_checkpoint(path, mmap=True)["global_step"])
    except Exception:
        return None


def newest_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint with the highest ``global_step`` among ``directory``'s ``*.ckpt`` (ties: the most
    recently written), whichever file it is: ``last.ckpt`` is written after the epoch file, so it can be the older."""
    found = [(step, p.stat().st_mtime, p) for p in directory.glob("*.ckpt") if (step := checkpoint_step(p)) is not None]
    return max(found, key=lambda t: (t[0], t[1]))[2] if found else None


def find_checkpoint(spec: str, runs_dir: Path, output_dir: Path) -> Path:
    """A checkpoint (file or sharded directory) from ``last``, a run directory or a path.

    ``last`` is the newest complete checkpoint of this run (``output_dir``), else of the run under ``runs_dir``
    that wrote a checkpoint most recently; a run directory gives its own newest complete checkpoint."""
    if spec == "last":
        own = newest_checkpoint(output_dir / "checkpoints")
        if own is not None:
            return own
        runs = sorted((p for p in runs_dir.glob("**/checkpoints") if p.is_dir()), key=_latest_write)
        for checkpoints in reversed(runs):
            found = newest_checkpoint(checkpoints)
            if found is not None:
                return found
        raise CheckpointError(f"ckpt_path=last: no complete checkpoint under {runs_dir}: train a run first, or give ckpt_path=<file or run dir>")
    path = Path(spec).expanduser()
    if is_sharded(path):
        return path
    if path.is_dir():
        for candidate in (path / "checkpoints", path):
            found = newest_checkpoint(candidate) if candidate.is_dir() else None
            if found is not None:
                return found
        for candidate in sorted((path / "checkpoints").glob("*.ckpt")) + sorted(path.glob("*.ckpt")):
            load_checkpoint(candidate, mmap=True)  # raises with the reason the candidate is not usable
        raise CheckpointError(f"ckpt_path={spec}: the directory holds no complete checkpoint: give a .ckpt file or a run directory")
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={spec} does not exist: give a .ckpt file, a run directory, or ckpt_path=last")
    return path


def _latest_write(checkpoints: Path) -> float:
    return max((p.stat().st_mtime for p in checkpoints.glob("*.ckpt")), default=0.0)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint file safely (tensors and plain containers only); an unreadable file is a one-line error.
    For a sharded directory: its metadata (``meta.pt``) without the weights."""
    sharded = is_sharded(path)
    if sharded:
        from jepa_platform.untrusted import verify_manifest

        verify_manifest(path)
    try:
        return torch.load(path / SHARDED_META if sharded else path, map_location="cpu", weights_only=True, mmap=mmap and not sharded)
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{path} holds objects other than tensors and plain values, which are not loaded because that could run code: "
                "use a checkpoint written by jepa train"
            ) from exc
        reason = "" if "mmap" in str(exc) else f": {_first_line(exc)}"
        raise CheckpointError(f"cannot load {path}: not a readable checkpoint (truncated, damaged or not written by torch.save){reason}") from exc


def _sharded_metadata(path: Path) -> Any:
    """The DCP metadata of a sharded checkpoint the platform wrote (verified manifest, restricted unpickler)."""
    from jepa_platform.untrusted import read_dcp_metadata

    return read_dcp_metadata(path)


def _sharded_weights(path: Path, prefix: str = "") -> dict[str, Any]:
    """The metadata entries of the model weights (``state_dict.<prefix>...``) of a sharded checkpoint, by full key."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = _sharded_metadata(path).state_dict_metadata
    return {k: v for k, v in meta.items() if k.startswith("state_dict." + prefix) and isinstance(v, TensorStorageMetadata)}


def state_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the model weights in a checkpoint, without loading them where it can (sharded)."""
    if not is_sharded(path):
        return {k: tuple(v.shape) for k, v in load_checkpoint(path, mmap=True).get("state_dict", {}).items()}
    return {k.removeprefix("state_dict."): tuple(v.size) for k, v in _sharded_weights(path).items()}


def read_checkpoint(path: Path, prefix: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The consolidated model weights of a checkpoint (keys starting with ``prefix``) as full CPU tensors, and the
    rest of the checkpoint (``global_step``, loops, callbacks...), each read once.

    A sharded checkpoint is read shard by shard into full tensors on this process (no process group needed)."""
    meta = load_checkpoint(path)
    if not is_sharded(path):
        state = meta.pop("state_dict", {})
        return {k: v for k, v in state.items() if k.startswith(prefix)}, meta
    from jepa_platform.untrusted import dcp_load

    wanted = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in _sharded_weights(path, prefix).items()}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp_load(wanted, path, no_dist=True)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read the sharded checkpoint {path}: {_first_line(exc)}") from exc
    return {k.removeprefix("state_dict."): v for k, v in wanted.items()}, meta


#: where the online probes lived before they moved to callbacks (their weights are ignored in older checkpoints)
MOVED_WEIGHTS = ("probe.", "level_probes.")
#: objective arguments that moved to the evaluation callbacks (ignored in older run configs)
MOVED_ARGUMENTS = ("num_classes", "probe_lr", "knn_k", "knn_temperature", "stats_every_n_steps", "dead_threshold")
#: the run directory's pointer to its MLflow run
RUN_INFO = "mlflow_run.json"


def run_info_for(ckpt: Path) -> dict[str, Any] | None:
    """The MLflow run that wrote ``ckpt`` (from its run directory), if recorded."""
    import json

    path = ckpt.resolve().parent.parent / RUN_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def drop_moved_weights(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the weights of modules that are no longer part of objectives (see ``MOVED_WEIGHTS``)."""
    return {k: v for k, v in state.items() if not k.startswith(MOVED_WEIGHTS)}


def check_checkpoint_matches(found: dict[str, tuple[int, ...]], model: nn.Module, path: Path) -> None:
    """Fail before training if the checkpoint's weights (names and shapes, see :func:`state_shapes`) do not fit
    the configured model."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = drop_moved_weights(found)
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if missing or unexpected or reshaped:
        detail = "; ".join(
            f"{len(keys)} {what} (e.g. {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped))
            if keys
        )
        raise CheckpointError(f"{path} does not match this model ({detail}): resume with the objective and encoder config of the run that wrote it")


#: key of the platform's own record in every checkpoint (see ``SelfSupervisedObjective.on_save_checkpoint``)
RECORD_KEY = "jepa_platform"


def class_path(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_same_objective(path: Path, model: nn.Module) -> dict[str, Any] | None:
    """Fail before training (and before MLflow is touched) if ``path`` was written by another objective than
    ``model``'s, as recorded in the checkpoint or, for older checkpoints, in its run's ``config.yaml``; return that
    run config (plain containers) when there is one."""
    from omegaconf import OmegaConf

    meta = load_checkpoint(path, mmap=True)
    written_by = (meta.get(RECORD_KEY) or {}).get("objective") if isinstance(meta, dict) else None
    run_config = path.resolve().parent.parent / "config.yaml"
    previous = None
    if run_config.is_file():
        try:
            previous = OmegaConf.to_container(OmegaConf.load(run_config), resolve=False)
        except Exception:
            previous = None
    if written_by is None and isinstance(previous, dict):
        written_by = (previous.get("objective") or {}).get("_target_")
    expected = class_path(model)
    if written_by is not None and written_by.rsplit(".", 1)[-1] != expected.rsplit(".", 1)[-1]:
        raise CheckpointError(
            f"{path} was written by objective {written_by}, not {expected}: resume it with the objective of the run that wrote it, "
            "or start a new run without ckpt_path"
        )
    return previous if isinstance(previous, dict) else None


#: the nodes of a run's config that the commands reading a run (eval, export, plan, predict, surprise) instantiate
INSTANTIATED_FROM_RUNS = ("objective", "encoder", "optimizer", "data")


def load_run_config(run_dir: Path) -> Any:
    """A run directory's ``config.yaml``, checked before anything in it is instantiated: the nodes that are
    (:data:`INSTANTIATED_FROM_RUNS`) name only allowlisted classes (:func:`jepa_platform.untrusted.check_targets`);
    a callback or logger of the user's own package is recorded there but never built from the file. An unreadable
    file is a one-line error."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    from jepa_platform.untrusted import check_targets

    path = run_dir / "config.yaml"
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {_first_line(exc)}: give a run directory written by jepa train") from exc
    if isinstance(cfg, DictConfig):
        check_targets(OmegaConf.masked_copy(cfg, [k for k in INSTANTIATED_FROM_RUNS if k in cfg]), str(path))
    objective = cfg.get("objective") if isinstance(cfg, DictConfig) else None
    if isinstance(objective, DictConfig):  # a run written before evaluation moved to callbacks
        with open_dict(objective):
            for key in MOVED_ARGUMENTS:
                objective.pop(key, None)
    return cfg


def assert_finite(state: dict[str, Tensor], what: str) -> None:
    """A checkpoint with NaN or infinite weights is never exported or evaluated as if it had trained."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{what} has non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): the run diverged; use an earlier checkpoint with --ckpt"
        )


def trained_objective(objective_cfg: Any, ckpt: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The objective of a run's config with the weights of ``ckpt`` (file or sharded), on CPU, and the rest of the
    checkpoint (``global_step``...)."""
    from jepa_platform.config import build

    model = build(objective_cfg, "objective")
    state, meta = read_checkpoint(ckpt)
    state = drop_moved_weights(state)
    if not any(k.startswith("encoder.") for k in state):
        raise CheckpointError(f"{ckpt} has no encoder weights (state_dict keys 'encoder.*'): give a checkpoint written by jepa train")
    check_checkpoint_matches({k: tuple(v.shape) for k, v in state.items()}, model, ckpt)
    assert_finite(state, str(ckpt))
    model.load_state_dict(state)
    return model, meta


def resolve_run(run: str, runs_dir: Path) -> Path:
    """A run directory from ``last`` (the run under ``runs_dir`` that wrote a checkpoint most recently) or a path."""
    if run == "last":
        try:
            return find_checkpoint("last", runs_dir, runs_dir / "__none__").parent.parent
        except CheckpointError as exc:
            raise CheckpointError(f"no run with checkpoints under {runs_dir}: train one first (jepa train), or give runs/<run>") from exc
    path = Path(run).expanduser()
    if not (path / "config.yaml").is_file():
        raise CheckpointError(f"{run} is not a run directory (no config.yaml): give runs/<run> as written by jepa train")
    return path
