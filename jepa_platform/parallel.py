"""FSDP2 for every objective: Lightning's ``ModelParallelStrategy`` with ``fully_shard`` per encoder block and head.

:class:`FSDP2Strategy` is ``ModelParallelStrategy`` with a one-dimensional data-parallel mesh over all ranks (no
tensor parallelism), so that ``trainer=fsdp`` runs the same on CPU with gloo as on GPUs with NCCL, on one node or
many. The objective's ``configure_model`` calls :func:`shard_objective`, which needs no per-objective code:

* each encoder's blocks (ViT blocks, ResNet/ConvNeXt stage blocks) are one FSDP unit each, and the rest of the
  encoder (patch embedding, position embedding, final norm) is the encoder's own unit; the encoder's token methods
  (``embed_tokens``, ``encode_tokens``...) are registered as forward methods, so masked JEPAs that call them
  instead of ``forward`` get their parameters gathered too;
* every other child module with parameters (projector, predictor, probe, H-JEPA levels) is one unit;
* an EMA target encoder is a copy of the online encoder and is sharded by the same plan, so target and online
  parameters have identical shards and the EMA update runs on local shards without communication
  (:func:`paired_local_tensors`).

Before sharding, every rank takes rank 0's weights (a broadcast): ``fully_shard`` keeps each rank's slice of that
rank's own copy, so ranks that initialised differently would otherwise train a model nobody initialised.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from jepa_platform.errors import ConfigError

#: methods of :class:`~jepa_platform.encoders.TimmEncoder` that objectives call instead of ``forward``
ENCODER_FORWARD_METHODS = ("embed_tokens", "encode_tokens", "pool_tokens", "forward_tokens")
# fp16 is left out: it needs loss scaling, which the FSDP2 path of Lightning does not set up (use bf16)
PARAM_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel (FSDP2) over all ranks of all nodes; works with gloo (CPU) and NCCL (GPU).

    Args:
        reshard_after_forward: free gathered parameters after each unit's forward (less memory, one more all-gather
            in backward); ``False`` keeps them until backward (ZeRO-2-like, faster).
        param_dtype: ``bf16`` to gather and compute in bf16 with fp32 sharded master weights (FSDP2's mixed
            precision); ``null`` leaves precision to ``trainer.precision`` (autocast: ``bf16-mixed`` or ``32-true``;
            Lightning's FSDP2 path has no ``16-mixed``).
        reduce_dtype: dtype of the gradient reduce-scatter when ``param_dtype`` is set (default fp32).
        save_distributed_checkpoint: each rank writes its shards (a checkpoint directory); ``False`` gathers a
            single-file checkpoint on rank 0 (needs the whole model in CPU memory).
        process_group_backend: ``gloo`` / ``nccl``; default: NCCL on GPU, gloo on CPU.
    """

    def __init__(
        self,
        reshard_after_forward: bool = True,
        param_dtype: str | None = None,
        reduce_dtype: str = "fp32",
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        for name, value in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype)):
            if value is not None and value not in PARAM_DTYPES:
                raise ValueError(f"trainer.strategy.{name}={value!r} is not one of {', '.join(PARAM_DTYPES)} (or null)")
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            **kwargs,
        )
        self.reshard_after_forward = reshard_after_forward
        self.mp_policy = MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[param_dtype], reduce_dtype=PARAM_DTYPES[reduce_dtype]) if param_dtype else None

    def setup_environment(self) -> None:
        # one data-parallel mesh dimension spanning every rank (the parent's "auto" would be num_nodes)
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @property
    def shard_mesh(self) -> Any:
        return self.device_mesh["data_parallel"]

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """DDP's rule for buffers before each training step: every rank takes rank 0's (BatchNorm running statistics).
        ``fully_shard`` shards parameters only, so each rank would otherwise keep statistics of its own batches, and a
        checkpoint (rank 0's buffers) would resume the other ranks with statistics they never had."""
        broadcast_buffers(self.lightning_module)
        return super().training_step(*args, **kwargs)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The state a checkpoint saves, with rank 0's buffers on every rank first: the checkpoint keeps one copy of a
        replicated tensor, from whichever rank it picks, and the resumed run must start from rank 0's."""
        broadcast_buffers(self.lightning_module)
        return super().lightning_module_state_dict()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Write a sharded checkpoint atomically: into a hidden directory beside it, then a manifest of its files
        (:mod:`jepa_platform.untrusted`), then a rename over the old one. A kill at any moment leaves either the
        previous complete checkpoint or the new one, never a mix."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        from jepa_platform.untrusted import write_manifest

        path = Path(self.broadcast(str(filepath)))
        partial = path.parent / f".{path.name}.partial"
        if self.global_rank == 0 and partial.exists():
            shutil.rmtree(partial)
        self.barrier("jepa_ckpt_clean")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("jepa_ckpt_written")
        if self.global_rank == 0:
            write_manifest(partial)
            old = path.parent / f".{path.name}.old"
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
            partial.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier("jepa_ckpt_renamed")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a sharded checkpoint only if the platform wrote it (manifest), without unpickling anything that could
        run code (:mod:`jepa_platform.untrusted`)."""
        from jepa_platform.untrusted import safe_lightning_dcp_load, verify_manifest

        path = Path(self.broadcast(str(checkpoint_path)))
        if path.is_dir():
            verify_manifest(path)
        with safe_lightning_dcp_load():
            return super().load_checkpoint(path, weights_only=True)


def _block_modules(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a timm model, by timm's naming conventions: ``blocks`` (ViTs), ``stages[i].blocks``
    (ConvNeXt and most hierarchical models), ``layer1``-``layer4`` (ResNets). Empty when none is found."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList):
        return list(blocks)
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential | nn.ModuleList):
        out: list[nn.Module] = []
        for stage in stages:
            inner = getattr(stage, "blocks", None)
            out.extend(inner if isinstance(inner, nn.Sequential | nn.ModuleList) else [stage])
        return out
    layers = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(layer, nn.Sequential) for layer in layers):
        return [block for layer in layers for block in layer]
    return []


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def broadcast_buffers(module: nn.Module) -> None:
    """Every rank takes rank 0's buffers that are not sharded, in one coalesced broadcast (as DDP does)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    buffers = [b.data for b in module.buffers() if not isinstance(b, DTensor)]
    if buffers:
        dist._broadcast_coalesced(dist.group.WORLD, buffers, 256 * 2**20, 0)


def broadcast_from_rank0(module: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers (before sharding)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in module.state_dict().values():
            if isinstance(tensor, Tensor):
                dist.broadcast(tensor.data, src=0)


def shard_objective(objective: nn.Module, mesh: Any, reshard_after_forward: bool = True, mp_policy: MixedPrecisionPolicy | None = None) -> None:
    """Apply ``fully_shard`` to the objective's encoders (per block) and heads (see module docstring).

    Idempotent: modules that are already FSDP units are left as they are, and weights are broadcast only before
    anything is sharded.
    """
    from jepa_platform.encoders.timm_encoder import TimmEncoder

    options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        options["mp_policy"] = mp_policy

    def shard(module: nn.Module) -> None:
        if isinstance(module, FSDPModule) or not _has_params(module):
            return
        # containers have no forward, and a module that declares fsdp_shard_children calls its parts directly
        if isinstance(module, nn.ModuleList | nn.ModuleDict) or getattr(module, "fsdp_shard_children", False):
            for child in module.children():
                shard(child)
            return
        inner = module.model if isinstance(module, TimmEncoder) else module
        for block in _block_modules(inner):
            fully_shard(block, **options)
        fully_shard(module, **options)
        methods = ENCODER_FORWARD_METHODS if isinstance(module, TimmEncoder) else getattr(module, "fsdp_forward_methods", ())
        for method in methods:
            register_fsdp_forward_method(module, method)

    # Lightning calls configure_model again for validate/test: broadcasting rank 0's tensors over shards would mix them
    if not any(isinstance(m, FSDPModule) for m in objective.modules()):
        broadcast_from_rank0(objective)
    own = [name for name, _ in objective.named_parameters(recurse=False)]
    if own:
        raise ConfigError(f"{type(objective).__name__} holds parameters directly ({', '.join(own)}): FSDP shards submodules; move them into a module")
    for child in objective.children():
        shard(child)


def local_tensor(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if isinstance(t, DTensor) else t


def paired_local_tensors(targets: Iterable[Tensor], onlines: Iterable[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Local shards of two parameter lists that must be sharded identically (an EMA target and its online module)."""
    t_out, o_out = [], []
    for t, o in zip(targets, onlines, strict=True):
        if isinstance(t, DTensor) != isinstance(o, DTensor) or (
            isinstance(t, DTensor) and (t.placements != o.placements or t.device_mesh != o.device_mesh or t.shape != o.shape)
        ):
            raise ValueError("EMA target and online parameters are sharded differently: shard the target with the same plan")
        t_out.append(local_tensor(t))
        o_out.append(local_tensor(o))
    return t_out, o_out
