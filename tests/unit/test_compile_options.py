"""objective.compile_encoder / compile_loss: opt-in torch.compile that keeps checkpoints' keys and the losses."""

from __future__ import annotations

import functools

import pytest
import torch

from jepa_platform.config import build_preset
from jepa_platform.errors import ConfigError
from jepa_platform.objectives import VICReg


def _vicreg(**kwargs) -> VICReg:
    torch.manual_seed(0)
    return build_preset(
        "objective=vicreg", "encoder=resnet_test", "objective.projector_dims=[32,32]", optimizer=functools.partial(torch.optim.SGD, lr=0.1), **kwargs
    )


def test_compile_loss_needs_a_separate_loss():
    with pytest.raises(ConfigError, match=r"objective.compile_loss=true: EMAJEPA has no separate loss"):
        build_preset("objective=ema_jepa", "encoder=vit_test", "data.image_size=32", compile_loss=True)


@pytest.mark.slow  # inductor compiles C++ for the CPU: tens of seconds
def test_compiled_objective_keeps_keys_and_losses():
    plain, compiled = _vicreg(), _vicreg(compile_encoder=True, compile_loss=True)
    compiled.compile_parts()
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints load into either
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    torch.testing.assert_close(compiled.shared_step(views).loss.total, plain.shared_step(views).loss.total, rtol=1e-4, atol=1e-4)
