"""Splitting over ranks and workers, and resuming mid-epoch, as Lightning runs them."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from support.data import epoch_keys_by_rank, write_tar
from torchvision.transforms import v2

from data_modules.builtin.shapes import encode_png, render
from data_modules.epoch_plan import exact_batches_per_rank
from jepa_platform.config import build_preset

SHARD_SIZES = [37, 50, 64, 23, 80, 41, 55]  # unequal, as real shards are; 350 samples, no manifest (sizes by tar scan)


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uneven")
    png = encode_png(render(0, "train", 0)[0])
    for s, size in enumerate(SHARD_SIZES):
        write_tar(root / f"part-{s:02d}.tar", [{"__key__": f"s{s:02d}-{i:03d}", "png": png, "cls": b"1"} for i in range(size)])
    return root


@pytest.mark.slow  # 19 s: two spawned ranks with two workers each (DESIGN.md: multi-process runs of more than a few seconds are slow)
def test_two_ranks_two_workers_read_each_sample_at_most_once(uneven_shards: Path):
    batch, world, workers = 8, 2, 2
    kwargs = {"batch_size": batch, "num_workers": workers, "shuffle_buffer": 16, "view_transform": v2.ToDtype(torch.float32, scale=True)}
    ranks = epoch_keys_by_rank(str(uneven_shards / "part-*.tar"), world_size=world, epochs=2, **kwargs)
    total = sum(SHARD_SIZES)
    per_rank = exact_batches_per_rank(total, world, workers, batch)
    assert [r["batches"] for r in ranks] == [per_rank, per_rank]  # ranks stay in step
    orders = []
    for epoch in range(2):
        keys = [k for r in ranks for k in r["keys"][epoch]]
        assert len(keys) == len(set(keys)) == world * per_rank * batch  # no sample twice, within or across ranks
        assert total - len(keys) <= world * batch - 1  # the documented remainder
        orders.append(keys)
    assert orders[0] != orders[1] and set(orders[0]) != set(orders[1])  # each epoch drops a different tail


class _Recorder(L.LightningModule):
    """Records the keys of every training batch; a single parameter makes the step trainable."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, int, str, float]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        sums = batch["views"][0].sum((1, 2, 3)).tolist()  # the augmented view, to see that it is replayed too
        self.seen += [(self.current_epoch, batch_idx, k, round(v, 3)) for k, v in zip(batch["__key__"], sums, strict=True)]
        return (self.w - batch["views"][0].mean()) ** 2

    def configure_optimizers(self):
        # as every objective does: asking for the run's length builds the train loader before Lightning restores its
        # loops, which once made a resumed run replay epoch 0's batches
        assert self.trainer.estimated_stepping_batches > 0
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("checkpoint", "augment_on"),
    [("step=20.ckpt", "workers"), ("end-epoch=0.ckpt", "workers"), ("step=20.ckpt", "device")],
    ids=["mid-epoch", "end-of-epoch", "mid-epoch-device-views"],
)
def test_lightning_resume_mid_epoch_continues_the_same_batches(tiny_dataset: Path, tmp_path: Path, checkpoint: str, augment_on: str):
    augment = v2.Compose([v2.RandomResizedCrop(32, scale=(0.3, 1.0)), v2.ColorJitter(0.4, 0.4), v2.ToDtype(torch.float32, scale=True)])

    def fit(ckpt_path: str | None = None) -> list[tuple[int, int, str, float]]:
        dm = build_preset(
            "data=images",
            "data.urls=x",
            urls=str(tiny_dataset),
            batch_size=32,
            num_workers=2,
            shuffle_buffer=64,
            view_transform=augment,
            augment_on=augment_on,
        )
        every_5 = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_top_k=-1, filename="{step}")
        epochs = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1, filename="end-{epoch}")
        trainer = L.Trainer(
            max_epochs=2,
            accelerator="cpu",
            logger=False,
            callbacks=[every_5, epochs],
            enable_progress_bar=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        model = _Recorder()
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model.seen

    full = fit()
    assert len(full) == 2 * 512
    resumed = fit(str(tmp_path / checkpoint))  # epoch 1 after 4 of its 16 batches, or the end of epoch 0
    start = (1, 4) if checkpoint == "step=20.ckpt" else (1, 0)
    assert resumed == [row for row in full if (row[0], row[1]) >= start]
