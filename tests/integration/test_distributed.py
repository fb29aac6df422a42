"""One DDP step on 2 gloo processes has the gradients of one step on the concatenated batch, for every objective.

Every registered objective (plugins included) runs in the same two spawned processes; a deliberately wrong Barlow
Twins that correlates each rank's half-batch is the negative control, showing that the check can fail.
"""

from __future__ import annotations

import pytest
import torch

from jepa_platform.distributed import gather_with_grad, local_slice, world_size
from jepa_platform.registry import OBJECTIVES
from jepa_platform.testing import ddp_gradient_check

ATOL = 1e-5


@pytest.fixture(scope="module")
def ddp_results() -> dict[str, dict]:
    cases = {name: [f"objective={name}"] for name in OBJECTIVES.names()}
    cases["negative_control"] = ["objective=barlow", "objective._target_=support.controls.UngatheredBarlowTwins"]
    return ddp_gradient_check(cases, world_size=2, per_rank=8)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_ddp_gradients_equal_single_process(name: str, ddp_results: dict[str, dict]):
    for rank in (0, 1):
        result = ddp_results[f"{name}@rank{rank}"]
        assert result["same_params"], f"{name}: DDP and single-process runs give gradients to different parameters"
        assert result["max_abs_grad"] > 1e-3, f"{name}: gradients are too small for the comparison to mean anything"
        assert result["max_abs_diff"] <= ATOL, f"{name} rank {rank}: DDP gradients differ by {result['max_abs_diff']:.3g}"


def test_negative_control_fails_the_check(ddp_results: dict[str, dict]):
    assert ddp_results["negative_control@rank0"]["max_abs_diff"] > 1e-2


def test_collectives_are_the_identity_without_a_process_group():
    x = torch.randn(4, 3, requires_grad=True)
    assert world_size() == 1 and gather_with_grad(x) is x
    assert local_slice(4) == slice(0, 4)
