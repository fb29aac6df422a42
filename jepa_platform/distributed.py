"""Collectives that objectives use to give loss terms the global batch.

Losses stay pure; an objective gathers the embeddings a term needs with :func:`gather_with_grad`. The gather keeps
the autograd graph: the backward pass sums, over ranks, the gradient each rank computed for this rank's slice.
When every rank computes the same loss on the gathered batch, that sum is ``world_size`` times the gradient of the
loss, and DDP's (or FSDP's) gradient average divides it back: one DDP step equals one step on the concatenated
batch. Without an initialised process group (or with one rank) the functions are the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size(group: dist.ProcessGroup | None = None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def rank(group: dist.ProcessGroup | None = None) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup | None) -> Tensor:  # type: ignore[override]
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        size, me = world_size(ctx.group), rank(ctx.group)
        grad = grad.contiguous()
        local = torch.empty_like(grad.chunk(size, dim=0)[me])
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            dist.reduce_scatter_tensor(local, grad, op=dist.ReduceOp.SUM, group=ctx.group)
        else:  # gloo has no reduce-scatter: all-reduce the whole gradient and keep this rank's slice
            summed = grad.clone()
            dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=ctx.group)
            local.copy_(summed.chunk(size, dim=0)[me])
        return local, None


def gather_with_grad(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate ``x`` (``(N, ...)``, the same shape on every rank) from all ranks along dim 0, keeping gradients."""
    if world_size(group) == 1:
        return x
    return _GatherWithGrad.apply(x, group)


def gather_rows(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate ``x`` (``(N_rank, ...)``; ``N_rank`` may differ between ranks) from all ranks along dim 0, without
    gradients: what monitors need to compute a statistic of the global batch. Every rank must call it."""
    if world_size(group) == 1:
        return x
    from torchmetrics.utilities.distributed import gather_all_tensors

    return torch.cat(gather_all_tensors(x.contiguous(), group=group), dim=0)


def local_slice(n_local: int, group: dist.ProcessGroup | None = None) -> slice:
    """This rank's rows in a gathered batch of ``n_local`` rows per rank."""
    start = rank(group) * n_local
    return slice(start, start + n_local)
