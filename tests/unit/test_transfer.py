"""The batch mover of the data modules (jepa_platform.transfer) and its fallback to Lightning's."""

from __future__ import annotations

from collections import namedtuple

import torch

from jepa_platform.transfer import PlainBatchTransfer, move_batch


def test_move_batch_moves_every_tensor_of_nested_plain_collections():
    meta = torch.device("meta")  # a device other than the CPU, without an accelerator
    batch = {"views": [torch.ones(2, 3), torch.zeros(2, 3)], "label": torch.arange(2), "masks": {"level1": (torch.ones(2, 4),)}, "key": "a", "n": 3}
    out = move_batch(batch, meta)
    assert out["views"][0].device == meta and out["views"][1].device == meta and out["label"].device == meta
    assert isinstance(out["masks"]["level1"], tuple) and out["masks"]["level1"][0].device == meta
    assert out["key"] == "a" and out["n"] == 3
    assert batch["label"].device.type == "cpu"  # the input is left as it was


def test_move_batch_keeps_tensors_already_there_and_refuses_other_types():
    t = torch.ones(3)
    assert move_batch({"x": [t]}, torch.device("cpu"))["x"][0] is t
    Pair = namedtuple("Pair", "a b")
    assert move_batch({"x": Pair(t, t)}, torch.device("cpu")) is None  # Lightning's mover handles these
    assert move_batch([object()], torch.device("cpu")) is None


def test_data_modules_move_their_batches_and_fall_back_to_lightning_for_other_types():
    from data_modules.datamodule import StreamingDataModule

    assert issubclass(StreamingDataModule, PlainBatchTransfer)  # what jepa train's data modules use
    module = PlainBatchTransfer()
    batch = module.transfer_batch_to_device({"views": [torch.ones(2, 3)], "label": torch.arange(2)}, torch.device("meta"), 0)
    assert batch["views"][0].device.type == "meta" and batch["label"].device.type == "meta"
    Pair = namedtuple("Pair", "a b")
    out = module.transfer_batch_to_device(Pair(torch.ones(1), torch.zeros(1)), torch.device("meta"), 0)
    assert isinstance(out, Pair) and out.a.device.type == "meta"
