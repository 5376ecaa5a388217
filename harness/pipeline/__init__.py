"""The benchmark run as a pipeline of phases, each a function from frozen dataclasses to a frozen dataclass.

    real data -> encoding -> re-ID -> real downstream task -> one row per generator -> figures and results
    (or, for a re-ID study: per variant real data -> encoding -> re-ID, then every model on every test split)

Every stage inside a phase is a cached artifact keyed by exactly the inputs its build receives (`stages.py`), so a
re-run is nearly free and a killed run resumes at the stage it was in. Adding a phase means one module here, a
numbered step below, and its fields in `harness.results`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.cache import ArtifactCache, atomic_write_text
from harness.checkpoint import CheckpointPolicy
from harness.context import RunContext, resolve_device, set_threads
from harness.distributed import SINGLE, ProcessGroup
from harness.environment import environment
from harness.errors import UserError
from harness.figures import (
    render_downstream_figures,
    render_figures,
    render_headline_figure,
    render_motion_figure,
    render_robustness_figure,
)
from harness.pipeline.copy import fit_copy
from harness.pipeline.decoded import Decoding
from harness.pipeline.encoding import Encoded, encode_real
from harness.pipeline.fidelity import fit_fidelity
from harness.pipeline.motion import MotionReference, decode_precision, fit_motion
from harness.pipeline.real_data import load_real_data
from harness.pipeline.reid import ReidModel, fit_reid, reid_row_features
from harness.pipeline.robustness import run_robustness
from harness.pipeline.row import RowRequest, RowResult, conditions, run_row
from harness.pipeline.row_metrics import declarations, measured_references
from harness.pipeline.stages import Chosen, Stages
from harness.pipeline.study import describe, study_tests
from harness.pipeline.task import RealTask, fit_real_task
from harness.plugins import Registry
from harness.results import build_manifest, build_results, write_run
from harness.spec import ResolvedSpec

#: `choose(role, plugin, config_key)`: the registered component a spec section names, with its validated config.
Choose = Callable[[str, str, str], Chosen]


@dataclass(frozen=True)
class RunOutcome:
    results: dict[str, Any]
    manifest: dict[str, Any]

    @property
    def executed(self) -> list[str]:
        """Stages computed (not loaded from the cache) by this run."""
        return [s["stage"] for s in self.manifest["stages"] if not s["cached"]]


def run(resolved: ResolvedSpec, registry: Registry, cache: ArtifactCache, run_dir: Path,
        show_progress: bool = True, threads: int | None = None, checkpoints: CheckpointPolicy | None = None,
        group: ProcessGroup = SINGLE, device: str | None = None) -> RunOutcome:
    """Run a validated spec; writes `results.json`, `manifest.json`, `samples/` and `figures/` into `run_dir`.

    In a run over several processes (`group`), each runs this on its own `device`; only rank 0 writes."""
    started = time.time()
    threads = set_threads(threads)
    ctx = RunContext(device=_device(resolved, device), seed=resolved.spec.seed, cache=cache,
                     show_progress=show_progress, checkpoint_policy=checkpoints or CheckpointPolicy(), group=group)
    stages = Stages(cache)
    if group.main:
        run_dir.mkdir(parents=True, exist_ok=True)

    def choose(role: str, plugin: str, config_key: str) -> Chosen:
        return Chosen.from_registry(registry, role, plugin, resolved.configs[config_key])

    record = environment(ctx.device, threads, ctx.seed, group.world)
    phases = run_study if resolved.spec.reid_study is not None else run_generators
    results = phases(resolved, record, stages, choose, ctx, run_dir)
    manifest = build_manifest(resolved, ctx, stages, started, record)
    if group.main:
        write_run(run_dir, results, manifest)
    return RunOutcome(results, manifest)


def run_generators(resolved: ResolvedSpec, record: dict[str, Any], stages: Stages, choose: Choose,
                   ctx: RunContext, run_dir: Path) -> dict[str, Any]:
    """The benchmark: the real reference, then one row per generator."""
    spec = resolved.spec
    # 1. real data
    data = load_real_data(stages, choose("datasets", spec.dataset.plugin, "dataset"), ctx)
    ctx = ctx.using(dataset=data.dataset, clip=data.clip)
    # 2. encoding
    encoded = encode_real(stages, choose("encoders", spec.encoder.plugin, "encoder"), data, ctx)
    ctx = ctx.using(encoder=encoded.encoder.get)
    # 3. the re-ID model and the real reference; the pixel tests decode every clip once for both
    privacy = spec.privacy
    copy_on = privacy.copy_test.enabled and spec.reid is not None and bool(spec.generators)
    motion_on = privacy.motion.enabled and bool(spec.generators)
    features = choose("feature_extractors", spec.fidelity.features.plugin, "fidelity.features") \
        if spec.fidelity.features is not None and spec.generators else None
    decoding = Decoding(encoded.encoder, privacy.motion.frame_gap, decode_precision(privacy.motion, ctx.device),
                        flow_size=privacy.motion.flow_size if motion_on else None,
                        copy_size=privacy.copy_test.size if copy_on else None,
                        positions=motion_on and bool(privacy.motion.position_speeds),
                        clip=features.create().input_shape if features is not None else None)
    boot = spec.privacy.bootstrap(ctx.seed_for("bootstrap"))
    metrics = [choose("metrics", ref.plugin, f"metrics.{ref.plugin}") for ref in spec.metrics]
    references: dict[str, Any] = {}  # the plugin metrics' values for a generator that never saw the training videos
    reid = None
    if spec.reid is not None:
        # 3a. the pixel copy test the privacy columns join with the re-ID model
        copy = fit_copy(stages, encoded, decoding, privacy.copy_test, privacy.reference_frames == "first", ctx) \
            if copy_on else None
        reid = fit_reid(stages, choose("reid_filters", spec.reid.plugin, "reid"), encoded, privacy, ctx,
                        seeds=privacy.reid_seeds, copy=copy)
        ctx = ctx.using(privacy_filter=reid.privacy_filter(ctx))
        references.update(measured_references(
            stages, metrics, "reid", reid.reference.test_first, lambda samples: reid_row_features(reid, samples),
            {"samples": "test", "reid": reid.cache_identity}, spec.samples_per_generator))
    # 3b. the real videos' motion, for motion memorisation
    motion = fit_motion(stages, encoded, decoding, privacy.motion, privacy.calibration, ctx) if motion_on else None
    # 3c. the clip feature space fidelity is measured in, fitted on the real training videos
    fidelity = fit_fidelity(stages, features, encoded, decoding, privacy.knn, boot, metrics,
                            spec.samples_per_generator, ctx) \
        if features is not None else None
    if fidelity is not None and fidelity.error is None:
        references.update(fidelity.summary["metrics"])
    # 4. the downstream task on the real training split
    task = None
    if spec.downstream is not None:
        task = fit_real_task(stages, choose("tasks", spec.downstream.task.plugin, "task"), encoded,
                             spec.downstream, ctx)
    # 5. one row per generator, all asked for the same videos
    rows = []
    for entry in spec.generators:
        asked = conditions(resolved.n_samples(entry), encoded.latents["train"].value, spec.conditions, ctx)
        request = RowRequest(entry.row_name, choose("generators", entry.plugin, f"generators.{entry.row_name}"),
                             resolved.generator_hash(entry.row_name), asked, metrics, boot)
        rows.append(run_row(stages, request, encoded, reid, motion, fidelity, task, ctx))
    # 5b. near-copies of training and held-out videos: does memorisation detection survive what generators do?
    robustness = None
    if spec.robustness is not None:
        robustness = run_robustness(stages, resolved, choose, encoded, reid, motion, boot, ctx, run_dir)
    # 6. per-sample tables and figures (rank 0 writes them)
    for row in rows:
        if row.table is not None and ctx.group.main:
            atomic_write_text(run_dir / "samples" / f"{row.row['generator']}.csv", row.table.to_csv(index=False))
        if reid is not None and (not reid.summary["reliable"] or row.row.get("models_disagree")):
            row.row["privacy_reliable"] = False
    figures = draw_figures(run_dir / "figures", rows, reid, motion, task, encoded, spec.privacy.head) \
        if ctx.group.main else {}
    if robustness is not None and ctx.group.main:
        figures.update(render_robustness_figure(run_dir / "figures", robustness))
    spaces = [space for space, on in (("reid", reid is not None),
                                      ("clip", fidelity is not None and fidelity.error is None)) if on]
    declared = declarations(metrics, spaces, references)
    results = build_results(resolved, record, data.reports, encoded.summary, [r.row for r in rows],
                            reid.summary if reid else None, task.summary if task else None, figures, declared)
    results["motion"] = motion.summary if motion is not None else None
    results["fidelity"] = fidelity.summary if fidelity is not None else None
    if robustness is not None:
        results["robustness"] = robustness
    return results


def draw_figures(folder: Path, rows: list[RowResult], reid: ReidModel | None, motion: MotionReference | None,
                 task: RealTask | None, encoded: Encoded, head: str) -> dict[str, str]:
    """The privacy figures (with a re-ID model), the motion-score histograms, the EF scatter and the filmstrip of
    generated rows."""
    figures: dict[str, str] = {}
    if motion is not None and motion.stats is not None:
        figures.update(render_motion_figure(folder, motion.stats["test_scores"], motion.stats["tau"],
                                            {r.row["generator"]: r.motion_scores for r in rows
                                             if r.motion_scores is not None}))
    if reid is not None:
        figures.update(render_figures(folder, reid.stats, {r.row["generator"]: r.arrays for r in rows if r.arrays},
                                      head))
        figures.update(render_headline_figure(folder, [r.row for r in rows], 100 - reid.privacy.percentile))
    predictions = {"real-full": task.predictions} if task is not None else {}
    predictions.update({r.row["generator"]: r.ef_predictions for r in rows if r.ef_predictions})
    truth = encoded.latents["test"].value.table["ef"].to_numpy(dtype=float)
    figures.update(render_downstream_figures(folder, truth, predictions,
                                             {r.row["generator"]: r.filmstrip for r in rows if r.filmstrip}))
    return figures


def run_study(resolved: ResolvedSpec, record: dict[str, Any], stages: Stages, choose: Choose, ctx: RunContext,
              run_dir: Path) -> dict[str, Any]:
    """Train every re-ID variant, test it on its own test split and (with `cross`) on the other variants'."""
    spec, variants = resolved.spec, []
    for variant in spec.reid_study.variants:
        refs = {part: spec.variant_ref(variant, part) for part in ("dataset", "encoder", "reid")}
        prefix = f"variants.{variant.name}"
        # 1-3. the variant's real data, encoding and re-ID model
        data = load_real_data(stages, choose("datasets", refs["dataset"].plugin, f"{prefix}.dataset"), ctx)
        encoded = encode_real(stages, choose("encoders", refs["encoder"].plugin, f"{prefix}.encoder"), data,
                              ctx.using(dataset=data.dataset, clip=data.clip))
        reid = fit_reid(stages, choose("reid_filters", refs["reid"].plugin, f"{prefix}.reid"), encoded,
                        spec.privacy, ctx.using(dataset=data.dataset, clip=data.clip, encoder=encoded.encoder.get))
        variants.append(describe(variant.name, refs["dataset"].plugin,
                                 resolved.configs[f"{prefix}.dataset"].model_dump(mode="json"), data, encoded, reid))
    # 4. every model on its own and the other test splits
    tests = study_tests(stages, variants, spec.reid_study.cross, spec.privacy, ctx)
    results = build_results(resolved, record, {}, {}, [], None, None, {}, [])
    results["study"] = {"variants": [v.summary for v in variants], "tests": tests}
    return results


def _device(resolved: ResolvedSpec, name: str | None) -> torch.device:
    device = resolve_device(name or resolved.spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{resolved.source}: device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'.")
    return device
