"""The two files every run writes: `results.json` (versioned schema, rows typed by `ResultRow`, and the record of
the environment) and `manifest.json` (provenance: spec, environment, and what every stage cost)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from harness import __version__
from harness.cache import atomic_write_text
from harness.spec import ResolvedSpec

RESULTS_SCHEMA_VERSION = 1


class ResultRow(BaseModel):
    """One generator row of `results.json`. Metric fields are absent when their section is not in the spec."""

    model_config = ConfigDict(extra="forbid")

    generator: str
    plugin: str
    generator_hash: str
    n_samples: int  # the samples the row was scored on asking for (a folder's videos, or the benchmark's count)
    n_asked: int | None = None  # the samples the benchmark asks the row for; more than n_samples when a folder is short
    artifacts: dict[str, str]  # cache keys of the generator's fit and samples (for `harness regenerate`)
    generator_report: dict[str, Any] | None = None  # what the generator counted, e.g. skipped unreadable files
    n_returned: int | None = None
    sample_seconds_per_video: float | None = None
    fit_seconds: float | None = None  # the generator's fit stage, when it was built
    peak_rss_mb: float | None = None  # peak process memory while the generator trained and sampled
    cuda_peak_mb: float | None = None
    control: bool = False  # a control generator with known ground truth (`Generator.control`)
    error: str | None
    # privacy, coverage, consistency, fidelity (harness.evaluation)
    tau: float | None = None
    tau_low: float | None = None
    tau_high: float | None = None
    memorised_pct: float | None = None
    memorised_pct_low: float | None = None
    memorised_pct_high: float | None = None
    content_memorised_pct: float | None = None  # any frame replicates a training frame (privacy.content)
    content_memorised_pct_low: float | None = None
    content_memorised_pct_high: float | None = None
    content_tau: float | None = None
    motion_memorised_pct: float | None = None  # moves like a training video (harness.pipeline.motion)
    motion_memorised_pct_low: float | None = None
    motion_memorised_pct_high: float | None = None
    motion_tau: float | None = None
    dynamic_degree: float | None = None  # how much a sample moves (harness.metrics.motion.dynamic_degree)
    dynamic_degree_low: float | None = None
    dynamic_degree_high: float | None = None
    dynamic_degree_gap: float | None = None  # its distance to the real test videos'
    motion_error: str | None = None  # why the row's motion is missing or partial (too short, frozen)
    memorised_pct_train_to_test: float | None = None
    memorised_pct_train_to_test_low: float | None = None
    memorised_pct_train_to_test_high: float | None = None
    recall: float | None = None
    recall_low: float | None = None
    recall_high: float | None = None
    recall_after_filter: float | None = None
    recall_after_filter_low: float | None = None
    recall_after_filter_high: float | None = None
    reference_recall: float | None = None  # the real test videos' recall at this row's sample count
    reference_recall_low: float | None = None
    reference_recall_high: float | None = None
    irs_inf: float | None = None
    irs_inf_low: float | None = None
    irs_inf_high: float | None = None
    reference_irs_inf: float | None = None
    learned_videos: int | None = None
    max_appearances: int | None = None
    consistency: float | None = None
    consistency_gap: float | None = None
    consistency_head: float | None = None
    consistency_swap: float | None = None
    consistency_outside_pct: float | None = None  # outside the real test videos' central range, two-sided
    consistency_outside_pct_low: float | None = None
    consistency_outside_pct_high: float | None = None
    fd: float | None = None
    fd_low: float | None = None
    fd_high: float | None = None
    precision: float | None = None
    knn_recall: float | None = None
    density: float | None = None
    coverage: float | None = None
    video_fd: float | None = None  # the same in the clip feature space (harness.pipeline.fidelity)
    video_fd_low: float | None = None
    video_fd_high: float | None = None
    video_precision: float | None = None
    video_knn_recall: float | None = None
    video_density: float | None = None
    video_coverage: float | None = None
    video_fidelity_error: str | None = None  # why the row's clip-space fidelity is missing
    heads: dict[str, dict[str, float]] | None = None
    per_model: dict[str, list[float]] | None = None  # the pooled numbers as each re-ID model measured them
    models_disagree: str | None = None  # the pooled columns whose re-ID models' intervals share no point
    # the spec's `metrics` (plugin RowMetrics): per column key, {value, low, high, reason} (a bare value in runs
    # written before metrics had intervals)
    extra_metrics: dict[str, float | dict[str, Any] | None] | None = None
    # downstream utility (harness.downstream)
    utility: dict[str, dict[str, Any]] | None = None
    adherence: dict[str, float | int | None] | None = None
    ef_r2: float | None = None
    ef_r2_low: float | None = None
    ef_r2_high: float | None = None
    ef_mae: float | None = None
    ef_mae_low: float | None = None
    ef_mae_high: float | None = None
    adherence_mae: float | None = None
    adherence_mae_low: float | None = None
    adherence_mae_high: float | None = None
    adherence_corr: float | None = None
    adherence_corr_low: float | None = None
    adherence_corr_high: float | None = None
    privacy_reliable: bool | None = None
    recon_psnr_db: float | None = None

    def dump(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


def build_results(resolved: ResolvedSpec, environment: dict[str, Any], dataset_reports: dict[str, Any],
                  encoder: dict[str, Any], rows: list[dict[str, Any]], reid: dict[str, Any] | None,
                  downstream: dict[str, Any] | None, figures: dict[str, str], metrics: list[dict[str, Any]]
                  ) -> dict[str, Any]:
    spec = resolved.spec
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "harness_version": __version__,
        "environment": environment,  # what made these numbers (harness.environment)
        "benchmark": {
            "name": spec.name,
            "benchmark_hash": resolved.benchmark_hash,
            "spec_hash": resolved.spec_hash,
            "seed": spec.seed,
            "dataset": spec.dataset.plugin,
            "encoder": spec.encoder.plugin,
            "title": spec.leaderboard.title or spec.name,
        },
        "dataset": {"splits": dataset_reports,
                    "skipped_videos": sum(r.get("skipped", 0) for r in dataset_reports.values())},
        "encoder": encoder,
        "reid": reid,
        "downstream": downstream,
        "figures": figures,  # {figure: file name under the run's figures/}: aggregates and generated frames only
        "rows": [ResultRow.model_validate({**row, "recon_psnr_db": encoder.get("recon_psnr_db")}).dump()
                 for row in rows],
    }
    if metrics:
        results["metrics"] = metrics  # declarations of the plugin metrics in the rows' `extra_metrics`
    return results


def build_manifest(resolved: ResolvedSpec, ctx, stages, started: float, environment: dict[str, Any]
                   ) -> dict[str, Any]:
    return {
        "spec_file": resolved.source,
        "spec_hash": resolved.spec_hash,
        "benchmark_hash": resolved.benchmark_hash,
        "resolved_spec": resolved.resolved(),
        "seed": ctx.seed,
        "device": str(ctx.device),
        "environment": environment,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 3),
        # per stage: whether this run computed it, and what computing it cost (stored with the artifact)
        "stages": [asdict(s) for s in stages.finish()],
        "models_loaded": stages.models_loaded,  # fit stages whose cached model this run had to load
    }


def write_run(run_dir: Path, results: dict[str, Any], manifest: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2))


def used_artifacts(runs: Path) -> set[tuple[str, str]]:
    """Every (stage, key) the manifests of the run directories under `runs` name: what `harness cache gc` keeps."""
    keep = set()
    for manifest in runs.rglob("manifest.json"):
        try:
            for stage in json.loads(manifest.read_text()).get("stages", []):
                keep.add((stage["stage"], stage["key"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return keep
