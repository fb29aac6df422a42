"""H-JEPA: a stack of JEPAs, each encoding the representations of the level below and predicting further ahead.

Levels (configurable, two or more; ``levels[0]`` is level 1):

- **Level 1** is the ViT encoder's patch-token grid ``(T, H, W)`` (``T = 1`` for images). It predicts
  fine-grained representations over a short range: on images, small target blocks (default 3-6% of the grid,
  context = everything else, so each block is predicted from its immediate neighbours); on clips, the next
  frame(s) (``horizon`` 1) from the frames before a cut.
- **Level k >= 2** sees level k-1's representations pooled over cells of ``pool = (t, h, w)`` tokens (larger
  regions; on clips also longer windows of frames; ``t`` is ignored on images), and encodes them with its own
  small transformer (fixed sin-cos positions on its coarser grid). It predicts further ahead: large target blocks
  on images (a quarter of the image side and more, from a context block), and on clips ``horizon`` *windows*
  after the cut, i.e. ``horizon x t`` frames and more ahead of the context.

Each level has an online encoder, an EMA target copy, and its own narrow predictor; its loss is the distance between
predicted and layer-normalised target representations at its target positions (``level{k}/energy``).

What each level sees, without leaking the targets: the level-k context path takes the level-k context cells,
expands them to the level-1 tokens they cover, runs the *online* level-1 encoder on those tokens only, and pools
and encodes upwards through levels 2..k. The level-k targets come from the *target* stack run on the whole input:
EMA level 1 on all tokens, pooled, EMA level 2 on all cells, and so on.

How the levels train together: one optimiser step on ``sum_k weight_k * level{k}/energy`` (+ optional regularisers).
Level k's loss trains its predictor and encoder and, through its context path, the online encoders of every level
below (with ``detach_levels=false``, the default: the lower levels learn to serve longer-range prediction too); with
``detach_levels=true`` the inputs of level k are detached, so each level trains only on its own loss (greedy
stacking). No gradient reaches any target encoder; the EMA callback moves all of them after each step.

Representation (probes, kNN, ``jepa eval``): the concatenation of every level's pooled features from the target
stack (``eval_encoder=context``: the online stack). Metrics besides DESIGN.md's: ``level{k}/energy``, and on
validation ``val/level{k}/energy`` (masks drawn from a fixed seed); each level's pooled features are also exposed
to the evaluation callbacks as ``level{k}``, which log ``level{k}/rank`` (and the other statistics) of training
batches, ``val/level{k}/probe_acc`` and ``val/level{k}/rank``.
``train/energy`` is the sum of the level energies.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torchmetrics import MeanMetric

from jepa_platform.callbacks.evaluation import Lazy
from jepa_platform.encoders.pos_embed import sincos_grid
from jepa_platform.encoders.predictor import MaskedPredictor
from jepa_platform.errors import ConfigError
from jepa_platform.losses.functional import LossOutput, masked_prediction, masked_prediction_per_sample, normalised_targets
from jepa_platform.masking.collate import MaskPlan, effective_pool, model_input, pooled_grid
from jepa_platform.masking.samplers import FutureMaskSampler, Grid, Masks, MultiBlockMaskSampler, gather_tokens
from jepa_platform.objectives.base import BANK_LOADER
from jepa_platform.objectives.masked import MaskedJEPA
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective

Pool = tuple[int, int, int]


@dataclass
class Level:
    """One level of the hierarchy (see module docstring); level 1's ``pool``, ``dim``, ``depth`` and ``heads`` are
    the encoder's own and ignored."""

    pool: Sequence[int] = (1, 1, 1)
    dim: int = 192
    depth: int = 2
    heads: int = 4
    predictor_dim: int = 96
    predictor_depth: int = 2
    predictor_heads: int = 4
    weight: float = 1.0
    image_mask: dict[str, Any] = field(default_factory=dict)
    clip_mask: dict[str, Any] = field(default_factory=dict)


#: defaults: level 1 short range (small blocks, next frame), level 2 long range on 2x2x2 cells
DEFAULT_LEVELS = (
    {"image_mask": {"num_targets": 4, "target_scale": [0.03, 0.06], "context_scale": None}, "clip_mask": {"horizon": 1}},
    {"pool": [2, 2, 2], "image_mask": {"num_targets": 2, "target_scale": [0.15, 0.25]}, "clip_mask": {"horizon": 1}},
)


class LevelEncoder(nn.Module):
    """Encoder of a level >= 2: pooled lower-level features -> width ``dim`` + sin-cos position -> transformer."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads, 4.0, qkv_bias=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, positions: Tensor, grid: Grid) -> Tensor:
        pos = sincos_grid(grid, self.dim, x.device, x.dtype)[positions]
        return self.norm(self.blocks(self.embed(x) + pos))


def pool_grid(x: Tensor, grid: Grid, pool: Pool) -> Tensor:
    """Average ``(B, T*H*W, D)`` tokens over cells of ``pool`` -> ``(B, cells, D)`` in the coarse grid's flat order."""
    (t, h, w), (pt, ph, pw) = grid, pool
    return x.view(x.shape[0], t // pt, pt, h // ph, ph, w // pw, pw, x.shape[-1]).mean(dim=(2, 4, 6)).flatten(1, 3)


def cell_children(cells: Tensor, coarse: Grid, pool: Pool) -> Tensor:
    """Flat fine-grid indices of the tokens in each coarse cell, cell by cell: ``(B, n) -> (B, n * prod(pool))``."""
    _, h2, w2 = coarse
    pt, ph, pw = pool
    t, h, w = cells // (h2 * w2), (cells // w2) % h2, cells % w2
    dt, dh, dw = (g.flatten().to(cells.device) for g in torch.meshgrid(torch.arange(pt), torch.arange(ph), torch.arange(pw), indexing="ij"))
    fine_h, fine_w = h2 * ph, w2 * pw
    ft, fh, fw = t[..., None] * pt + dt, h[..., None] * ph + dh, w[..., None] * pw + dw
    return (ft * fine_h * fine_w + fh * fine_w + fw).flatten(1)


@register_objective("h_jepa")
class HJEPA(MaskedJEPA):
    """H-JEPA: two or more stacked JEPA levels predicting at growing range and abstraction (see module docstring).

    Args:
        encoder, optimizer: the level-1 ViT and a partial optimiser.
        levels: one mapping per level with :class:`Level` fields (default :data:`DEFAULT_LEVELS`).
        detach_levels: stop gradients between levels (each level trains on its own loss only).
        **kwargs: :class:`~jepa_platform.objectives.masked.MaskedJEPA` arguments and the common ones.
    """

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        levels: Sequence[Mapping[str, Any]],
        detach_levels: bool,
        **kwargs: Any,
    ) -> None:
        specs = [_level(i, spec) for i, spec in enumerate(levels)]
        if len(specs) < 2:
            raise ConfigError(f"h_jepa needs at least 2 levels, got {len(specs)}: add an entry to objective.levels")
        dims = [int(encoder.num_features)] + [s.dim for s in specs[1:]]
        super().__init__(encoder, optimizer, feature_dim=sum(dims), **kwargs)
        self.specs, self.dims = specs, dims
        self.levels = nn.ModuleList(LevelEncoder(dims[k - 1], dims[k], s.depth, s.heads) for k, s in enumerate(specs) if k > 0)
        self.target_levels = copy.deepcopy(self.levels).requires_grad_(False)
        self.predictors = nn.ModuleList(
            MaskedPredictor(d, s.predictor_dim, s.predictor_depth, s.predictor_heads) for d, s in zip(dims, specs, strict=True)
        )
        self.plans = {
            f"level{k + 1}": MaskPlan(
                MultiBlockMaskSampler(**s.image_mask),
                FutureMaskSampler(**s.clip_mask),
                tuple(math.prod(p) for p in zip(*(t.pool for t in specs[: k + 1]), strict=True)),
            )
            for k, s in enumerate(specs)
        }
        self.val_level_energy = nn.ModuleList(MeanMetric() for _ in dims)

    def feature_widths(self) -> dict[str, int]:
        """The concatenation (``features``) and each level's pooled features (``level{k}``: probes and statistics)."""
        return {"features": self.feature_dim, **{f"level{k}": d for k, d in enumerate(self.dims, start=1)}}

    # -- structure ------------------------------------------------------------------------------------------------
    def online_modules(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.target, self.encoder), (self.target_levels, self.levels)]

    def mask_plans(self) -> dict[str, MaskPlan]:
        return self.plans

    def level_pools(self, frames: int) -> list[Pool]:
        return [effective_pool(s.pool, frames) for s in self.specs]

    def level_grids(self, x: Tensor) -> list[Grid]:
        grids = [self.grid(x)]
        for spec in self.specs[1:]:
            grids.append(pooled_grid(grids[-1], spec.pool))
        return grids

    # -- forward passes -------------------------------------------------------------------------------------------
    def stack(self, x: Tensor, online: bool = False) -> list[Tensor]:
        """Every level's representation of the whole input, ``[(B, cells_k, D_k)]`` (target stack by default)."""
        level1, upper = (self.encoder, self.levels) if online else (self.target, self.target_levels)
        grids, pools = self.level_grids(x), self.level_pools(self.grid(x)[0])
        reps = [level1.patch_features(level1.encode_tokens(level1.embed_tokens(x)))]
        for k, encoder in enumerate(upper, start=1):
            cells = pool_grid(reps[-1], grids[k - 1], pools[k])
            positions = torch.arange(cells.shape[1], device=x.device).expand(x.shape[0], -1)
            reps.append(encoder(cells, positions, grids[k]))
        return reps

    def pooled(self, reps: list[Tensor]) -> list[Tensor]:
        return [r.mean(dim=1) for r in reps]

    def forward(self, x: Tensor) -> Tensor:
        """Concatenated pooled features of every level ``(B, sum of level widths)``."""
        return torch.cat(self.pooled(self.stack(x, online=self.hparams.eval_encoder == "context")), dim=1)

    def level_context(self, k: int, tokens: Tensor, context: Tensor, grids: list[Grid], pools: list[Pool]) -> Tensor:
        """Online level-k representations ``(B, n, D_k)`` of the level-k context cells, computed from the level-1
        tokens they cover only (see module docstring)."""
        indices = [context]
        for j in range(k, 0, -1):
            indices.insert(0, cell_children(indices[0], grids[j], pools[j]))
        with torch.set_grad_enabled(torch.is_grad_enabled() and (k == 0 or not self.hparams.detach_levels)):
            h = self.encoder.patch_features(self.encoder.encode_tokens(tokens, indices[0]))
        for j in range(1, k + 1):
            h = h.unflatten(1, (indices[j].shape[1], -1)).mean(dim=2)
            if self.hparams.detach_levels:
                h = h.detach()
            h = self.levels[j - 1](h, indices[j], grids[j])
        return h

    def level_energies(self, x: Tensor, masks: Mapping[str, Any], targets: list[Tensor]) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Each level's prediction loss against ``targets`` (the target stack's representations), the same per
        sample ``(B,)`` (detached, for the energy histogram), and the pooled level-1 context features (for the
        optional regularisers)."""
        grids, pools = self.level_grids(x), self.level_pools(self.grid(x)[0])
        tokens = self.encoder.embed_tokens(x)
        energies, per_sample, context_features = [], [], None
        for k in range(len(self.specs)):
            m = masks[f"level{k + 1}"]
            ctx = self.level_context(k, tokens, m.context, grids, pools)
            pred = self.predictors[k](ctx, m.context, m.targets, grids[k])
            target = gather_tokens(normalised_targets(targets[k]), m.targets)
            energies.append(masked_prediction(pred, target, self.hparams.loss))
            per_sample.append(masked_prediction_per_sample(pred.detach(), target, self.hparams.loss))
            context_features = ctx.mean(dim=1) if k == 0 else context_features
        return energies, per_sample, context_features

    # -- surprise ---------------------------------------------------------------------------------------------------
    def surprise_window(self) -> tuple[int | None, int]:
        return None, int(self.specs[0].clip_mask.get("horizon", 1))

    def predict_future_tokens(self, frames: Tensor, masks: Masks) -> tuple[Tensor, Tensor]:
        """Level 1's prediction of the target frames' tokens from the context frames, and the target encoder's
        layer-normalised tokens there: the fine-grained, short-range level is the one that predicts the next frames."""
        grid = self.grid(frames)
        context = self.level_context(0, self.encoder.embed_tokens(frames), masks.context, [grid], [(1, 1, 1)])
        target = self.target.patch_features(self.target.encode_tokens(self.target.embed_tokens(frames)))
        return self.predictors[0](context, masks.context, masks.targets, grid), gather_tokens(normalised_targets(target), masks.targets)

    # -- training -------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        x = model_input(batch)
        masks = self.batch_masks(batch, x)
        with torch.no_grad():
            reps = self.stack(self.target_input(batch, x))
            pooled = self.pooled(reps)
        energies, per_sample, context_features = self.level_energies(x, masks, reps)
        terms = {f"level{k + 1}": e for k, e in enumerate(energies)}
        total = sum(s.weight * e for s, e in zip(self.specs, energies, strict=True))
        regs, regularisation = self.regularisers(context_features)
        bs = x.shape[0]
        out = LossOutput(total + regularisation, {**terms, **regs})
        self.log_loss(out, sum(e.detach() for e in energies), bs)
        self.log_step_values({f"level{k}/energy": e for k, e in enumerate(energies, start=1)}, bs)
        features = torch.cat(pooled, dim=1)
        levels = {f"level{k}": p for k, p in enumerate(pooled, start=1)}
        self.expose(
            {"features": features, **levels},
            {"repr": features, "emb": Lazy(lambda: normalised_targets(reps[0]).flatten(0, 1)), **levels},
            energies={f"level{k}": e for k, e in enumerate(per_sample, start=1)},
        )
        return out.total

    # -- validation -----------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == BANK_LOADER:
            return super().validation_step(batch, batch_idx, dataloader_idx)
        x = model_input(batch)
        reps = self.stack(x, online=self.hparams.eval_encoder == "context")
        pooled = self.pooled(reps)
        self.expose({"features": torch.cat(pooled, dim=1), **{f"level{k}": p for k, p in enumerate(pooled, start=1)}})
        targets = reps if self.hparams.eval_encoder == "target" else self.stack(x)
        energies, _, _ = self.level_energies(x, self.batch_masks(batch, x, seed=batch_idx), targets)
        for k, e in enumerate(energies):
            self.val_level_energy[k].update(e, x.shape[0])

    def on_validation_epoch_end(self) -> None:
        for k, metric in enumerate(self.val_level_energy, start=1):
            if not self.trainer.sanity_checking:
                self.log(f"val/level{k}/energy", metric.compute())
            metric.reset()


def _level(index: int, spec: Mapping[str, Any] | Level) -> Level:
    if isinstance(spec, Level):
        return spec
    try:
        level = Level(**dict(spec))
    except TypeError as exc:
        raise ConfigError(f"objective.levels[{index}]: {exc}: the fields are {', '.join(Level.__dataclass_fields__)}") from exc
    if len(level.pool) != 3 or min(level.pool) < 1:
        raise ConfigError(f"objective.levels[{index}].pool={list(level.pool)} must be three positive integers (time, height, width)")
    if index == 0:
        level.pool = (1, 1, 1)
    return level
