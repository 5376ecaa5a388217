"""The spec's plugin row metrics (`metrics`), computed for one row in one feature space, and their declarations.

Every metric of a space sees one `RowFeatures` (so what they share, nearest neighbours say, is computed once) in one
cached stage per row and space. A metric's column key is its plugin name in the re-ID space and `clip/<name>` in
the clip feature space; a results row holds, under each key, the value, its interval and why it is missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.components import Measured, RowFeatures, RowMetric
from harness.errors import UserError
from harness.pipeline.stages import Chosen, Stages, Stored

#: what each feature space is called in a column's label (when the metric is computed in several) and definition
SPACE_NAMES = {"reid": (" (re-ID)", "the re-ID model's first-frame features"),
               "clip": (" (clip)", "the clip features fidelity is measured in")}


def metric_key(name: str, space: str) -> str:
    return name if space == "reid" else f"{space}/{name}"


def in_space(metrics: list[Chosen[RowMetric]], space: str) -> list[Chosen[RowMetric]]:
    return [m for m in metrics if space in m.factory.spaces]


def row_metric_cells(stages: Stages, metrics: list[Chosen[RowMetric]], space: str,
                     features: Callable[[], RowFeatures], identity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every metric of `space` for one row: `{key: {"value", "low", "high", "reason"}}`, a cached stage identified
    by `identity` (the cache keys of what `features()` reads; it is called only when the stage is built)."""
    chosen = in_space(metrics, space)
    if not chosen:
        return {}
    keyed = Stored(json.dumps(identity, sort_keys=True), features)
    return stages.run("row-metric", _cells, metrics=chosen, space=space, features=keyed).meta["cells"]


def measure(metrics: list[Chosen[RowMetric]], features: RowFeatures) -> dict[str, dict[str, Any]]:
    """The cells of `metrics` on `features`, computed now (not cached): one metric's UserError is its cell's
    reason, the others still run."""
    cells = {}
    for chosen in in_space(metrics, features.space):
        try:
            out = chosen.create().compute(features)
        except UserError as exc:
            out = Measured(None, reason=str(exc))
        cells[metric_key(chosen.name, features.space)] = _cell(chosen.name, out)
    return cells


def _cells(folder: Path, metrics: list[Chosen[RowMetric]], space: str,
           features: Stored[Callable[[], RowFeatures]]) -> dict[str, Any]:
    return {"cells": measure(metrics, features.value())}


def _cell(name: str, out: float | Measured | None) -> dict[str, Any]:
    measured = out if isinstance(out, Measured) else Measured(None if out is None else float(out))
    value = None if measured.value is None else float(measured.value)
    if value is not None and not math.isfinite(value):
        return {"value": None, "low": None, "high": None,
                "reason": measured.reason or f"metric '{name}' gave {value} without saying why."}
    return {"value": value, "low": measured.low if value is not None else None,
            "high": measured.high if value is not None else None,
            "reason": measured.reason if value is None else None}


def declarations(metrics: list[Chosen[RowMetric]], spaces: list[str],
                 references: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What results.json says about each column: key, label, direction, digits, table, feature space, definition
    (the docstring's first paragraph), and what a generator independent of the training videos scores."""
    out = []
    for space in spaces:
        suffix, where = SPACE_NAMES[space]
        for m in in_space(metrics, space):
            doc = " ".join((m.factory.__doc__ or "").strip().split("\n\n")[0].split())
            several = len(m.factory.spaces) > 1
            key = metric_key(m.name, space)
            out.append({"key": key, "label": m.factory.label + (suffix if several else ""),
                        "direction": m.factory.direction, "digits": m.factory.digits, "group": m.factory.group,
                        "space": space, "definition": f"{doc} In {where}." if several else doc,
                        "reference": references.get(key)})
    return out


def null_references(metrics: list[Chosen[RowMetric]], space: str) -> dict[str, dict[str, Any]]:
    """The values a generator independent of the training videos has by construction, where a metric has one."""
    out = {}
    for m in in_space(metrics, space):
        null = m.create().null()
        if null is not None:
            out[metric_key(m.name, space)] = {"value": float(null), "low": None, "high": None, "reason": None,
                                              "source": "by construction"}
    return out


def measured_references(stages: Stages, metrics: list[Chosen[RowMetric]], space: str, test: torch.Tensor,
                        features_of: Callable[[torch.Tensor], RowFeatures], identity: dict[str, Any], n_samples: int
                        ) -> dict[str, dict[str, Any]]:
    """The real `test` videos measured as a row (`features_of(samples)` is what a metric sees of a row), for the
    metrics without a null value; by construction for the others. At most `n_samples` of them, drawn once, as many
    as a row has: a number that grows with the samples (β-recall's coverage) then compares with the rows'."""
    nulls = null_references(metrics, space)
    measured = [m for m in metrics if metric_key(m.name, space) not in nulls]
    if len(test) > n_samples:
        drawn = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n_samples]
        test = test[drawn.to(test.device)]
    cells = row_metric_cells(stages, measured, space, lambda: features_of(test), {**identity, "reference": n_samples})
    return {**nulls, **{k: {**v, "source": "real test videos"} for k, v in cells.items()}}
