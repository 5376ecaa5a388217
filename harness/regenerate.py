"""`harness regenerate RUN_DIR SAMPLE_ID`: redraw one sample from its provenance and compare it with the stored one.

The generator is rebuilt from the run's resolved spec and its cached trained state; the sample's conditions (id,
seed, requested EF) come from its provenance record. A generator that draws samples in batches records a `batch`
column, and the whole batch is redrawn, because batched arithmetic is only reproducible with the same batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.cache import ArtifactCache
from harness.context import RunContext
from harness.data import ClipSpec, Condition, PixelSamples, SampleSet, load_samples
from harness.errors import UserError
from harness.plugins import Registry


def _find_row(run_dir: Path, results: dict[str, Any], sample_id: str, row_name: str | None) -> dict[str, Any]:
    found = []
    for row in results["rows"]:
        table = run_dir / "samples" / f"{row['generator']}.csv"
        if table.is_file() and sample_id in set(pd.read_csv(table, dtype={"sample_id": str})["sample_id"]):
            found.append(row)
    if row_name is not None:
        found = [row for row in found if row["generator"] == row_name]
    if not found:
        raise UserError(f"{run_dir}: no row{f' {row_name!r}' if row_name else ''} has a sample '{sample_id}'; the "
                        "ids are listed in samples/<row>.csv.")
    if len(found) > 1:
        names = ", ".join(row["generator"] for row in found)
        raise UserError(f"{run_dir}: sample '{sample_id}' exists in rows {names}; pick one with --row.")
    return found[0]


def regenerate(run_dir: Path, sample_id: str, registry: Registry, cache: ArtifactCache,
               row_name: str | None = None) -> dict[str, Any]:
    try:
        results = json.loads((run_dir / "results.json").read_text())
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{run_dir}: not a run directory (results.json and manifest.json are needed); pass the "
                        "folder `harness run` wrote.") from None
    row = _find_row(run_dir, results, sample_id, row_name)
    keys = row.get("artifacts") or {}
    fit = cache.get("generator-fit", keys.get("generator-fit", ""))
    stored = cache.get("samples", keys.get("samples", ""))
    if fit is None or stored is None:
        raise UserError(f"the cache {cache.root} no longer holds row '{row['generator']}' of this run; re-run the "
                        "spec with the same --cache first.")
    if not fit.meta.get("saved"):
        raise UserError(f"generator '{row['generator']}' keeps no trained state; it is a deterministic function of "
                        "the data, so re-running the spec reproduces it.")
    entry = next(g for g in manifest["resolved_spec"]["generators"] if g["name"] == row["generator"])
    factory = registry.get("generators", entry["plugin"]).factory
    generator = factory(factory.Config(**entry["args"]))
    if generator.uses_privacy_filter:
        raise UserError(f"row '{row['generator']}' was sampled through the run's privacy filter, which regenerate "
                        "cannot rebuild yet; re-run the spec to reproduce it.")
    generator.load_state(fit.path / "state")
    samples = load_samples(stored.path)
    provenance = samples.provenance.astype({"sample_id": str})
    index = int(np.flatnonzero(provenance["sample_id"] == sample_id)[0])
    group = (np.flatnonzero(provenance["batch"] == provenance["batch"][index]) if "batch" in provenance
             else np.array([index]))
    conditions = [Condition(str(r.sample_id), int(r.seed), float(r.requested_ef))
                  for r in provenance.iloc[group].itertuples()]
    ctx = RunContext(device=torch.device("cpu"), seed=manifest["seed"], cache=cache, show_progress=False)
    if isinstance(samples, PixelSamples):
        ctx = ctx.using(clip=ClipSpec.of(samples.videos()))
    redrawn = generator.sample(conditions, ctx)
    new = _values(redrawn)[int(np.flatnonzero(group == index)[0])]
    old = _values(samples)[index]
    return {"row": row["generator"], "sample_id": sample_id, "redrawn_with": len(group),
            "identical": bool(np.array_equal(new, old)),
            "max_abs_diff": float(np.abs(new.astype(np.float32) - old.astype(np.float32)).max())}


def _values(samples: SampleSet | PixelSamples) -> np.ndarray:
    """What a generator stored: latents, or its pixels in the datasets' grayscale."""
    return np.asarray(samples.grayscale().frames if isinstance(samples, PixelSamples) else samples.latents)
