"""One owner per default: the YAML presets in conf/ (and a plugin's in its package) hold every value they set, and
the constructors they name take those values without a default of their own (docs/configuration.md).

A second copy of a default in Python would drift from the YAML (VICReg's 25/25/1 once lived in four places); this
test fails on the first such copy, for the built-ins and for every installed plugin's preset.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from jepa_platform.config import compose_config, group_options

#: every option of the groups whose presets name classes; data presets that read the user's files get a stand-in path
GROUPS = ("objective", "encoder", "data", "callbacks", "logger")
PRESETS = [(g, o) for g in GROUPS for o in group_options(g)]
NEEDS_URLS = ("images", "small_images", "small_images_gray", "sequences")


def _nodes(node: Any, path: str):
    """``(path, node)`` of every node with a ``_target_`` of the platform, its data modules or a plugin package."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and not target.startswith(("torch", "torchvision", "lightning", "hydra", "kornia", "timm")):
            yield path, node
        for key, value in node.items():
            yield from _nodes(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _nodes(value, f"{path}[{i}]")


def _defaults_in_python(cls: type, held: set[str]) -> list[str]:
    """Constructor arguments that the preset holds and that also have a Python default, along ``**kwargs`` chains."""
    out = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass.__module__.split(".")[0] in ("torch", "lightning", "builtins"):
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        out += [f"{klass.__name__}.{p.name}" for p in params if p.name in held and p.default is not inspect.Parameter.empty]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


@pytest.mark.parametrize(("group", "option"), PRESETS, ids=[f"{g}={o}" for g, o in PRESETS])
def test_each_value_a_preset_sets_lives_only_in_the_preset(group: str, option: str):
    overrides = [f"{group}={option}"] + (["data.urls=/x"] if group == "data" and option in NEEDS_URLS else [])
    raw = OmegaConf.to_container(compose_config(overrides)[group], resolve=False)
    copies = []
    for path, node in _nodes(raw, group):
        cls = get_object(node["_target_"])
        if inspect.isclass(cls):
            copies += [f"{path}: {c}" for c in _defaults_in_python(cls, set(node) - {"_target_", "_partial_"})]
    assert not copies, f"conf/{group}/{option}.yaml sets values that the Python code also defaults: {copies}"
