"""Benchmark specs: YAML files validated by pydantic, with errors reported by YAML path and line.

The *benchmark hash* covers everything that makes rows comparable (dataset, encoder, re-ID, privacy,
conditions, downstream, seed) and deliberately not the generator list, so a row produced later with
`--generator` joins the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.errors import UserError
from harness.hashing import stable_hash
from harness.plugins import Registry, unknown_name_message
from harness.privacy_spec import (  # noqa: F401 - the spec's sections, importable from here as before
    ContentSpec,
    MotionSpec,
    PrivacySpec,
    RobustnessSpec,
    _Strict,
)
from harness.spec_file import read_yaml, with_base

SPEC_VERSION = 1


class PluginRef(_Strict):
    plugin: str
    args: dict[str, Any] = Field(default_factory=dict)


class GeneratorEntry(PluginRef):
    name: str | None = Field(None, description="row name; defaults to the plugin name")
    n_samples: PositiveInt | None = Field(None, description="defaults to the spec's samples_per_generator")

    @property
    def row_name(self) -> str:
        return self.name or self.plugin


class ConditionSpec(_Strict):
    ef: Literal["train-distribution", "uniform"] = "train-distribution"
    ef_range: tuple[float, float] = (10.0, 90.0)

    @field_validator("ef_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low < high <= 100:
            raise ValueError("ef_range must be two numbers with 0 <= low < high <= 100")
        return value


STRATEGIES = ("random", "recall-small", "recall-large", "full", "real-learned-subset")
NEEDS_REID = ("recall-small", "recall-large", "real-learned-subset")


class DownstreamSpec(_Strict):
    """Train the task on each row's samples (per strategy), test on the REAL test split (paper Table 5).

    A regressor trained on the real training split (`real-full`) is always fitted: it is the ceiling, it measures
    how well samples honour their requested EF, and with `relabel` it re-labels synthetic samples.
    """

    task: PluginRef
    strategies: list[Literal[STRATEGIES]] = Field(default_factory=lambda: list(STRATEGIES), min_length=1)
    relabel: bool = Field(False, description="label samples with the real-trained regressor's EF, as the paper does")
    per_learned_video: PositiveInt = Field(5, description="samples per learned training video in recall-large")

    @field_validator("strategies")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("strategies are listed twice; list each once")
        return value


class StudyVariant(_Strict):
    """One re-ID model of a study; unset parts fall back to the spec's top-level `dataset`, `encoder`, `reid`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dataset: PluginRef | None = None
    encoder: PluginRef | None = None
    reid: PluginRef | None = None


class ReidStudySpec(_Strict):
    """Several re-ID models (e.g. latent vs image space, per view), each tested on its own test split and, with
    `cross`, on every other variant's test split (encoded with its own encoder): paper Tables 1-3."""

    variants: list[StudyVariant] = Field(min_length=1)
    cross: bool = True

    @model_validator(mode="after")
    def _unique(self) -> ReidStudySpec:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("study variants need distinct names")
        return self


#: the built-in clip feature extractor the fidelity columns are measured in when a spec names none
DEFAULT_FEATURES = "video-contrast"


class FidelitySpec(_Strict):
    """Where fidelity is measured: a clip feature space (`features`), beside the seed paper's re-ID space."""

    features: PluginRef | None = Field(default_factory=lambda: PluginRef(plugin=DEFAULT_FEATURES),
                                       description="the clip feature extractor (`register_feature_extractors`); "
                                                   "null: only the re-ID space's columns")


class LeaderboardSpec(_Strict):
    title: str | None = None


class Spec(_Strict):
    spec_version: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dataset: PluginRef
    encoder: PluginRef
    reid: PluginRef | None = None
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    fidelity: FidelitySpec = Field(default_factory=FidelitySpec)
    conditions: ConditionSpec = Field(default_factory=ConditionSpec)
    samples_per_generator: PositiveInt = 64
    generators: list[GeneratorEntry] = Field(default_factory=list)
    reid_study: ReidStudySpec | None = None
    downstream: DownstreamSpec | None = None
    metrics: list[PluginRef] = Field(default_factory=list, description="extra row metrics (plugin RowMetrics)")
    robustness: RobustnessSpec | None = None
    leaderboard: LeaderboardSpec = Field(default_factory=LeaderboardSpec)

    @model_validator(mode="after")
    def _something_to_run(self) -> Spec:
        if not self.generators and self.reid_study is None:
            raise ValueError("the spec has no `generators` (and no `reid_study`); list at least one generator")
        if self.generators and self.reid_study is not None:
            raise ValueError("a spec runs either `generators` or a `reid_study`, not both; split it into two specs")
        if self.downstream is not None and self.reid is None:
            needing = [s for s in self.downstream.strategies if s in NEEDS_REID]
            if needing:
                raise ValueError(f"downstream strategies {', '.join(needing)} pick samples with the re-ID model; add "
                                 "a `reid` section or remove them")
        if self.robustness is not None and self.reid is None:
            raise ValueError("`robustness` measures memorisation with the re-ID model; add a `reid` section or "
                             "remove it")
        if self.reid_study is not None and self.reid is None and any(v.reid is None for v in self.reid_study.variants):
            raise ValueError("every reid_study variant needs a `reid` (or set a top-level `reid`)")
        return self

    def variant_ref(self, variant: StudyVariant, part: str) -> PluginRef:
        return getattr(variant, part) or getattr(self, part)

    @model_validator(mode="after")
    def _unique_rows(self) -> Spec:
        seen: set[str] = set()
        for entry in self.generators:
            if entry.row_name in seen:
                raise ValueError(f"two generators share the row name '{entry.row_name}'; give one a `name`")
            seen.add(entry.row_name)
        metrics = [ref.plugin for ref in self.metrics]
        if len(set(metrics)) != len(metrics):
            raise ValueError("a metric is listed twice under `metrics`; list each once")
        return self



@dataclass
class SpecProblem:
    path: tuple[Any, ...]
    line: int | None
    message: str

    def render(self, file: str) -> str:
        where = ".".join(str(p) for p in self.path) or "<top>"
        at = f"{file}:{self.line}" if self.line else file
        return f"{at}: {where}: {self.message}"


class SpecErrors(UserError):
    def __init__(self, file: str, problems: list[SpecProblem]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))


@dataclass
class ResolvedSpec:
    """A validated spec with every plugin's args completed by its Config defaults."""

    spec: Spec
    source: str
    configs: dict[str, Any]  # "dataset", "encoder", "reid", "task", "generators.<row>" -> validated Config

    def resolved(self) -> dict[str, Any]:
        data = self.spec.model_dump(mode="json")
        for key in ("dataset", "encoder", "reid"):
            if data.get(key) is not None:
                data[key]["args"] = self.configs[key].model_dump(mode="json")
        if self.spec.reid_study is not None:
            for variant, raw in zip(self.spec.reid_study.variants, data["reid_study"]["variants"], strict=True):
                for part in ("dataset", "encoder", "reid"):
                    ref = self.spec.variant_ref(variant, part)
                    raw[part] = {"plugin": ref.plugin,
                                 "args": self.configs[f"variants.{variant.name}.{part}"].model_dump(mode="json")}
        if data.get("downstream") is not None:
            data["downstream"]["task"]["args"] = self.configs["task"].model_dump(mode="json")
        if "fidelity.features" in self.configs:
            data["fidelity"]["features"]["args"] = self.configs["fidelity.features"].model_dump(mode="json")
        for ref, raw in zip(self.spec.metrics, data["metrics"], strict=True):
            raw["args"] = self.configs[f"metrics.{ref.plugin}"].model_dump(mode="json")
        if self.spec.robustness is not None:
            data["robustness"]["rows"] = {row: self.configs[f"robustness.{row}"].model_dump(mode="json")
                                          for row, _ in self.spec.robustness.entries()}
        for entry, raw in zip(self.spec.generators, data["generators"], strict=True):
            raw["args"] = self.configs[f"generators.{entry.row_name}"].model_dump(mode="json")
            raw["name"] = entry.row_name
            raw["n_samples"] = entry.n_samples or self.spec.samples_per_generator
        return data

    @property
    def spec_hash(self) -> str:
        return stable_hash(self.resolved())

    @property
    def benchmark_hash(self) -> str:
        return benchmark_hash(self.resolved())

    def generator_hash(self, row_name: str) -> str:
        entry = next(g for g in self.resolved()["generators"] if g["name"] == row_name)
        return stable_hash(entry)

    def robustness_hash(self, row: str) -> str:
        """A near-copy row's generator hash, as `generator_hash` for a spec's rows."""
        return stable_hash({"plugin": self.spec.robustness.generator, "name": row,
                            "args": self.configs[f"robustness.{row}"].model_dump(mode="json"),
                            "n_samples": self.spec.robustness.samples})

    def n_samples(self, entry: GeneratorEntry) -> int:
        return entry.n_samples or self.spec.samples_per_generator


def benchmark_hash(resolved: dict[str, Any]) -> str:
    """What makes rows comparable: a resolved spec (`ResolvedSpec.resolved`, or a manifest's) without its rows
    (the near-copy rows of `robustness` included), their sample counts, the device and the presentation."""
    data = {k: v for k, v in resolved.items()
            if k not in ("generators", "metrics", "leaderboard", "description", "samples_per_generator", "device",
                         "robustness")}
    return stable_hash(data)


def _line_of(node: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at `path`, or of its deepest existing ancestor."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _pydantic_problems(err: ValidationError, prefix: tuple[Any, ...], root: yaml.Node | None) -> list[SpecProblem]:
    problems = []
    for item in err.errors():
        loc = prefix + tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif item["type"] == "missing":
            msg = "required field is missing"
        problems.append(SpecProblem(loc, _line_of(root, loc), msg))
    return problems


def validate_spec(path: Path, registry: Registry, overrides: dict[str, Any] | None = None) -> ResolvedSpec:
    """Validate structure, plugin names and each plugin's args; raise SpecErrors listing every problem."""
    data, root = read_yaml(Path(path))
    data = with_base(Path(path), data)
    if overrides:
        data = {**data, **overrides}
    file = str(path)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise SpecErrors(file, _pydantic_problems(err, (), root)) from None

    problems: list[SpecProblem] = []
    configs: dict[str, Any] = {}
    refs: list[tuple[str, str, tuple[Any, ...], PluginRef]] = [
        ("dataset", "datasets", ("dataset",), spec.dataset),
        ("encoder", "encoders", ("encoder",), spec.encoder),
    ]
    if spec.reid is not None:
        refs.append(("reid", "reid_filters", ("reid",), spec.reid))
    if spec.downstream is not None:
        refs.append(("task", "tasks", ("downstream", "task"), spec.downstream.task))
    if spec.fidelity.features is not None and spec.generators:
        refs.append(("fidelity.features", "feature_extractors", ("fidelity", "features"), spec.fidelity.features))
    for i, entry in enumerate(spec.generators):
        refs.append((f"generators.{entry.row_name}", "generators", ("generators", i), entry))
    for i, ref in enumerate(spec.metrics):
        refs.append((f"metrics.{ref.plugin}", "metrics", ("metrics", i), ref))
    for i, variant in enumerate(spec.reid_study.variants if spec.reid_study else []):
        for part, role in (("dataset", "datasets"), ("encoder", "encoders"), ("reid", "reid_filters")):
            own = getattr(variant, part) is not None
            loc = ("reid_study", "variants", i, part) if own else (part,)
            refs.append((f"variants.{variant.name}.{part}", role, loc, spec.variant_ref(variant, part)))

    for key, role, loc, ref in refs:
        known = registry.components[role]
        if ref.plugin not in known:
            msg = unknown_name_message(role, ref.plugin, list(known))
            problems.append(SpecProblem(loc + ("plugin",), _line_of(root, loc + ("plugin",)), msg))
            continue
        factory = known[ref.plugin].factory
        if key == "reid" and spec.privacy.head not in factory.heads:
            loc_head = ("privacy", "head")
            problems.append(SpecProblem(loc_head, _line_of(root, loc_head),
                                        f"the re-ID model '{ref.plugin}' has no head '{spec.privacy.head}'; "
                                        f"use one of {', '.join(factory.heads)}"))
        try:
            configs[key] = factory.Config.model_validate(ref.args)
        except ValidationError as err:
            problems.extend(_pydantic_problems(err, loc + ("args",), root))
    problems.extend(_robustness_configs(spec, registry, root, configs))
    if problems:
        raise SpecErrors(file, problems)
    return ResolvedSpec(spec, file, configs)


def _robustness_configs(spec: Spec, registry: Registry, root: yaml.Node | None, configs: dict[str, Any]
                        ) -> list[SpecProblem]:
    """Every near-copy row's validated args into `configs`; a bad entry is one problem, not one per side."""
    if spec.robustness is None:
        return []
    known, plugin = registry.components["generators"], spec.robustness.generator
    if plugin not in known:
        loc = ("robustness", "generator")
        return [SpecProblem(loc, _line_of(root, loc), unknown_name_message("generators", plugin, list(known)))]
    problems: dict[tuple[Any, ...], SpecProblem] = {}
    for i, (row, args) in enumerate(spec.robustness.entries()):
        loc = ("robustness", "perturbations", i % len(spec.robustness.perturbations))
        try:
            configs[f"robustness.{row}"] = known[plugin].factory.Config.model_validate(args)
        except ValidationError as err:
            message = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
            problems.setdefault(loc, SpecProblem(loc, _line_of(root, loc), message))
    return list(problems.values())
