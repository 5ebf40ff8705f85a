"""The plugin manager: load the ``genctl`` entry points, isolate broken plugins, look specs up.

Built-in families are found exactly like third-party ones. ``GENCTL_PLUGINS=a,b`` restricts
loading to the named entry points (handy to rule a broken plugin out, and in tests).
"""

from __future__ import annotations

import difflib
import os
import traceback
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib.metadata import entry_points

import pluggy

from genctl import hookspecs
from genctl.errors import BadInput
from genctl.spec import ModelSpec

ENTRY_POINT_GROUP = "genctl"
PLUGINS_ENV = "GENCTL_PLUGINS"


@dataclass(frozen=True)
class LoadError:
    """A plugin that could not be loaded, and why."""

    name: str  # the entry point's name
    value: str  # what the entry point points at
    package: str
    error: str  # one line: the exception type and message
    traceback: str


class ModelRegistry:
    """Specs registered by plugins, keyed by model name."""

    def __init__(self) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._current: tuple[str, str, str] = ("", "", "")  # plugin, package, version

    def add(self, spec: ModelSpec) -> None:
        """Register ``spec``; a name already taken is an error naming both plugins."""
        if not isinstance(spec, ModelSpec):
            raise TypeError(
                f"registry.add() takes a genctl.spec.ModelSpec, not {type(spec).__name__}"
            )
        if spec.name in self._specs:
            other = self._specs[spec.name]
            raise ValueError(
                f"model {spec.name!r} registered twice: by {other.plugin} ({other.package}) "
                f"and by {self._current[0]} ({self._current[1]})"
            )
        plugin, package, version = self._current
        self._specs[spec.name] = replace(spec, plugin=plugin, package=package, version=version)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[ModelSpec]:
        return [self._specs[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def get(self, name: str) -> ModelSpec:
        """The spec called ``name``; an unknown name is bad input listing the known ones."""
        if name in self._specs:
            return self._specs[name]
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise BadInput(
            f"unknown plugin {name!r}",
            f"{hint}Installed: {', '.join(self.names()) or 'none'} (see `genctl plugins list`).",
        )


@dataclass
class PluginSet:
    """Everything loading the plugins produced."""

    manager: pluggy.PluginManager
    registry: ModelRegistry
    errors: list[LoadError]
    loaded: dict[str, tuple[str, str]]  # entry point name -> (package, version)


def _make_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("genctl")
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(extra: dict[str, object] | None = None) -> PluginSet:
    """Load every ``genctl`` entry point (or those named in ``GENCTL_PLUGINS``).

    ``extra`` maps names to already-imported plugin objects (tests register plugins this way).
    A plugin that fails to import or to register is recorded in ``errors`` and skipped; it never
    breaks loading of the others.
    """
    pm = _make_manager()
    registry = ModelRegistry()
    errors: list[LoadError] = []
    loaded: dict[str, tuple[str, str]] = {}
    wanted = {n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()}

    candidates: list[tuple[str, str, str, str, object]] = []  # name, value, package, version, obj
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if wanted and ep.name not in wanted:
            continue
        dist = getattr(ep, "dist", None)
        package = ep.value.split(":")[0]  # the module: genctl_dcgan, or a third party's
        version = dist.version if dist is not None else "?"
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the CLI
            errors.append(_load_error(ep.name, ep.value, package, exc))
            continue
        candidates.append((ep.name, ep.value, package, version, obj))
    for name, obj in (extra or {}).items():
        candidates.append((name, repr(obj), getattr(obj, "__name__", name), "", obj))

    info: dict[str, tuple[str, str, str]] = {}  # plugin name -> value, package, version
    for name, value, package, version, obj in candidates:
        if pm.is_registered(obj) or pm.has_plugin(name):
            continue
        try:
            pm.register(obj, name=name)
        except Exception as exc:
            errors.append(_load_error(name, value, package, exc))
            continue
        info[name] = (value, package, version)

    # Each plugin registers its models on its own, so one that raises is skipped alone.
    for impl in pm.hook.genctl_register_models.get_hookimpls():
        name = impl.plugin_name
        value, package, version = info.get(name, ("", "?", "?"))
        registry._current = (name, package, version)
        try:
            impl.function(registry=registry)
        except Exception as exc:
            pm.unregister(impl.plugin)
            errors.append(_load_error(name, value, package, exc))
            continue
        loaded[name] = (package, version)
    registry._current = ("", "", "")
    while True:  # a misspelled hook implementation is an error, not silence
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or str(exc.plugin)
            pm.unregister(exc.plugin)
            loaded.pop(name, None)
            value, package, _ = info.get(name, ("", "?", "?"))
            errors.append(_load_error(name, value, package, exc))
    return PluginSet(pm, registry, errors, loaded)


def _load_error(name: str, value: str, package: str, exc: BaseException) -> LoadError:
    line = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return LoadError(name, value, package, line, traceback.format_exc())


@lru_cache(maxsize=1)
def plugins() -> PluginSet:
    """The plugins of this process, loaded once."""
    return load_plugins()


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; unknown names are bad input (and mention load errors)."""
    ps = plugins()
    if name not in ps.registry:
        failed = [e for e in ps.errors if e.name == name]
        if failed:
            raise BadInput(
                f"plugin {name!r} is installed but failed to load: {failed[0].error}",
                "Run `genctl plugins list` for details, or `genctl --debug plugins list` for the traceback.",
            )
    return ps.registry.get(name)
