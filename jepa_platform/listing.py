"""``jepa list``: the registered objectives, encoders, planners and environments (built-in and plugins), with
one-line descriptions, read from source without importing torch (:meth:`Registry.declarations`)."""

from __future__ import annotations

from omegaconf import OmegaConf

from jepa_platform.config import config_dir
from jepa_platform.registry import BUILTIN, ENCODERS, ENVIRONMENTS, OBJECTIVES, PLANNERS, Registry


def _section(title: str, registry: Registry) -> list[str]:
    entries = registry.declarations()
    width = max((len(e.name) for e in entries), default=0) + 2
    lines = [title]
    for e in entries:
        origin = "" if e.source == BUILTIN else f"  [{e.source}]"
        lines.append(f"  {e.name:<{width}}{e.description}{origin}")
    return lines


def _encoder_presets() -> list[str]:
    presets = []
    for path in sorted((config_dir() / "encoder").glob("*.yaml")):
        node = OmegaConf.load(path)
        model = node.get("name") if node.get("_target_", "").endswith("TimmEncoder") else node.get("_target_")
        presets.append(f"{path.stem} ({model})")
    return presets


def render() -> str:
    lines = _section("objectives (jepa train objective=NAME):", OBJECTIVES)
    lines += ["", *_section("encoders (jepa train encoder=NAME):", ENCODERS)]
    lines += ["  presets in conf/encoder: " + ", ".join(_encoder_presets())]
    lines += ["", *_section("planners (jepa plan RUN --planners NAME,...):", PLANNERS)]
    lines += ["", *_section("environments (jepa data collect NAME OUT_DIR; any gymnasium id works too):", ENVIRONMENTS)]
    lines += ["", "Settings live in YAML: conf/<group>/<name>.yaml here, <package>/conf/<group>/<name>.yaml in a plugin."]
    return "\n".join(lines)


def main(args: list[str]) -> int:
    if args:
        print("usage: jepa list   (prints registered objectives, encoders, planners and environments; takes no arguments)")
        return 0 if args[0] in ("-h", "--help") else 2
    print(render())
    return 0
