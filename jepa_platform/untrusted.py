"""Reading files that may come from elsewhere without running their code.

Two kinds of file can carry code, and ``torch.load(weights_only=True)`` protects neither:

* a sharded checkpoint's ``.metadata`` is a pickle, which ``torch.distributed.checkpoint`` unpickles as it is, and
  its ``.distcp`` shards hold non-tensor values (optimiser settings) that its default planner loads without
  ``weights_only``.
  Every sharded checkpoint jepa-platform writes gets a manifest (:data:`MANIFEST`: JSON, the SHA-256 of each
  file); a directory without one, or whose files no longer match it, is refused before any of it is read. The
  metadata is then unpickled by an unpickler that knows only the checkpoint's own dataclasses, and non-tensor
  values load with ``weights_only=True``, so even a directory whose manifest was forged runs no code.
* a config (a run's ``config.yaml``, an export file's ``encoder_config``) names classes in ``_target_`` that
  ``hydra.utils.instantiate`` imports and calls. :func:`check_targets` lets through only the platform's own
  namespaces, registered plugins and the libraries configs legitimately use (:data:`ALLOWED_TARGETS`).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch

from jepa_platform.errors import CheckpointError, ConfigError

#: the manifest of a sharded checkpoint directory, written last by the platform
MANIFEST = "jepa_manifest.json"
MANIFEST_FORMAT = "jepa-platform-sharded-checkpoint/1"

#: module prefixes a restored config may instantiate (plus every registered objective, encoder and plugin module)
ALLOWED_TARGETS = (
    "jepa_platform.",
    "data_modules.",
    "torch.optim.",
    "timm.optim.",
    "timm.create_model",
    "torchvision.transforms.",
    "kornia.augmentation.",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
    "lightning.pytorch.strategies.",
    "lightning.pytorch.Trainer",
    "lightning.pytorch.trainer.trainer.Trainer",
)

# -- sharded checkpoints ----------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record the SHA-256 of every file of a sharded checkpoint that the platform just wrote (written last)."""
    files = {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    tmp = directory / f".{MANIFEST}.partial"
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1))
    tmp.replace(directory / MANIFEST)


#: directories already verified, with the size and modification time of each file when they were
_verified: set[tuple[str, tuple[tuple[str, int, int], ...]]] = set()


def _signature(directory: Path) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_file())
    return str(directory.resolve()), tuple(files)


def verify_manifest(directory: Path) -> None:
    """Refuse a sharded checkpoint directory that the platform did not write, or whose files changed since.

    One load reads a directory several times (its metadata, ``meta.pt``, the weights, the optimiser state): the files
    are hashed once, and again only if one of them changed size or modification time."""
    signature = _signature(directory) if directory.is_dir() else None
    if signature in _verified:
        return
    _check_manifest(directory)
    if signature is not None:
        _verified.add(signature)


def _check_manifest(directory: Path) -> None:
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(
            f"{directory} has no {MANIFEST}: it is not a complete sharded checkpoint written by jepa-platform, and its "
            "pickled metadata is not read; resume from a checkpoint the platform wrote"
        )
    try:
        record = json.loads(manifest.read_text())
        files = dict(record["files"])
        assert record.get("format") == MANIFEST_FORMAT
    except Exception as exc:
        raise CheckpointError(f"{manifest} is not a jepa-platform checkpoint manifest: the directory was not written by jepa train") from exc
    present = {p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST and not p.name.endswith(".partial")}
    if present != set(files):
        extra, missing = sorted(present - set(files)), sorted(set(files) - present)
        raise CheckpointError(
            f"{directory} does not match its manifest (extra files {extra}, missing {missing}): it was changed after it was written"
        )
    for name, digest in files.items():
        if _sha256(directory / name) != digest:
            raise CheckpointError(
                f"{directory}/{name} does not match its recorded SHA-256: the checkpoint was changed or damaged after it was written"
            )


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles ``torch.distributed.checkpoint`` metadata and nothing else: only its own classes, ``torch.Size``,
    dtypes and plain containers can be named."""

    #: the dataclasses a ``torch.distributed.checkpoint`` metadata file is made of (constructing them runs nothing)
    _CLASSES: ClassVar[dict[str, tuple[str, ...]]] = {
        "torch.distributed.checkpoint.metadata": (
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        ),
        "torch.distributed.checkpoint.filesystem": ("_StorageInfo",),
    }

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype | torch.layout | torch.memory_format)):
            return getattr(torch, name)
        if module == "torch.serialization" and name == "_get_layout":  # a layout by its name, from torch's own table
            from torch.serialization import _get_layout

            return _get_layout
        if module == "pathlib" and name in ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"):
            import pathlib  # the checkpoint's own path (storage_meta.checkpoint_id): a value, not code

            return getattr(pathlib, name)
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if name in self._CLASSES.get(module, ()):
            import importlib

            return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def read_dcp_metadata(directory: Path) -> Any:
    """The ``torch.distributed.checkpoint`` metadata of a verified directory, read with the restricted unpickler."""
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    verify_manifest(directory)
    try:
        with (directory / ".metadata").open("rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except Exception as exc:
        raise CheckpointError(
            f"cannot read the sharded checkpoint {directory}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{directory}/.metadata is not checkpoint metadata")
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    return metadata


def safe_reader(directory: Path) -> Any:
    """A ``FileSystemReader`` for a verified directory whose metadata goes through :func:`read_dcp_metadata`."""
    from torch.distributed.checkpoint import FileSystemReader

    class _Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_dcp_metadata(directory)
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return _Reader(str(directory))


def safe_planner() -> Any:
    """A load planner whose non-tensor values load with ``weights_only=True`` (plain values only)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class _Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return _Planner()


def dcp_load(state: dict[str, Any], directory: Path, **kwargs: Any) -> None:
    """``torch.distributed.checkpoint.load`` of a verified directory through the safe reader and planner."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state, storage_reader=safe_reader(directory), planner=safe_planner(), **kwargs)


@contextmanager
def safe_lightning_dcp_load() -> Iterator[None]:
    """Route Lightning's sharded-checkpoint loading (``ModelParallelStrategy.load_checkpoint``) through
    :func:`dcp_load` for the duration of the block."""
    from lightning.fabric.strategies import model_parallel

    original = model_parallel._distributed_checkpoint_load
    model_parallel._distributed_checkpoint_load = lambda state, path: dcp_load(state, Path(path))
    try:
        yield
    finally:
        model_parallel._distributed_checkpoint_load = original


# -- configs ----------------------------------------------------------------------------------------------------


def _registered_targets() -> set[str]:
    from jepa_platform.registry import REGISTRIES

    out: set[str] = set()
    for registry in REGISTRIES.values():
        for entry in registry:
            out.add(f"{entry.cls.__module__}.{entry.cls.__qualname__}")
            out.add(entry.cls.__module__.split(".")[0] + ".")
    return out


#: ``hydra.utils.get_object`` imports whatever ``path`` names: allowed for torch dtypes (the configs' only use)
GET_OBJECT = "hydra.utils.get_object"


def _targets(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if key == "_target_" and value == GET_OBJECT:
                obj_path = node.get("path")
                dtype = isinstance(obj_path, str) and obj_path.startswith("torch.") and isinstance(getattr(torch, obj_path[6:], None), torch.dtype)
                yield (here, value) if dtype else (f"{path}.path" if path else "path", obj_path)
            elif key == "_target_":
                yield here, value
            else:
                yield from _targets(value, here)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}[{i}]")


def check_targets(config: Any, source: str) -> None:
    """Raise a one-line :class:`ConfigError` if ``config`` (a dict or OmegaConf node, from ``source``) names a
    ``_target_`` outside the allowlist (see module docstring)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(config, resolve=False) if OmegaConf.is_config(config) else config
    allowed = (*ALLOWED_TARGETS, *sorted(_registered_targets()))
    for key, target in _targets(plain):
        if target is None or target == GET_OBJECT:
            continue
        if not isinstance(target, str) or not target.startswith(allowed) or "__" in target.replace("__init__", ""):
            raise ConfigError(
                f"{source}: {key}={target!r} is not a class the platform instantiates from a file (allowed: jepa_platform, "
                "data_modules, registered plugins, torch.optim, timm, torchvision.transforms, kornia.augmentation, lightning): "
                "edit the file or re-create it with jepa train"
            )
