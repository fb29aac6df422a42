"""One source of defaults: every registered class's constructor defaults agree with its YAML preset.

A plugin or notebook built from ``default_config`` must train the recipe that ``jepa train <group>=<name>`` trains.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from jepa_platform.config import compose_config, config_dir
from jepa_platform.registry import REGISTRIES, _init_parameters, default_config

DATA_PRESETS = ("shapes", "moving_shapes", "images", "sequences")


def _presets() -> list[tuple[str, str]]:
    out = []
    for group, registry in REGISTRIES.items():
        out += [(group, e.name) for e in registry if (config_dir() / group / f"{e.name}.yaml").is_file()]
    return out + [("data", name) for name in DATA_PRESETS]


def _disagreements(cls: type, node: dict[str, Any], own_only: bool) -> dict[str, tuple[Any, Any]]:
    """Keys whose Python default (not ``None``, which means "derived from the other arguments") differs from the YAML."""
    python = default_config(cls, wire=False)
    names = {p.name for p in _init_parameters(cls)}
    if own_only:  # data presets are dataset recipes: they must agree on what their class itself declares
        names &= set(inspect.signature(cls.__init__).parameters)
    return {
        key: (python[key], node[key])
        for key in names & python.keys() & node.keys()
        if python[key] not in ("???", None) and not (isinstance(node[key], str) and "${" in node[key]) and python[key] != node[key]
    }


@pytest.mark.parametrize(("group", "name"), _presets(), ids=lambda v: str(v))
def test_yaml_preset_agrees_with_the_constructor(group: str, name: str):
    cfg = compose_config([f"{group}={name}", "data.urls=/tmp/x", "data.image_size=32"] if name in ("images",) else [f"{group}={name}"])
    raw = OmegaConf.to_container(cfg[group], resolve=False)
    cls = get_object(raw["_target_"])
    assert _disagreements(cls, raw, own_only=group == "data") == {}, f"conf/{group}/{name}.yaml and {cls.__name__}'s defaults disagree (python, yaml)"
