"""The timm adapter: any timm model by name, the small-image stem, token features and clear errors."""

from __future__ import annotations

import pytest
import torch

from jepa_platform.config import build_preset
from jepa_platform.encoders import projector
from jepa_platform.errors import ConfigError


def _timm(name: str, **kwargs):
    """A timm encoder from the encoder preset (the presets own every default), with ``kwargs`` replacing its values."""
    return build_preset("encoder=timm", name=name, **kwargs)


def test_pooled_and_token_features():
    enc = _timm("test_resnet")
    x = torch.randn(2, 3, 32, 32)
    assert enc(x).shape == (2, enc.num_features)
    tokens = enc.forward_tokens(x)
    assert tokens.shape[0] == 2 and tokens.shape[-1] == enc.num_features


def test_small_stem_keeps_resolution():
    x = torch.randn(2, 3, 32, 32)
    standard = _timm("resnet18").forward_tokens(x)
    small = _timm("resnet18", small_stem=True).forward_tokens(x)
    assert standard.shape == (2, 1, 512)  # 32px / 32 stride
    assert small.shape == (2, 16, 512)  # 32px / 8 stride: 4x4 cells


def test_vit_tokens_drop_prefix_tokens():
    enc = _timm("test_vit", model_kwargs={"img_size": 32, "patch_size": 4})
    assert enc.forward_tokens(torch.randn(2, 3, 32, 32)).shape[1] == 64


def test_unknown_model_suggests_names():
    with pytest.raises(ConfigError, match=r"resnet19.*did you mean.*resnet1"):
        _timm("resnet19")


def test_small_stem_on_vit_is_a_config_error():
    with pytest.raises(ConfigError, match="small_stem"):
        _timm("test_vit", small_stem=True)


def test_projector_layers():
    head = projector(16, [32, 32, 8])
    assert head(torch.randn(4, 16)).shape == (4, 8)
    assert isinstance(list(head.children())[-2], torch.nn.Linear)  # last layer: Linear (then a no-op dropout)
    assert isinstance(projector(16, []), torch.nn.Identity)


def test_channels_last_is_the_same_function_in_another_memory_layout():
    torch.manual_seed(0)
    plain = _timm("resnet18").eval()
    nhwc = _timm("resnet18", channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x), plain(x), rtol=1e-4, atol=1e-4)


def test_sincos_grid_is_computed_once_and_usable_for_training_after_inference():
    from jepa_platform.encoders.pos_embed import _cached_grid, sincos_1d, sincos_grid

    _cached_grid.cache_clear()
    with torch.inference_mode():  # first asked for by a planner or an evaluation
        first = sincos_grid((1, 3, 5), 12)
    assert not first.is_inference() and sincos_grid((1, 3, 5), 12) is first
    assert sincos_grid((1, 3, 5), 12, dtype=torch.bfloat16).dtype == torch.bfloat16
    h, w = torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
    expected = torch.cat([sincos_1d(torch.zeros(15), 4), sincos_1d(h.flatten(), 4), sincos_1d(w.flatten(), 4)], dim=1)
    torch.testing.assert_close(first, expected)
    x = torch.randn(2, 15, 12, requires_grad=True)
    (x + first).sum().backward()  # a training step may use the shared table
    assert x.grad is not None
