"""Plumbing of a run: named stages whose cache key is derived from exactly the inputs their build receives.

`Stages.run(name, build, **inputs)` keys the artifact by the stage name and the identity of every input, then
calls `build(folder, **inputs)` when the artifact is absent (the joblib `Memory` model: what the function reads is
what the key covers). An input's identity is its `cache_identity` (an artifact's key, a component's plugin,
version and config, the context's seed) or the value itself. A build that raises a UserError or `Ineligible` has
a deterministic outcome: it is cached and replayed on warm runs, unless the stage reads the world outside the
cache (`external=True`: a data folder, local weight files), where the user may fix the cause between runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from harness.cache import Artifact, ArtifactCache
from harness.components import Component, ComponentConfig
from harness.context import RunContext
from harness.errors import Ineligible, UserError
from harness.monitor import StageMonitor
from harness.plugins import Registry

log = logging.getLogger("harness")
T = TypeVar("T")
C = TypeVar("C", bound=Component)
OUTCOMES: dict[str, type[Exception]] = {"user-error": UserError, "ineligible": Ineligible}


def identity(value: Any) -> Any:
    """What an input contributes to a cache key."""
    if hasattr(value, "cache_identity"):
        return value.cache_identity
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, dict):
        return {str(k): identity(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [identity(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"stage input of type {type(value).__name__} has no cache identity")


@dataclass(frozen=True)
class Stored(Generic[T]):
    """A value read from an artifact, identified by that artifact's key."""

    key: str
    value: T

    @property
    def cache_identity(self) -> str:
        return self.key


@dataclass(frozen=True)
class Chosen(Generic[C]):
    """A registered component with its validated config: what a spec section chose."""

    name: str
    factory: type[C]
    version: str
    config: ComponentConfig

    @classmethod
    def from_registry(cls, registry: Registry, role: str, name: str, config: ComponentConfig) -> Chosen:
        registered = registry.get(role, name)
        return cls(name, registered.factory, f"{registered.version}/{registered.factory.version}", config)

    @property
    def cache_identity(self) -> dict[str, Any]:
        return {"plugin": self.name, "version": self.version, "config": self.config.model_dump(mode="json")}

    def create(self) -> C:
        return self.factory(self.config)


class Fitted(Generic[C]):
    """A component whose fit is a cached stage, made usable (`get()`) only when something needs it.

    The key is known at once; the stage itself (load the state, or train) runs on the first `get()`, so a warm
    run whose later stages are all cached never loads (or trains) the model.
    """

    def __init__(self, stages: Stages, name: str, chosen: Chosen[C], fit: Callable[..., None],
                 inputs: dict[str, Any]):
        self.component: C = chosen.create()
        self.key = stages.key(name, {"component": chosen, **inputs})
        self._stages, self._name, self._chosen, self._fit, self._inputs = stages, name, chosen, fit, inputs
        self._meta: dict[str, Any] | None = None
        self._ready = False
        self.record_if_cached()

    def record_if_cached(self) -> None:
        """Record the fit stage in the manifest (so `cache gc` keeps it) when its artifact exists; loads nothing."""
        if self._meta is None and self._stages.cache.exists(self._name, self.key):
            self._stage()

    @property
    def cache_identity(self) -> str:
        return self.key

    def _train(self) -> None:
        self._fit(self.component, **self._inputs)

    def _stage(self) -> dict[str, Any]:
        if self._meta is None:
            def build(folder: Path, component: Chosen[C], **inputs: Any) -> dict[str, Any]:
                self._fit(self.component, **inputs)  # with the stage's context: it saves its checkpoints there
                (folder / "state").mkdir()
                saved = bool(self.component.save_state(folder / "state"))
                self._ready = not saved or self._stages.cache.group.main  # other ranks load what rank 0 saved
                return {"saved": saved, "report": self.component.fit_report()}

            self._meta = self._stages.run(self._name, build, external=True, component=self._chosen,
                                         **self._inputs).meta
        return self._meta

    @property
    def meta(self) -> dict[str, Any]:
        """What the fit recorded (`saved`, `report`); runs the fit stage if it has not run yet."""
        return self._stage()

    def get(self) -> C:
        """The fitted component: its cached state loaded, trained here, or refitted when nothing was saved."""
        if not self._ready:
            meta = self._stage()
            if not self._ready:
                if meta["saved"]:
                    self.component.load_state(self._stages.cache.path(self._name, self.key) / "state")
                else:
                    self._train()  # a cheap fit that saved nothing: redo it
                self._stages.models_loaded.append(self._name)
                self._ready = True
        return self.component


@dataclass
class StageRecord:
    stage: str
    key: str
    cached: bool
    seconds: float | None = None
    #: its seconds less those of the stages built inside it (a fit run on first use, a decode): what it cost itself
    own_seconds: float | None = None
    peak_rss_mb: float | None = None
    cuda_peak_mb: float | None = None


@dataclass
class Stages:
    """Runs stages against the cache and records, per stage, whether it was computed and what it cost."""

    cache: ArtifactCache
    records: list[StageRecord] = field(default_factory=list)
    models_loaded: list[str] = field(default_factory=list)
    fits: list[Fitted] = field(default_factory=list)
    _inner: list[float] = field(default_factory=list, repr=False)  # per open build: seconds of builds inside it

    def key(self, name: str, inputs: dict[str, Any]) -> str:
        return self.cache.key(name, **{k: identity(v) for k, v in inputs.items()})

    def run(self, name: str, build: Callable[..., dict[str, Any] | None], *, external: bool = False,
            alone: bool = False, **inputs: Any) -> Artifact:
        """The artifact of `build(folder, **inputs) -> meta`, built only when the cache lacks it (over several
        processes by rank 0 alone when `alone`: a build no other rank could share, see `ArtifactCache`).

        Returns the artifact (its `meta` holds what the build returned and what it cost); replays a cached
        deterministic failure by raising it again.
        """
        key = self.key(name, inputs)

        def build_here(folder: Path, meta: dict[str, Any]) -> None:
            log.info("stage %s started (key %s)", name, key)
            self._inner.append(0.0)
            try:
                with StageMonitor() as monitor:
                    try:
                        meta.update(build(folder, **_in_stage(inputs, folder, key)) or {})
                    except (UserError, Ineligible) as exc:
                        if external or getattr(exc, "from_external_stage", False):
                            exc.from_external_stage = True  # an enclosing stage must not cache it either
                            raise
                        kind = "user-error" if isinstance(exc, UserError) else "ineligible"
                        meta["outcome"] = {"kind": kind, "message": str(exc)}
            finally:
                inner = self._inner.pop()
            meta.update(monitor.record(), own_seconds=round(max(monitor.seconds - inner, 0.0), 3))
            if self._inner:
                self._inner[-1] += monitor.seconds
            log.info("stage %s finished in %.1fs", name, meta["seconds"])

        artifact, built = self.cache.get_or_build(name, key, build_here, alone)
        meta = artifact.meta
        self.records.append(StageRecord(name, key, cached=not built, seconds=meta.get("seconds"),
                                        own_seconds=meta.get("own_seconds", meta.get("seconds")),
                                        peak_rss_mb=meta.get("peak_rss_mb"), cuda_peak_mb=meta.get("cuda_peak_mb")))
        outcome = meta.get("outcome")
        if outcome is not None:
            raise OUTCOMES[outcome["kind"]](outcome["message"])
        return artifact

    def fit(self, name: str, chosen: Chosen[C], fit: Callable[..., None], **inputs: Any) -> Fitted[C]:
        """A component fitted by `fit(component, **inputs)` as the cached stage `name` (run lazily)."""
        fitted = Fitted(self, name, chosen, fit, inputs)
        self.fits.append(fitted)
        return fitted

    def finish(self) -> list[StageRecord]:
        """Every stage this run used, including fits another run sharing the cache finished meanwhile."""
        for fitted in self.fits:
            fitted.record_if_cached()
        return self.records

    @property
    def executed(self) -> list[str]:
        """Stages that were computed (not loaded from the cache) in this run."""
        return [s.stage for s in self.records if not s.cached]


def _in_stage(inputs: dict[str, Any], folder: Path, key: str) -> dict[str, Any]:
    """The build's inputs, its run context (if it takes one) pointed at the stage's checkpoint folder."""
    ctx = inputs.get("ctx")
    return {**inputs, "ctx": ctx.in_stage(folder, key)} if isinstance(ctx, RunContext) else inputs
