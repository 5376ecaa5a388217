"""Leaderboard tables from run results: one table per benchmark hash, never mixed silently.

Published tables hold aggregates only (one number per generator and metric), never frames or embeddings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from harness.errors import UserError


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    direction: str = ""  # "↑" higher is better, "↓" lower is better, "" neither
    digits: int = 3

    @property
    def header(self) -> str:
        return f"{self.label} {self.direction}".strip()


COLUMNS = [
    Column("generator", "generator"),
    Column("plugin", "plugin"),
    Column("n_samples", "samples"),
    Column("recon_psnr_db", "recon PSNR dB", "↑", 2),
    Column("sample_seconds_per_video", "s/video", "↓", 4),
    Column("generator_hash", "config hash"),
    Column("error", "error"),
]


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    results = []
    for path in paths:
        file = path / "results.json" if path.is_dir() else path
        if not file.is_file():
            raise UserError(f"{path}: no results.json here; pass run directories written by `harness run`.")
        try:
            results.append(json.loads(file.read_text()))
        except json.JSONDecodeError as exc:
            raise UserError(f"{file}: not valid JSON ({exc}); re-run the benchmark to rewrite it.") from None
    return results


def collect_rows(results: list[dict[str, Any]], allow_mixed: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Rows of every run; a later run's row replaces an earlier one with the same generator and config hash."""
    hashes = sorted({r["benchmark"]["benchmark_hash"] for r in results})
    if len(hashes) > 1 and not allow_mixed:
        names = ", ".join(f"{r['benchmark']['name']}={r['benchmark']['benchmark_hash']}" for r in results)
        raise UserError(f"these runs come from different benchmarks ({names}), so their rows are not comparable; "
                        "pass runs of one benchmark, or --allow-mixed to show them with a benchmark column.")
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for result in results:
        for row in result["rows"]:
            bench = result["benchmark"]["benchmark_hash"]
            rows[(bench, row["generator"], row["generator_hash"])] = {**row, "benchmark_hash": bench}
    frame = pd.DataFrame(list(rows.values()))
    return frame, hashes


def table(frame: pd.DataFrame, mixed: bool) -> pd.DataFrame:
    columns = [c for c in COLUMNS if c.key in frame.columns]
    out = pd.DataFrame({c.header: frame[c.key] for c in columns})
    if mixed:
        out.insert(0, "benchmark", frame["benchmark_hash"])
    for c in columns:
        if c.digits and pd.api.types.is_float_dtype(out[c.header]):
            out[c.header] = out[c.header].round(c.digits)
    return out.fillna("")


def render(results: list[dict[str, Any]], fmt: str, allow_mixed: bool = False) -> str:
    frame, hashes = collect_rows(results, allow_mixed)
    shown = table(frame, mixed=len(hashes) > 1)
    bench = results[0]["benchmark"]
    if fmt == "md":
        title = f"## {bench['title']}\n\nbenchmark `{', '.join(hashes)}` · seed {bench['seed']} · " \
                f"dataset `{bench['dataset']}` · encoder `{bench['encoder']}`\n\n"
        return title + tabulate(shown, headers="keys", tablefmt="github", showindex=False) + "\n"
    if fmt == "csv":
        return shown.to_csv(index=False)
    if fmt == "json":
        payload = {"benchmark_hashes": hashes, "title": bench["title"],
                   "columns": [{"key": c.key, "header": c.header, "direction": c.direction} for c in COLUMNS],
                   "rows": json.loads(frame.to_json(orient="records"))}
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    raise UserError(f"unknown leaderboard format '{fmt}'; use md, csv or json.")
