"""Mask samplers: the invariants masked prediction relies on, and sampling in DataLoader workers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from jepa_platform.config import build_preset
from jepa_platform.errors import ConfigError
from jepa_platform.masking import FutureMaskSampler, MaskCollate, MaskPlan, MultiBlockMaskSampler, block_size

GRIDS = [(1, 8, 8), (1, 14, 14), (1, 5, 9), (1, 16, 6), (4, 8, 8)]


def rectangle(indices: torch.Tensor, width: int) -> tuple[int, int] | None:
    """(h, w) if the flat indices of one frame fill a rectangle exactly, else None."""
    rows, cols = indices // width, indices % width
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    return (h, w) if h * w == len(indices) else None


@pytest.mark.parametrize("grid", GRIDS)
def test_multiblock_invariants(grid):
    frames, height, width = grid
    sampler = MultiBlockMaskSampler()  # I-JEPA: 4 targets of 0.15-0.2, aspect 0.75-1.5, context 0.85-1.0
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        masks = sampler.sample(16, grid, g)
        assert masks.context.shape[0] == 16 and masks.targets.shape[:2] == (16, 4)  # equal counts within the batch
        n = frames * height * width
        sizes = set()
        for context, targets in zip(masks.context, masks.targets, strict=True):
            assert len(set(context.tolist())) == len(context) and int(context.max()) < n
            assert torch.equal(context, context.sort().values)
            for target in targets:
                assert not set(context.tolist()) & set(target.tolist()), "context and target overlap"
                assert frames > 1 or rectangle(target, width) is not None, "a target is not a block"
                sizes.add(len(target))
            # the context block (85-100% of the grid) minus targets, never more than the grid outside the targets
            covered = set(targets.flatten().tolist())
            assert len(context) <= n - len(covered)
        assert len(sizes) == 1, "target blocks differ in size within a batch"


@pytest.mark.parametrize("grid", [(1, 14, 14), (1, 32, 32)])
def test_block_scale_and_aspect_stay_in_range(grid):
    """Scale and aspect ratio of the drawn blocks are within the configured ranges, up to rounding to whole tokens."""
    _, height, width = grid
    g = torch.Generator().manual_seed(1)
    sampler = MultiBlockMaskSampler(num_targets=1, context_scale=None)
    for _ in range(200):
        target = sampler.sample(1, grid, g).targets[0, 0]
        h, w = rectangle(target, width)
        slack_scale = (h + w + 1) / (height * width)  # one row and one column of rounding
        assert 0.15 - slack_scale <= h * w / (height * width) <= 0.2 + slack_scale
        rounding = (1 + 1 / min(h, w)) ** 2  # h and w are each within half a token of the exact block
        assert 0.75 / rounding <= h / w <= 1.5 * rounding


def test_block_size_hits_scale_and_aspect():
    for scale in (0.15, 0.2, 0.5):
        for aspect in (0.75, 1.0, 1.5):
            h, w = block_size((100, 100), scale, aspect)
            assert abs(h * w / 1e4 - scale) < 0.01 and abs(h / w - aspect) < 0.05


def test_tube_masks_repeat_through_time():
    sampler = MultiBlockMaskSampler(num_targets=8, target_scale=(0.15, 0.15), context_scale=None, union_targets=True)
    masks = sampler.sample(4, (4, 8, 8), torch.Generator().manual_seed(0))
    assert masks.targets.shape[1] == 1
    for target, context in zip(masks.targets[:, 0], masks.context, strict=True):
        per_frame = [set((target[(target // 64) == t] % 64).tolist()) for t in range(4)]
        assert all(p == per_frame[0] for p in per_frame), "a tube changes shape between frames"
        assert not set(target.tolist()) & set(context.tolist())


def test_future_masks():
    masks = FutureMaskSampler(horizon=2).sample(3, (6, 2, 2), torch.Generator().manual_seed(0))
    cut = masks.context.shape[1] // 4
    assert 1 <= cut <= 4
    assert torch.equal(masks.context[0], torch.arange(cut * 4))
    assert torch.equal(masks.targets[0, 0], torch.arange(cut * 4, (cut + 2) * 4))
    with pytest.raises(ConfigError, match="clip_length"):
        FutureMaskSampler(horizon=4).sample(1, (4, 2, 2))


def test_bad_ranges_are_config_errors():
    with pytest.raises(ConfigError, match="target_scale"):
        MultiBlockMaskSampler(target_scale=(0.3, 0.2))
    with pytest.raises(ConfigError, match="context tokens"):
        MultiBlockMaskSampler(num_targets=8, target_scale=(0.9, 1.0), context_scale=None).sample(2, (1, 4, 4))


class _Images(Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict:
        return {"views": [torch.zeros(3, 32, 32)], "label": i}


class _WorkerOnlySampler(MultiBlockMaskSampler):
    """Refuses to run outside a DataLoader worker: batches with masks prove that the workers drew them."""

    def sample(self, batch_size, grid, generator=None):
        assert get_worker_info() is not None, "masks drawn in the main process"
        return super().sample(batch_size, grid, generator)


def test_masks_are_sampled_in_dataloader_workers():
    collate = MaskCollate({"jepa": MaskPlan(_WorkerOnlySampler(), None)}, patch_size=(4, 4), inner=default_collate)
    loader = DataLoader(_Images(), batch_size=8, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 4
    for batch in batches:
        masks = batch["masks"]["jepa"]
        assert masks["context"].shape[0] == 8 and masks["targets"].shape[:2] == (8, 4)
        assert int(masks["targets"].max()) < 64  # 32px / 4px patches = 8x8 grid


def test_stream_masks_replay_exactly(tiny_dataset):
    """The stream seeds the collate per batch: the same epoch gives the same masks (and so does a resumed one)."""

    dm = build_preset("data=shapes", root=str(tiny_dataset.parent), num_train=512, num_val=256, samples_per_shard=128, batch_size=32, num_workers=2)
    dm.collate = MaskCollate({"jepa": MaskPlan(MultiBlockMaskSampler(), None)}, (4, 4), dm.collate)
    dm.setup("fit")

    def contexts(skip: int = 0) -> list[torch.Tensor]:
        return [b["masks"]["jepa"]["context"] for b in dm._loader(dm.train_stream(skip_batches=skip), persistent=False)]

    first, again, resumed = contexts(), contexts(), contexts(3)
    assert len(first) == 16 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first[3:], resumed, strict=True))
    assert not all(torch.equal(first[0], f) for f in first[1:])
