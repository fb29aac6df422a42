"""Name -> class registries of objectives, encoders, planners and environments, with plugin discovery through entry
points.

Built-ins register with a decorator (``@register_objective("vicreg")``). Third-party packages declare entry points
in the groups ``jepa_platform.objectives``, ``jepa_platform.encoders``, ``jepa_platform.planners`` and
``jepa_platform.environments`` (``name = "package.module:Class"``); they are loaded lazily, the first time a
registry is listed or queried. A plugin that fails to import, or whose entry point is not a suitable class, is
skipped with a warning so that the rest still work; a name registered twice by different classes raises
:class:`RegistryError`.

Configs point ``_target_`` at classes; the registry serves ``jepa list``, notebooks and contract tests. A plugin
ships its settings as YAML in its package (``<package>/conf/<group>/<name>.yaml``, :func:`plugin_package_dirs`),
as the built-ins do in ``conf/``.

:meth:`Registry.declarations` answers "which names exist, and what are they" without importing anything: it reads
the built-ins' decorators and the plugins' classes from their source files. Importing an objective pulls in torch,
Lightning and timm (several seconds), which ``jepa list``, ``jepa train --help`` and a config error should not wait
for.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

from hydra.utils import get_object

from jepa_platform.errors import ConfigError

T = TypeVar("T", bound=type)
BUILTIN = "jepa-platform"


class RegistryError(ConfigError):
    """A name registered twice, or an unknown name."""


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    source: str  # "jepa-platform" for built-ins, else "plugin: <distribution>"

    @property
    def target(self) -> str:
        """The dotted path that a config's ``_target_`` uses."""
        return f"{self.cls.__module__}.{self.cls.__qualname__}"

    @property
    def description(self) -> str:
        """First paragraph of the class docstring, on one line."""
        return _first_paragraph(inspect.getdoc(self.cls))


@dataclass(frozen=True)
class Declaration:
    """A registered name read from source, not imported: what ``jepa list`` and config checks need."""

    name: str
    target: str  # dotted path of the class, as a config's ``_target_`` writes it
    source: str
    description: str


def _module_file(module: str) -> Path | None:
    """The source file of ``module`` without importing it or its parent packages (their ``__init__`` may import
    torch); ``None`` if it cannot be found that way."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for base in spec.submodule_search_locations or []:
        path = Path(base, *rest)
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _class_description(module: str, name: str) -> str | None:
    """First docstring paragraph of a class defined at the top of ``module``'s source; ``None`` if it is not."""
    path = _module_file(module)
    if path is None:
        return None
    for node in _parse(path).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return _first_paragraph(ast.get_docstring(node))
    return None


def _registered_name(decorator: ast.expr, kind: str) -> str | None:
    """``"x"`` for ``@register_<kind>("x")`` or ``@<registry>.register("x")``."""
    if not (isinstance(decorator, ast.Call) and decorator.args and isinstance(decorator.args[0], ast.Constant)):
        return None
    func = decorator.func
    called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return decorator.args[0].value if called in (f"register_{kind}", "register") else None


class Registry:
    """Registered classes of one kind; ``builtins`` is the module whose import registers the built-ins."""

    def __init__(self, kind: str, group: str, builtins: str, base: str) -> None:
        self.kind, self.group, self.builtins, self.base = kind, group, builtins, base
        self._entries: dict[str, Entry] = {}
        self._discovered = False
        self._declared: list[Declaration] | None = None

    def declarations(self) -> list[Declaration]:
        """Every name with its class path and description, from source files alone (nothing is imported).

        Built-ins are the classes decorated with ``register_<kind>`` under the built-in package; plugins are the
        entry points. A plugin class that is not defined at the top of its module (re-exported, generated) is
        imported to describe it; one whose module cannot be found is skipped with the warning :meth:`discover`
        gives. Read once, like :meth:`discover`.
        """
        if self._declared is None:
            self._declared = self._declare()
        return self._declared

    def _declare(self) -> list[Declaration]:
        found: dict[str, Declaration] = {}
        package = _module_file(self.builtins)
        for path in sorted(package.parent.rglob("*.py")) if package else []:
            module = ".".join([*self.builtins.split("."), *path.relative_to(package.parent).with_suffix("").parts])
            module = module.removesuffix(".__init__")
            for node in ast.walk(_parse(path)):
                if isinstance(node, ast.ClassDef):
                    for decorator in node.decorator_list:
                        name = _registered_name(decorator, self.kind)
                        if name is not None:
                            doc = _first_paragraph(ast.get_docstring(node))
                            found[name] = Declaration(name, f"{module}.{node.name}", BUILTIN, doc)
        for ep in entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            module, _, attr = ep.value.partition(":")
            if _module_file(module) is None:
                warnings.warn(f"skipping {self.kind} plugin '{ep.name}' from {dist}: cannot load {ep.value}: no module named {module}", stacklevel=2)
                continue
            description = _class_description(module, attr) if attr and "." not in attr else None
            if description is None:  # not a plain top-level class: import it to know what it is
                try:
                    description = self.get(ep.name).description
                except RegistryError:
                    continue
            found[ep.name] = Declaration(ep.name, f"{module}.{attr}", f"plugin: {dist}", description)
        return [found[name] for name in sorted(found)]

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator that registers a built-in under ``name``."""

        def decorate(cls: T) -> T:
            self.add(name, cls, BUILTIN)
            return cls

        return decorate

    def add(self, name: str, cls: type, source: str) -> None:
        existing = self._entries.get(name)
        if existing is not None and existing.cls is not cls:
            raise RegistryError(
                f"{self.kind} '{name}' is registered twice: by {existing.target} ({existing.source}) and by "
                f"{cls.__module__}.{cls.__qualname__} ({source}): rename one of them"
            )
        self._entries[name] = Entry(name, cls, source)

    def discover(self) -> None:
        """Import the built-ins and load every installed plugin's entry points, once."""
        if self._discovered:
            return
        self._discovered = True
        importlib.import_module(self.builtins)
        base = get_object(self.base)
        for ep in entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            source = f"plugin: {dist}"
            try:
                cls = ep.load()
            except Exception as exc:
                warnings.warn(f"skipping {self.kind} plugin '{ep.name}' from {dist}: cannot load {ep.value}: {exc}", stacklevel=2)
                continue
            if not (inspect.isclass(cls) and issubclass(cls, base)):
                warnings.warn(f"skipping {self.kind} plugin '{ep.name}' from {dist}: {ep.value} is not a subclass of {self.base}", stacklevel=2)
                continue
            self.add(ep.name, cls, source)

    def get(self, name: str) -> Entry:
        self.discover()
        if name not in self._entries:
            raise RegistryError(f"unknown {self.kind} '{name}': choose one of {', '.join(self.names())} (jepa list)")
        return self._entries[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())


OBJECTIVES = Registry("objective", "jepa_platform.objectives", "jepa_platform.objectives", "lightning.pytorch.LightningModule")
ENCODERS = Registry("encoder", "jepa_platform.encoders", "jepa_platform.encoders", "torch.nn.Module")
PLANNERS = Registry("planner", "jepa_platform.planners", "jepa_platform.world_model.planners", "jepa_platform.world_model.planners.base.Planner")
ENVIRONMENTS = Registry("environment", "jepa_platform.environments", "jepa_platform.world_model.envs", "gymnasium.Env")
#: the registry behind each config group whose options may come from plugins
REGISTRIES = {"objective": OBJECTIVES, "encoder": ENCODERS}
register_objective = OBJECTIVES.register
register_encoder = ENCODERS.register
register_planner = PLANNERS.register
register_environment = ENVIRONMENTS.register


def plugin_package_dirs(registry: Registry) -> list[Path]:
    """The folders of the top-level packages that declare this registry's plugins (without importing them)."""
    found = []
    for ep in entry_points(group=registry.group):
        top = ep.value.partition(":")[0].split(".")[0]
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        found += [Path(location) for location in (spec.submodule_search_locations or [])] if spec else []
    return found
