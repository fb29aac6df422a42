"""Finding, composing and checking the Hydra configs in ``conf/``.

Hydra reports a bad override with several lines and a stack-trace hint. Before a run starts, the CLI composes the
config once here and turns each kind of mistake into one line that says what to fix.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from jepa_platform.errors import ConfigError, JepaError, one_line
from jepa_platform.launch import register_resolvers
from jepa_platform.settings import check_run_settings

register_resolvers()

_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version"}
# With another config source the pre-flight check (which reads conf/) would judge the wrong configs: Hydra checks those.
_OTHER_CONFIG_FLAGS = {"--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd", "--experimental-rerun"}
# Hydra flags that take a value, so that the value is not mistaken for an override.
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", *_OTHER_CONFIG_FLAGS}


def config_dir() -> Path:
    """The ``conf/`` directory: ``$JEPA_CONFIG_DIR`` or the one beside the package."""
    path = Path(os.environ.get("JEPA_CONFIG_DIR", Path(__file__).resolve().parent.parent / "conf"))
    if not (path / "train.yaml").is_file():
        raise ConfigError(f"no train.yaml in {path}: set JEPA_CONFIG_DIR to the project's conf/ directory")
    return path


def plugin_config_dirs() -> list[Path]:
    """The ``conf/`` folders that installed plugin packages ship (``<package>/conf/<group>/<name>.yaml``): each
    plugin's YAML is the one place its settings live, as the built-ins' YAML is theirs. Found from the plugins'
    entry points without importing them; Hydra searches them through ``hydra_plugins/jepa_platform_searchpath``."""
    from jepa_platform.registry import REGISTRIES, plugin_package_dirs

    dirs = {d / "conf" for registry in REGISTRIES.values() for d in plugin_package_dirs(registry)}
    return sorted(d for d in dirs if d.is_dir())


def group_options(group: str, conf: Path | None = None) -> list[str]:
    """Options of a config group: the YAML files in ``conf/<group>/`` and in the plugins' config folders."""
    folders = [conf or config_dir(), *plugin_config_dirs()]
    return sorted({p.stem for folder in folders for p in (folder / group).glob("*.yaml")})


def _without_config(group: str, name: str) -> str | None:
    """The distribution whose plugin registers ``name`` in ``group`` without shipping its YAML, if one does."""
    from importlib.metadata import entry_points

    from jepa_platform.registry import REGISTRIES

    registry = REGISTRIES.get(group)
    for ep in entry_points(group=registry.group) if registry else []:
        if ep.name == name:
            return f"plugin: {ep.dist.name if ep.dist is not None else 'unknown distribution'}"
    return None


def config_groups(conf: Path | None = None) -> list[str]:
    conf = conf or config_dir()
    return sorted(p.name for p in conf.iterdir() if p.is_dir() and any(p.glob("*.yaml")))


@cache
def trainer_arguments() -> tuple[str, ...]:
    """The arguments of ``lightning.pytorch.Trainer``, read from its source: importing Lightning takes seconds, and a
    config check should answer before that."""
    from jepa_platform.registry import _module_file

    path = _module_file("lightning.pytorch.trainer.trainer")
    tree = ast.parse(path.read_text(encoding="utf-8")) if path else None
    for node in ast.walk(tree) if tree else []:
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            return tuple(a.arg for a in [*init.args.args, *init.args.kwonlyargs] if a.arg != "self")
    from lightning.pytorch import Trainer  # source not found (zipped install): ask the class itself

    return tuple(p for p in inspect.signature(Trainer.__init__).parameters if p != "self")


def _suggest(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra flags (with their values) from overrides; overrides never start with '-'."""
    flags, overrides = [], []
    it = iter(args)
    for arg in it:
        if arg.startswith("-"):
            flags.append(arg)
            if arg in _FLAGS_WITH_VALUE:
                flags.append(next(it, ""))
        else:
            overrides.append(arg)
    return flags, overrides


def rewrite_trainer_overrides(args: list[str]) -> list[str]:
    """Let ``trainer.<arg>=value`` set any Lightning Trainer argument, listed in the trainer config or not.

    Hydra only overrides keys that the config has; every real Trainer argument is rewritten to ``++`` (add or
    override), and a name that is no Trainer argument is an error with a suggestion.
    """
    _flags, overrides = split_args(args)
    _check_syntax(overrides)
    out = []
    for arg in args:
        m = re.match(r"^trainer\.([A-Za-z_][A-Za-z0-9_]*)(=|\.)", arg)
        if m and not arg.startswith(("+", "~")):
            name = m.group(1)
            if name not in trainer_arguments() and name != "_target_":
                raise ConfigError(
                    f"trainer.{name} is not a Lightning Trainer argument{_suggest(name, trainer_arguments())}: "
                    "see lightning.pytorch.Trainer for the list"
                )
            if m.group(2) == "=":
                arg = "++" + arg
        out.append(arg)
    return out


def _values(override: Any) -> list[str]:
    """The option(s) an override names: every value of a sweep, else its one value."""
    if override.is_delete():
        return []
    return list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]


def _check_group_choices(overrides: list[str], conf: Path) -> None:
    groups = config_groups(conf)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.package or key not in groups or override.is_delete():
            continue
        options = group_options(key, conf)
        for value in _values(override):
            if value not in options and value != "null":
                plugin = _without_config(key, value)
                if plugin:
                    raise ConfigError(
                        f"{key} '{value}' ({plugin}) ships no config: add conf/{key}/{value}.yaml to its package (docs/adding-an-objective.md)"
                    )
                raise ConfigError(f"unknown {key} '{value}'{_suggest(value, options)}: choose one of {', '.join(options)}")


def _expand_sweeps(overrides: list[str], limit: int = 32) -> Iterator[list[str]]:
    """Each combination of a multirun sweep, as plain overrides (at most ``limit``)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for override in parsed:
        prefix = override.get_key_element()
        if override.is_sweep_override() and not override.is_hydra_override():
            choices.append([f"{prefix}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    yield from itertools.islice(itertools.product(*choices), limit)


def _check_syntax(overrides: list[str]) -> None:
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException as exc:
            detail = next((ln for ln in str(exc).splitlines() if not ln.startswith(("Error parsing", "See "))), "")
            raise ConfigError(
                f"malformed override '{override}' ({detail.strip()}): write key=value (e.g. trainer.max_epochs=2), "
                "group=option, or key=[a,b] for lists; quote values with spaces"
            ) from exc


def _unknown_key(full_key: str, overrides: list[str], config_name: str, conf: Path) -> ConfigError:
    """Name the unknown key and suggest the closest existing one under the same parent."""
    parent, _, name = full_key.rpartition(".")
    hint = ""
    try:
        others = [o for o in overrides if not o.lstrip("+~").startswith(full_key + "=")]
        node = compose_config(others, config_name, conf)
        node = OmegaConf.select(node, parent) if parent else node
        if isinstance(node, DictConfig):
            hint = _suggest(name, [str(k) for k in node])
            hint = hint.replace("mean ", f"mean {parent}.") if parent else hint
    except Exception:
        hint = ""
    return ConfigError(f"unknown config key '{full_key}'{hint}: list the keys with `jepa train --cfg job`, or add a new key with +{full_key}=...")


def explain(exc: BaseException, overrides: list[str], config_name: str = "train", conf: Path | None = None) -> ConfigError:
    """A one-line :class:`ConfigError` that says what to fix, from a Hydra or OmegaConf error."""
    text = str(exc)
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        return _unknown_key(m.group(1), overrides, config_name, conf or config_dir())
    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", "") or "a value"
        return ConfigError(f"{key} is required but not set: add {key}=... to the command line")
    if isinstance(exc, MissingConfigException):
        return ConfigError(f"{one_line(exc).split(' Available options')[0]}: check the group option (jepa train --help lists them)")
    return ConfigError(f"config error: {one_line(exc).split(' full_key:')[0]}")


def compose_config(overrides: list[str], config_name: str = "train", conf: Path | None = None, output_dir: str = ".") -> DictConfig:
    """Compose a config as ``jepa train`` would, with the Hydra runtime set, for checks, tests and notebooks."""
    conf = conf or config_dir()
    cfg = _compose(conf, config_name, overrides)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        if OmegaConf.is_missing(cfg.hydra.runtime, "cwd") or not cfg.hydra.runtime.cwd:
            cfg.hydra.runtime.cwd = os.getcwd()
    HydraConfig.instance().set_config(cfg)
    return cfg


def _compose(conf: Path, config_name: str, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def run_app(args: list[str], task: Callable[[DictConfig], None]) -> None:
    """Run ``task`` as the Hydra app of ``jepa train`` over ``conf/`` with ``args`` (flags such as ``--help`` and
    ``--cfg job`` are Hydra's own; a multirun's launcher composes each job)."""
    import hydra

    @hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
    def _app(cfg: DictConfig) -> None:
        task(cfg)

    sys.argv = ["jepa-train", *args]
    _app()


def run_once(args: list[str], task: Callable[[DictConfig], None], place: Callable[[DictConfig, list[str]], None] | None = None) -> None:
    """One ``jepa train`` run: compose its config once, with the checks that make every mistake one line (syntax,
    group options, composition, resolution, run settings: a :class:`ConfigError`), let ``place`` adjust where it
    runs (a resume continues in its checkpoint's run directory), then run ``task`` on it as Hydra runs a job: the
    run directory, its ``.hydra/`` files and log, Hydra's callbacks. Nothing is imported for training before the
    config is known to be good."""
    from hydra._internal.callbacks import Callbacks  # Hydra's own app does the same; no public equivalent
    from hydra.core.utils import run_job
    from hydra.types import HydraContext, RunMode

    conf = config_dir()
    _flags, overrides = split_args(args)
    _check_syntax(overrides)
    _check_group_choices(overrides, conf)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        try:
            cfg = hydra.compose_config("train", overrides, run_mode=RunMode.RUN, from_shell=True, with_log_configuration=True)
            with read_write(cfg.hydra), open_dict(cfg.hydra):  # run_job sets the run directory; this resolves the checks
                cfg.hydra.runtime.output_dir = os.getcwd()
            HydraConfig.instance().set_config(cfg)
            _check_composed(cfg)
        except (OmegaConfBaseException, ConfigCompositionException, MissingConfigException) as exc:
            raise explain(exc, overrides, "train", conf) from exc
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.mode = RunMode.RUN
        if place is not None:
            place(cfg, overrides)
        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name="train")
        context = HydraContext(config_loader=hydra.config_loader, callbacks=callbacks)
        done = run_job(hydra_context=context, task_function=task, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None)
        callbacks.on_run_end(config=cfg, config_name="train", job_return=done)
        _ = done.return_value  # the task's exception, if it raised one


def _check_composed(cfg: DictConfig) -> None:
    """What a composed config must pass before anything runs: every value resolves, and the run settings are valid."""
    job_config(cfg)
    check_run_settings(cfg)


def is_multirun(args: list[str]) -> bool:
    flags, _ = split_args(args)
    return bool({"-m", "--multirun"} & set(flags))


def prints_only(args: list[str]) -> bool:
    """Whether Hydra only prints (help, ``--cfg``, ``--info``) and runs nothing."""
    flags, _ = split_args(args)
    return any(f in _INFO_FLAGS or f in ("--cfg", "-c") for f in flags)


def validate(args: list[str], config_name: str = "train") -> None:
    """Compose every sweep combination of a multirun (or the config of ``--cfg``) and resolve it; raise a one-line
    ConfigError if one fails. A single run is checked by :func:`run_once` as it composes."""
    flags, overrides = split_args(args)
    if any(f in _INFO_FLAGS or f in _OTHER_CONFIG_FLAGS for f in flags):
        return
    conf = config_dir()
    try:
        _check_syntax(overrides)
        _check_group_choices(overrides, conf)
        combos = _expand_sweeps(overrides) if is_multirun(args) else [overrides]
        for combo in map(list, combos):
            overrides = combo
            _check_composed(compose_config(combo, config_name, conf))
    except ConfigError:
        raise
    except (OmegaConfBaseException, ConfigCompositionException, MissingConfigException) as exc:
        raise explain(exc, overrides, config_name, conf) from exc
    finally:
        GlobalHydra.instance().clear()


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config of a job as plain containers, without the ``hydra`` node."""
    out = {}
    for key in cfg:
        if key != "hydra":
            value = cfg[key]
            out[key] = OmegaConf.to_container(value, resolve=True, throw_on_missing=True) if OmegaConf.is_config(value) else value
    return out


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` from nested dicts, for MLflow params (lists become strings)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``instantiate`` with a one-line error that names the config node when the arguments do not fit."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, JepaError):
            raise exc.__cause__ from exc
        detail = " ".join(str(exc.__cause__ or exc).split())
        raise ConfigError(f"cannot build {what} ({node.get('_target_')}): {detail}: fix the {what} config or its overrides") from exc


def build_preset(option: str, *overrides: str, node: str | None = None, **kwargs: Any) -> Any:
    """The object a preset of ``conf/`` describes, for Python code (notebooks, tests, benchmarks): the presets own
    every default, so a configured object is built as ``jepa train`` builds it, e.g.
    ``build_preset("data=images", "data.image_size=64", urls="/data/shards", batch_size=32)``. ``overrides`` are
    command-line overrides of the composed config; ``node`` a key inside the group (``callbacks.nonfinite_guard``);
    ``kwargs`` replace values of the node (objects too)."""
    key = node or option.split("=", 1)[0].replace("/", ".")
    cfg = compose_config([option, *overrides])
    return build(OmegaConf.select(cfg, key), key, **kwargs)


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, booleans, lists), else the text itself."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
