"""Registry: decorator registration, entry-point discovery, duplicates raise, broken plugins warn, generated configs."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from jepa_platform.objectives import VICReg
from jepa_platform.registry import BUILTIN, ENCODERS, OBJECTIVES, Registry, RegistryError

GROUP = "jepa_platform_test.objectives"


@pytest.fixture
def fake_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution (dist-info with entry points) and its module, on sys.path."""
    (tmp_path / "fakeplug_mod.py").write_text(
        "import lightning as L\n"
        "class Good(L.LightningModule):\n    '''A good plugin objective.\n\n    More text.'''\n"
        "class Other(L.LightningModule):\n    '''Another.'''\n"
        "CONST = 3\n"
    )
    dist = tmp_path / "fakeplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\ngood = fakeplug_mod:Good\nbroken = fakeplug_missing:Nope\nnotaclass = fakeplug_mod:CONST\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.modules.pop("fakeplug_mod", None)


def test_plugins_load_and_broken_ones_warn(fake_plugins: Path):
    registry = Registry("objective", GROUP, "jepa_platform.objectives", "lightning.pytorch.LightningModule")
    with pytest.warns(UserWarning) as record:
        names = registry.names()
    messages = " | ".join(str(w.message) for w in record)
    assert "skipping objective plugin 'broken' from fakeplug: cannot load fakeplug_missing:Nope" in messages
    assert "skipping objective plugin 'notaclass' from fakeplug" in messages and "not a subclass" in messages
    assert names == ["good"]
    entry = registry.get("good")
    assert entry.source == "plugin: fakeplug"
    assert entry.description == "A good plugin objective."
    assert entry.target == "fakeplug_mod.Good"


@pytest.mark.filterwarnings("ignore:skipping objective plugin")
def test_duplicate_names_raise(fake_plugins: Path):
    registry = Registry("objective", GROUP, "jepa_platform.objectives", "lightning.pytorch.LightningModule")
    registry.add("good", VICReg, BUILTIN)
    with pytest.raises(RegistryError, match=r"objective 'good' is registered twice: by .*VICReg .* rename one"):
        registry.discover()


def test_same_class_twice_is_not_a_duplicate():
    registry = Registry("objective", GROUP, "jepa_platform.objectives", "lightning.pytorch.LightningModule")
    registry.add("x", VICReg, BUILTIN)
    registry.add("x", VICReg, BUILTIN)
    assert registry.get("x").cls is VICReg


def test_unknown_name_is_a_one_line_error():
    with pytest.raises(RegistryError, match=r"unknown objective 'vicregg': choose one of .*vicreg"):
        OBJECTIVES.get("vicregg")


def test_builtins_are_registered():
    assert {"simclr", "barlow", "vicreg", "lejepa", "invariance_only"} <= set(OBJECTIVES.names())
    assert "timm" in ENCODERS.names()
    for entry in [*OBJECTIVES, *ENCODERS]:
        assert entry.description, f"{entry.name} needs a class docstring: jepa list shows its first paragraph"


def test_every_builtin_objective_has_a_config_file():
    from jepa_platform.config import config_dir

    files = {p.stem for p in (config_dir() / "objective").glob("*.yaml")}
    builtins = {e.name for e in OBJECTIVES if e.source == BUILTIN}
    assert builtins <= files


def test_plugins_configs_come_from_their_packages():
    """The example plugin's YAML (in its package) is a group option and composes onto the platform's base presets."""
    from jepa_platform.config import compose_config, group_options, plugin_config_dirs

    assert any(d.parent.name == "jepa_plugin_example" for d in plugin_config_dirs())
    assert "simsiam" in group_options("objective") and "small_convnet" in group_options("encoder")
    cfg = compose_config(["objective=simsiam", "encoder=small_convnet"])
    assert cfg.objective._target_ == "jepa_plugin_example.simsiam.SimSiam" and cfg.objective.projector_norm == "batch"
