"""Does a run reproduce a published table? Row by row, each headline number of the run against the published
value's interval (the check a researcher makes after running a benchmark on their own machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import UserError
from harness.leaderboard import BUILTIN, load_results

HEADLINE = [c for c in BUILTIN if c.interval]


def load_rows(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """The benchmark hash and rows of a run directory (`results.json`) or of a published `leaderboard.json`."""
    data = load_results([path])[0]
    if "benchmark" in data and "rows" in data:
        return data["benchmark"]["benchmark_hash"], data["rows"]
    if len(data.get("benchmark_hashes", [])) == 1 and "rows" in data:
        return data["benchmark_hashes"][0], data["rows"]
    raise UserError(f"{path}: not the results of one benchmark (a run's results.json, or a leaderboard.json of one "
                    "benchmark).")


def _headline(row: dict[str, Any], other: dict[str, Any]):
    """(metric, (published value, low, high), this run's value) of every number with an interval: the built-in
    columns, then the plugin metrics' (under their column keys)."""
    for column in HEADLINE:
        yield column.label, (column.value(row), *column.bounds(row)), column.value(other)
    for key, cell in (row.get("extra_metrics") or {}).items():
        if isinstance(cell, dict):
            new = ((other.get("extra_metrics") or {}).get(key) or {})
            yield key, (cell.get("value"), cell.get("low"), cell.get("high")), (
                new.get("value") if isinstance(new, dict) else new)


def compare(reference: Path, run: Path) -> pd.DataFrame:
    """One line per row and headline number present in both: the reference's value and interval, the run's value,
    and whether it lies inside."""
    (ref_hash, ref_rows), (run_hash, run_rows) = load_rows(reference), load_rows(run)
    if ref_hash != run_hash:
        raise UserError(f"{run} is a run of benchmark {run_hash}, {reference} of {ref_hash}: only runs of the same "
                        "spec compare.")
    theirs = {r["generator"]: r for r in run_rows}
    lines = []
    for row in ref_rows:
        other = theirs.get(row["generator"])
        for metric, (value, low, high), new in _headline(row, other) if other else ():
            if value is None or low is None or new is None:
                continue
            lines.append({"generator": row["generator"], "metric": metric, "published": value,
                          "low": low, "high": high, "this run": new, "inside": low <= new <= high})
    if not lines:
        raise UserError(f"{reference} and {run} share no row with intervals to compare.")
    return pd.DataFrame(lines)
