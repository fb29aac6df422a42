"""objective.compile_encoder / compile_loss: opt-in torch.compile that keeps checkpoints' keys and the losses."""

from __future__ import annotations

import functools

import pytest
import torch

from jepa_platform.encoders import TimmEncoder
from jepa_platform.errors import ConfigError
from jepa_platform.objectives import EMAJEPA, VICReg


def _vicreg(**kwargs) -> VICReg:
    torch.manual_seed(0)
    return VICReg(TimmEncoder("test_resnet"), functools.partial(torch.optim.SGD, lr=0.1), projector_dims=[32, 32], **kwargs)


def test_compile_loss_needs_a_separate_loss():
    with pytest.raises(ConfigError, match=r"objective.compile_loss=true: EMAJEPA has no separate loss"):
        vit = TimmEncoder("test_vit", model_kwargs={"img_size": 32, "patch_size": 4})
        EMAJEPA(vit, functools.partial(torch.optim.SGD, lr=0.1), compile_loss=True)


@pytest.mark.slow  # inductor compiles C++ for the CPU: tens of seconds
def test_compiled_objective_keeps_keys_and_losses():
    plain, compiled = _vicreg(), _vicreg(compile_encoder=True, compile_loss=True)
    compiled.compile_parts()
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints load into either
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    torch.testing.assert_close(compiled.shared_step(views).loss.total, plain.shared_step(views).loss.total, rtol=1e-4, atol=1e-4)
