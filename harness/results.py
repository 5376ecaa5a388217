"""The two files every run writes: `results.json` (versioned schema) and `manifest.json` (provenance)."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from harness import __version__
from harness.spec import ResolvedSpec

RESULTS_SCHEMA_VERSION = 1
PACKAGES = ("reid-harness", "torch", "torchvision", "diffusers", "numpy", "pandas", "scikit-learn", "pluggy",
            "pydantic", "av")


def build_results(resolved: ResolvedSpec, dataset_reports: dict[str, Any], encoder: dict[str, Any],
                  rows: list[dict[str, Any]], reid: dict[str, Any] | None, downstream: dict[str, Any] | None,
                  figures: dict[str, str]) -> dict[str, Any]:
    spec = resolved.spec
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "harness_version": __version__,
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
        "rows": [{**row, "recon_psnr_db": encoder.get("recon_psnr_db")} for row in rows],
    }


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _git_revision() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def build_manifest(resolved: ResolvedSpec, ctx, stages, started: float) -> dict[str, Any]:
    return {
        "spec_file": resolved.source,
        "spec_hash": resolved.spec_hash,
        "benchmark_hash": resolved.benchmark_hash,
        "resolved_spec": resolved.resolved(),
        "seed": ctx.seed,
        "device": str(ctx.device),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": _versions(),
        "git_revision": _git_revision(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 3),
        # per stage: whether this run computed it, and what computing it cost (stored with the artifact)
        "stages": [asdict(s) for s in stages],
    }
