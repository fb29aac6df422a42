"""The batch mover of the objectives (jepa_platform.transfer) and its fallback to Lightning's."""

from __future__ import annotations

from collections import namedtuple

import torch

from jepa_platform.testing import build_objective, objective_batch
from jepa_platform.transfer import move_batch


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


def test_objective_moves_its_batch_and_falls_back_to_lightning_for_other_types():
    model = build_objective(("debug=fast", "objective=vicreg"))
    batch = model.transfer_batch_to_device(objective_batch(model, 2, image_size=8), torch.device("meta"), 0)
    assert all(v.device.type == "meta" for v in batch["views"])
    Pair = namedtuple("Pair", "a b")
    out = model.transfer_batch_to_device(Pair(torch.ones(1), torch.zeros(1)), torch.device("meta"), 0)
    assert isinstance(out, Pair) and out.a.device.type == "meta"
