"""`harness check`: does a run directory made elsewhere belong to the benchmark, and do its numbers hold together?

Before a submitted run joins a table (as MLPerf's submission checker does for its results): the results schema,
the benchmark hash (the spec's, and the one its own manifest's resolved spec hashes to), the files a run writes,
the recorded environment, the sample counts the spec asks for, every number inside its valid range, and the
per-sample tables agreeing with the aggregates (memorised %, content and motion memorised % and recall are
recomputed from them). Every problem is one sentence naming the file and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from harness.pipeline.fidelity import COLUMNS as FIDELITY_COLUMNS
from harness.privacy_spec import RobustnessSpec
from harness.results import RESULTS_SCHEMA_VERSION, ResultRow
from harness.spec import ResolvedSpec, benchmark_hash

#: what every run records about the machine and code that made it (harness.environment)
ENVIRONMENT = ("harness_version", "git_revision", "packages", "device", "seed")
#: row fields that are percentages, and fractions
PERCENT = ("memorised_pct", "memorised_pct_train_to_test", "content_memorised_pct", "motion_memorised_pct",
           "source_found_pct", "consistency_outside_pct")
FRACTION = ("recall", "recall_after_filter", "reference_recall", "irs_inf", "precision", "knn_recall", "coverage",
            "dynamic_degree", "dynamic_degree_gap", "video_precision", "video_knn_recall", "video_coverage")
NON_NEGATIVE = ("fd", "video_fd", "video_density", "density", "ef_mae", "adherence_mae", "sample_seconds_per_video",
                "fit_seconds", "peak_rss_mb", "cuda_peak_mb")
#: how far a recomputed aggregate may be from the reported one (CSV round trip of a mean of flags)
TOLERANCE = 1e-6


def check_run(run: Path, spec: ResolvedSpec | None = None) -> list[str]:
    """Every problem of the run directory `run` (empty when it is clean), against `spec` when given."""
    results, problems = _read_json(run / "results.json")
    if results is None:
        return problems
    version = results.get("schema_version") if isinstance(results, dict) else None
    if version != RESULTS_SCHEMA_VERSION:
        return [f"{run / 'results.json'}: schema version {version}, but this harness reads version "
                f"{RESULTS_SCHEMA_VERSION}; re-run the benchmark with this harness to rewrite it."]
    manifest, manifest_problems = _read_json(run / "manifest.json")
    try:
        return problems + manifest_problems + _check_contents(run, results, manifest, spec)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:  # a hand-made or truncated file
        return [*problems, *manifest_problems, f"{run / 'results.json'}: does not have the structure `harness run` "
                                               f"writes ({type(exc).__name__}: {exc}); re-run the benchmark."]


def _check_contents(run: Path, results: dict[str, Any], manifest: dict[str, Any] | None,
                    spec: ResolvedSpec | None) -> list[str]:
    problems = _check_environment(run, results)
    claimed = results.get("benchmark", {}).get("benchmark_hash")
    if spec is not None and claimed != spec.benchmark_hash:
        problems.append(f"{run / 'results.json'}: benchmark.benchmark_hash {claimed} is not the spec's "
                        f"({spec.benchmark_hash}); the run was made with another benchmark definition.")
    resolved = (manifest or {}).get("resolved_spec")
    if manifest is not None and (not isinstance(resolved, dict) or benchmark_hash(resolved) != claimed):
        problems.append(f"{run / 'manifest.json'}: its resolved spec does not hash to the benchmark hash "
                        f"{claimed} that results.json claims; the files were edited or come from different runs.")
    if "study" in results:
        return problems
    expected = _expected_samples(spec, resolved if isinstance(resolved, dict) else None)
    train_videos = results.get("dataset", {}).get("splits", {}).get("train", {}).get("videos")
    head = (results.get("reid") or {}).get("head", "pred")
    for raw in results.get("rows", []):
        problems += _check_row(run, raw, expected, train_videos, head)
    return problems + _check_noise(run, results.get("rows", [])) + _check_robustness(run, results.get("robustness"),
                                                                                      head)


def _check_noise(run: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The `noise` control's ground truth: nothing like a real video, so it must not be the best row on any
    fidelity column; if it is, the feature space cannot tell real from noise and the column measures nothing."""
    noise = {row["generator"] for row in rows if row.get("plugin") == "noise" and row.get("control") is True}
    problems = []
    for column in (c for c in FIDELITY_COLUMNS if c.direction):
        scored = {row["generator"]: row[column.key] for row in rows if isinstance(row.get(column.key), float | int)}
        others = [value for name, value in scored.items() if name not in noise]
        sign = -1 if column.direction == "↓" else 1  # best = highest after the sign
        if others and any(all(sign * scored[name] > sign * other for other in others) for name in noise & set(scored)):
            problems.append(f"{run / 'results.json'}: the noise control is the best row on {column.label} "
                            f"({column.key}); a feature space that ranks noise above every generator measures "
                            "nothing, so the fidelity table cannot be published.")
    return problems


def unchecked_runs(paths: list[Path]) -> list[str]:
    """The problems of every run among `paths` (run directories, or their results.json) that fails the check;
    other files (a published leaderboard.json) were checked when they were published."""
    problems = []
    for path in paths:
        run = path if path.is_dir() else path.parent if path.name == "results.json" else None
        if run is not None and (run / "results.json").is_file():
            problems += check_run(run)
    return problems


def _read_json(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    if not path.is_file():
        return None, [f"{path}: missing; a run directory holds results.json and manifest.json as `harness run` "
                      "writes them."]
    try:
        return json.loads(path.read_text()), []
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [f"{path}: not valid JSON ({exc})."]


def _check_environment(run: Path, results: dict[str, Any]) -> list[str]:
    environment = results.get("environment") or {}
    missing = [key for key in ENVIRONMENT if environment.get(key) in (None, "", {})]
    if missing:
        return [f"{run / 'results.json'}: environment lacks {', '.join(missing)}; the record of what made the "
                "numbers is incomplete."]
    return []


def _expected_samples(spec: ResolvedSpec | None, resolved: dict[str, Any] | None) -> dict[str, Any]:
    """Samples per row the benchmark asks for: `{row: n}` and the default for rows it does not name."""
    source = spec.resolved() if spec is not None else resolved
    if source is None:
        return {"default": None}
    rows = {g["name"]: g["n_samples"] for g in source.get("generators", [])}
    return {**rows, "default": source.get("samples_per_generator")}


def _check_row(run: Path, raw: dict[str, Any], expected: dict[str, Any], train_videos: int | None,
               head: str) -> list[str]:
    name = raw.get("generator", "?")
    where = f"{run / 'results.json'}: row '{name}'"
    try:
        row = ResultRow.model_validate(raw).dump()
    except ValidationError as err:
        first = err.errors()[0]
        return [f"{where} does not follow the results schema ({'.'.join(map(str, first['loc']))}: {first['msg']})."]
    problems = []
    want = expected.get(name, expected["default"])
    asked = row.get("n_asked") or row["n_samples"]
    if want is not None and (asked != want or row["n_samples"] > want):
        # fewer samples than asked (a folder holding fewer videos) is comparable: the tables mark the row
        problems.append(f"{where}: n_samples is {row['n_samples']}, the benchmark asks for {want}.")
    problems += _check_ranges(where, row) + _check_plugin_cells(where, row)
    if row.get("error"):
        return problems  # a failed row has no samples to check
    table_path = run / "samples" / f"{name}.csv"
    if not table_path.is_file():
        return [*problems, f"{table_path}: missing; the per-sample provenance of row '{name}' is required."]
    table = pd.read_csv(table_path)
    if len(table) != row["n_samples"]:
        problems.append(f"{table_path}: {len(table)} samples, but results.json says n_samples {row['n_samples']}.")
    return problems + _check_against_samples(where, row, table, train_videos, head)


def _check_robustness(run: Path, section: dict[str, Any] | None, head: str) -> list[str]:
    """The Robustness table's lines against their per-sample tables (`samples/robustness/`): sample counts, ranges,
    memorised percentages and how often a near-copy's nearest training video is its source."""
    problems: list[str] = []
    for line in (section or {}).get("rows", []):
        name = line.get("row", "?")
        where = f"{run / 'results.json'}: robustness line '{name}'"
        problems += _check_ranges(where, line)
        if line.get("error"):
            continue
        path = run / "samples" / "robustness" / f"{RobustnessSpec.table_stem(name)}.csv"
        if not path.is_file():
            problems.append(f"{path}: missing; the per-sample table of robustness line '{name}' is required.")
            continue
        table = pd.read_csv(path)
        if len(table) != section.get("samples"):
            problems.append(f"{path}: {len(table)} samples, but the robustness section asks for "
                            f"{section.get('samples')}.")
        problems += _check_against_samples(where, line, table, None, head)
        found, nearest = line.get("source_found_pct"), "nearest_pred"  # as the table says: the pred head's
        if found is not None and {nearest, "source_ids"} <= set(table.columns):
            value = 100.0 * float((table[nearest].astype(str) == table["source_ids"].astype(str)).mean())
            if abs(found - value) > TOLERANCE * 100:
                problems.append(f"{where}: source_found_pct is {found}, but its per-sample table gives {value:.6g}.")
    return problems


def _check_ranges(where: str, row: dict[str, Any]) -> list[str]:
    problems = []
    for key in (*PERCENT, *FRACTION, *NON_NEGATIVE):
        high = 100.0 if key in PERCENT else 1.0 if key in FRACTION else math.inf
        for field in (key, f"{key}_low", f"{key}_high"):
            value = row.get(field)
            if value is not None and value == value and not (0.0 <= value <= high):  # NaN: undefined, allowed
                problems.append(f"{where}: {field} = {value} is outside its valid range [0, {high:g}].")
        low, high_end = row.get(f"{key}_low"), row.get(f"{key}_high")
        if low is not None and high_end is not None and low > high_end:
            problems.append(f"{where}: {key}_low {low} is above {key}_high {high_end}.")
    return problems


def _check_plugin_cells(where: str, row: dict[str, Any]) -> list[str]:
    """A plugin metric's cell: a value inside its own interval, or a sentence saying why it has none."""
    problems = []
    for key, cell in (row.get("extra_metrics") or {}).items():
        if not isinstance(cell, dict):  # a bare value: runs written before metrics had intervals
            continue
        value, low, high = cell.get("value"), cell.get("low"), cell.get("high")
        if value is None and not cell.get("reason"):
            problems.append(f"{where}: metric {key} has no value and no reason.")
        elif value is not None and low is not None and high is not None and not low <= value <= high:
            problems.append(f"{where}: metric {key} = {value} lies outside its interval [{low}, {high}].")
    return problems


def _check_against_samples(where: str, row: dict[str, Any], table: pd.DataFrame, train_videos: int | None,
                           head: str) -> list[str]:
    """The aggregates recomputed from the per-sample table: pooled over re-ID models when the run had several."""
    recomputed = {}
    for key, pooled, single in (("memorised_pct", "memorised_models", "memorised"),
                                ("content_memorised_pct", "content_memorised_models", "content_memorised"),
                                ("motion_memorised_pct", None, "motion_memorised")):
        column = pooled if pooled in table.columns else single
        if column in table.columns:
            recomputed[key] = 100.0 * float(table[column].astype(float).mean())
    problems = []
    nearest = f"nearest_{head}"
    if train_videos and nearest in table.columns and len(table):
        first = table[nearest].nunique() / min(train_videos, len(table))  # the first re-ID model's nearest videos
        models = (row.get("per_model") or {}).get("recall")
        if models and abs(models[0] - first) > TOLERANCE:
            problems.append(f"{where}: per_model.recall[0] is {models[0]}, but its per-sample table ({nearest}) "
                            f"gives {first:.6g}.")
        recomputed["recall"] = float(sum(models) / len(models)) if models else first
    for key, value in recomputed.items():
        reported = row.get(key)
        if reported is not None and abs(reported - value) > TOLERANCE * max(1.0, abs(value)):
            problems.append(f"{where}: {key} is {reported}, but its per-sample table gives {value:.6g}.")
    return problems
