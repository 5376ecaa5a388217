"""Plugin discovery and the component registry.

Plugins are modules listed under the `harness` entry-point group; built-ins come through the same path.
Each plugin is imported and asked to register inside its own try/except, so one broken plugin is reported
and never stops the others. `HARNESS_PLUGINS=a,b` allow-lists entry-point names;
`HARNESS_DISABLE_PLUGIN_AUTOLOAD=1` loads only the built-ins of reid-harness itself (used by the tests).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from harness import hookspecs
from harness.components import ROLES
from harness.errors import UserError

GROUP = "harness"
BUILTIN_DIST = "reid-harness"


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str
    components: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Registered:
    factory: Any
    plugin: str
    distribution: str
    version: str


class Registry:
    """What the loaded plugins registered, by role and name."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Registered]] = {role: {} for role in ROLES}
        self.plugins: list[PluginInfo] = []

    def names(self, role: str) -> list[str]:
        return sorted(self.components[role])

    def get(self, role: str, name: str, where: str = "") -> Registered:
        known = self.components[role]
        if name in known:
            return known[name]
        raise UserError(unknown_name_message(role, name, list(known), where))


def unknown_name_message(role: str, name: str, known: list[str], where: str = "") -> str:
    label = ROLES[role].label
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    prefix = f"{where}: " if where else ""
    listing = ", ".join(sorted(known)) or "none installed"
    return f"{prefix}unknown {label} '{name}'.{hint} Known {label}s: {listing}."


def _selected_entry_points() -> list[EntryPoint]:
    eps = list(entry_points(group=GROUP))
    if os.environ.get("HARNESS_DISABLE_PLUGIN_AUTOLOAD"):
        eps = [ep for ep in eps if ep.dist is not None and ep.dist.name == BUILTIN_DIST]
    allow = os.environ.get("HARNESS_PLUGINS")
    if allow:
        wanted = {name.strip() for name in allow.split(",") if name.strip()}
        eps = [ep for ep in eps if ep.name in wanted]
    # A distribution installed twice on sys.path (editable + site) lists its entry points twice.
    unique: dict[tuple[str, str], EntryPoint] = {}
    for ep in eps:
        unique.setdefault((ep.name, ep.value), ep)
    return sorted(unique.values(), key=lambda ep: ep.name)


def _registrar(registry: Registry, info: PluginInfo, role: str):
    """The `register(name, factory)` callback handed to one plugin's hook for one role."""
    base = ROLES[role].base

    def register(name: str, factory: Any) -> None:
        if not (isinstance(factory, type) and issubclass(factory, base)):
            raise TypeError(f"{name!r} must be a subclass of {base.__name__}")
        existing = registry.components[role].get(name)
        if existing is not None and existing.plugin != info.name:
            raise ValueError(f"{ROLES[role].label} {name!r} is already registered by {existing.plugin}")
        registry.components[role][name] = Registered(factory, info.name, info.distribution, info.version)
        info.components.setdefault(role, []).append(name)

    return register


def _fail(registry: Registry, info: PluginInfo, exc: Exception) -> None:
    """Record a plugin's error and withdraw whatever it had registered before failing."""
    for role, names in info.components.items():
        for name in names:
            registry.components[role].pop(name, None)
    info.components = {}
    info.error = f"{type(exc).__name__}: {exc}"


def load_registry() -> Registry:
    """Import every selected entry point and collect what it registers; errors are recorded, not raised.

    Each plugin is checked against the hookspecs as it is added (pluggy's `check_pending`), so a misspelled hook
    is that plugin's load error. Hook implementations are called one plugin at a time (not through a single hook
    call) so that an exception is attributed to the plugin that raised it and the other plugins still register.
    """
    registry = Registry()
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    for ep in _selected_entry_points():
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        info = infos[ep.name] = PluginInfo(ep.name, ep.value, dist, version)
        registry.plugins.append(info)
        try:
            module = ep.load()
            manager.register(module, name=ep.name)
        except Exception as exc:  # a third party's bug must not take the harness down
            _fail(registry, info, exc)
            continue
        try:
            manager.check_pending()
        except pluggy.PluginValidationError as exc:
            manager.unregister(module)
            _fail(registry, info, exc)
    for role in ROLES:
        for impl in getattr(manager.hook, f"register_{role}").get_hookimpls():
            info = infos[impl.plugin_name]
            if info.error:
                continue
            try:
                impl.function(register=_registrar(registry, info, role))
            except Exception as exc:
                _fail(registry, info, exc)
    return registry


_REGISTRY: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry (the only global state), loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = load_registry()
    return _REGISTRY
