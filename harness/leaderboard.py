"""Leaderboard tables from run results: one table per benchmark hash, never mixed silently.

Published tables hold aggregates only (one number per generator and metric), never frames or embeddings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError
from tabulate import tabulate

from harness import downstream, evaluation
from harness.cache import atomic_write_bytes
from harness.errors import UserError
from harness.figures import PUBLISHABLE
from harness.metrics import reconstruction
from harness.metrics.columns import Column, interval_text, plugin_table
from harness.pipeline import fidelity, motion
from harness.pipeline.row import COLUMNS as COST_COLUMNS
from harness.provenance import PROVENANCE, provenance, row_provenance
from harness.results import ResultRow
from harness.robustness_tables import robustness_tables
from harness.study_tables import render_study
from harness.table_notes import group_notes, interval_note

#: The row's identity and bookkeeping; the metric columns are declared next to the code that computes them.
GENERATOR = Column("generator", "generator")
HEAD = [GENERATOR, Column("control", "control"),
        Column("plugin", "plugin", group="cost", definition="the generator plugin that made the row"),
        Column("n_samples", "samples", group="cost", definition="videos the row asked for")]
TAIL = [Column("generator_hash", "config hash", group="cost",
               definition="hash of the generator's configuration: rows with one hash are the same generator"),
        Column("error", "error", group="cost",
               read=lambda row: row.get("error") or row.get("motion_error") or row.get("video_fidelity_error"),
               definition="why a number of the row is missing or partial")]
BUILTIN = [*evaluation.COLUMNS, *fidelity.COLUMNS, *motion.COLUMNS, *downstream.COLUMNS, *reconstruction.COLUMNS,
           *COST_COLUMNS]
def short_of(row: dict[str, Any]) -> str | None:
    """"27 of 30 samples" for a row scored on fewer samples than the benchmark asks (a folder of 27 videos)."""
    asked, have = row.get("n_asked"), row.get("n_samples")
    return f"{int(have)} of {int(asked)} samples" if asked == asked and asked and have < asked else None


def _marked(row: dict[str, Any]) -> str:
    marks = [m for m in ("control" if row.get("control") is True else None, short_of(row)) if m]
    return f"{row['generator']} ({', '.join(marks)})" if marks else row["generator"]


#: The generator as Markdown shows it, a control or a short row marked.
MARKED = Column("generator", "generator", read=_marked)
#: What a row marked as a control is.
CONTROLS = ("come from control generators whose answer is known (they copy, hold out, collapse or make noise): they "
            "check the metrics, they do not compete.")
#: What a row marked "n of N samples" is.
SHORT = ("were scored on fewer samples than the benchmark asks (a folder holding fewer videos, unreadable files "
         "skipped): their numbers are computed on those, recall and real recall at the row's own count, so they "
         "compare; their intervals are wider.")
#: The leaderboard's tables, in order: (group, title); every table repeats the generator column.
GROUPS = [("privacy", "Privacy"), ("peers", "Privacy (peers)"),
          ("peers_clip", "Privacy (peers) in the clip feature space"), ("coverage", "Coverage"),
          ("fidelity", "Fidelity"),
          ("fidelity_reid", "Fidelity in the re-ID space (the seed paper's)"),
          ("temporal", "Consistency and motion"), ("utility", "Utility"),
          ("plugin", "Plugin metrics"), ("plugin_clip", "Plugin metrics in the clip feature space"),
          ("cost", "Cost and record")]


def columns(results: list[dict[str, Any]]) -> list[Column]:
    """Every column, in order: identity, built-in metrics, the plugin metrics the runs declare, bookkeeping."""
    declared: dict[str, Column] = {}
    for result in results:
        for m in result.get("metrics", []):
            space = m.get("space", "reid")
            group = plugin_table(m)
            declared[m["key"]] = Column(m["key"], m["label"], m["direction"], m["digits"], needs_reid=space == "reid",
                                        read=lambda r, key=m["key"]: _extra(r, key), derived_from="extra_metrics",
                                        interval=True, read_bounds=lambda r, key=m["key"]: _extra_bounds(r, key),
                                        group=group, definition=m.get("definition", ""))
    return [*HEAD, *BUILTIN, *declared.values(), *TAIL]


def grouped(every: list[Column], frame: pd.DataFrame) -> list[tuple[str, str, list[Column]]]:
    """The tables of the leaderboard: each group's columns that some row has a value for (a GPU column on a CPU
    run, a content column without a re-ID model, … are left out), ranked columns (↑/↓) before reference values."""
    tables, records = [], frame.to_dict("records")
    for group, title in GROUPS:
        shown = [c for c in every if c.group == group and c.source in frame.columns
                 and any(filled(c.value(r)) for r in records)]
        if shown:
            tables.append((group, title, sorted(shown, key=lambda c: not c.direction)))
    return tables


def filled(value: Any) -> bool:
    """A cell with something in it: not None, NaN (a key some other row has) or empty."""
    return value is not None and value == value and value != ""


def _extra_cell(row: dict[str, Any], key: str) -> dict[str, Any]:
    extra = row.get("extra_metrics")
    cell = extra.get(key) if isinstance(extra, dict) else None
    return cell if isinstance(cell, dict) else {"value": cell}


def _extra(row: dict[str, Any], key: str) -> Any:
    """A plugin metric's value, or the sentence saying why the row has none."""
    cell = _extra_cell(row, key)
    return cell.get("reason") if cell.get("value") is None else cell["value"]


def _extra_bounds(row: dict[str, Any], key: str) -> tuple[Any, Any]:
    cell = _extra_cell(row, key)
    return cell.get("low"), cell.get("high")


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    results = []
    for path in paths:
        file = path / "results.json" if path.is_dir() else path
        if not file.is_file():
            raise UserError(f"{path}: no results.json here; pass run directories written by `harness run` (or a "
                            "results or leaderboard JSON file).")
        try:
            result = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{file}: not valid JSON ({exc}); re-run the benchmark to rewrite it.") from None
        result["_source"] = str(file.parent)  # where its figures are; not part of any published table
        results.append(result)
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
        for raw in result["rows"]:
            try:
                one = ResultRow.model_validate(raw).dump()  # the typed schema: a malformed row fails here
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise UserError(f"{result.get('_source', 'results.json')}: row '{raw.get('generator')}' does not "
                                f"follow the results schema ({where}: {first['msg']}); re-run the benchmark to "
                                "rewrite it.") from None
            bench = result["benchmark"]["benchmark_hash"]
            rows[(bench, one["generator"], one["generator_hash"])] = {
                **one, "benchmark_hash": bench, "benchmark_name": result["benchmark"].get("name", ""),
                **row_provenance(result)}
    frame = pd.DataFrame(list(rows.values()))
    return frame, hashes


def table(frame: pd.DataFrame, shown: list[Column], mixed: bool, inline_intervals: bool) -> pd.DataFrame:
    """The displayed table: one column per metric, its interval inline (`value [lo, hi]`, for Markdown) or in
    two columns of its own (`<header> low`, `<header> high`, for CSV)."""
    present = [c for c in shown if c.source in frame.columns]
    records = frame.to_dict("records")
    columns: dict[str, list[Any]] = {}
    for c in present:
        values = [_rounded(c.value(r), c.digits) for r in records]
        bounds = [tuple(_rounded(b, c.digits) for b in c.bounds(r)) for r in records]
        if c.interval and inline_intervals:
            values = [_with_interval(v, low, high, c.digits) for v, (low, high) in zip(values, bounds, strict=True)]
        columns[c.header] = values
        if c.interval and not inline_intervals:
            columns[f"{c.header} low"] = [low for low, _ in bounds]
            columns[f"{c.header} high"] = [high for _, high in bounds]
    out = pd.DataFrame(columns, index=frame.index)
    if mixed:
        out.insert(0, "benchmark", [f"{name} ({bench})" if name else bench for name, bench in
                                    zip(frame["benchmark_name"], frame["benchmark_hash"], strict=True)])
    if "privacy_reliable" in frame.columns:
        unreliable = frame["privacy_reliable"].eq(False).to_numpy()
        for c in present:
            if c.needs_reid:
                out[c.header] = [f"{v} (unreliable)" if bad else v for v, bad in zip(out[c.header], unreliable,
                                                                                      strict=True)]
    return out.astype(object).where(out.notna(), "")


def _rounded(value: Any, digits: int) -> Any:
    if digits and isinstance(value, float) and value == value:
        return round(float(value), digits)
    return value


def _with_interval(value: Any, low: Any, high: Any, digits: int) -> Any:
    if not isinstance(value, float) or value != value or low is None or high is None:
        return value
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def definitions(shown: list[Column]) -> str:
    """Each column's meaning, once, under its table."""
    return "".join(f"- **{c.header}**: {c.definition}\n" for c in shown if c.definition) + "\n"


def markdown(results: list[dict[str, Any]], frame: pd.DataFrame, every: list[Column], hashes: list[str],
             base: Path) -> str:
    """Narrow tables sharing the generator column (privacy, coverage, fidelity, utility, cost), each with its
    definitions and notes, then the re-ID model, utility per strategy, figures and the record."""
    bench = results[0]["benchmark"]
    text = (f"## {bench['title']}\n\nbenchmark `{', '.join(hashes)}` · seed {bench['seed']} · dataset "
            f"`{bench['dataset']}` · encoder `{bench['encoder']}`\n\n")
    if any(row.get("control") is True for row in frame.to_dict("records")):
        text += f"Rows marked *(control)* {CONTROLS}\n\n"
    if any(short_of(row) for row in frame.to_dict("records")):
        text += f"Rows marked *(n of N samples)* {SHORT}\n\n"
    notes = group_notes(results)
    for group, title, shown in grouped(every, frame):
        cells = table(frame, [MARKED, *shown], mixed=len(hashes) > 1, inline_intervals=True)
        text += (f"### {title}\n\n" + tabulate(cells, headers="keys", tablefmt="github", showindex=False) + "\n\n"
                 + definitions(shown) + notes.get(group, ""))
        if group == "privacy":
            text += robustness_tables(results)
    reid = results[0].get("reid")
    if reid:
        text += interval_note(reid, results[0].get("downstream"))
    return (text + reid_tables(results) + utility_tables(results) + figure_links(results, base)
            + provenance(results))


def utility_frame(results: list[dict[str, Any]]) -> tuple[str, pd.DataFrame] | None:
    """Paper Table 5: the task trained on each training set, tested on the real test split; with how it was done."""
    lines, seen, note = [], set(), ""
    for result in results:
        downstream = result.get("downstream")
        if not downstream or result["benchmark"]["benchmark_hash"] in seen:
            continue
        seen.add(result["benchmark"]["benchmark_hash"])
        real = downstream["real_full"]
        note = (f"task `{downstream['task']}`, tested on the real test split ({real['n']} videos); intervals: "
                f"{real['interval']}; synthetic labels: "
                f"{'re-labelled by the real-full regressor' if downstream['relabel'] else 'as generated'}.")
        lines.append(_utility_line("real", "real-full", real))
    for row in collect_rows(results, allow_mixed=True)[0].to_dict("records"):
        utility = row.get("utility")
        for strategy, value in (utility.items() if isinstance(utility, dict) else ()):  # error rows have none
            lines.append(_utility_line(row["generator"], strategy, value))
    return (note, pd.DataFrame(lines)) if lines else None


def utility_tables(results: list[dict[str, Any]]) -> str:
    utility = utility_frame(results)
    if utility is None:
        return ""
    note, lines = utility
    return ("\n### Downstream utility (train on the set, test on real)\n\n" + note + "\n\n"
            + tabulate(lines, headers="keys", tablefmt="github", showindex=False) + "\n")


def _utility_line(generator: str, training_set: str, value: dict[str, Any]) -> dict[str, Any]:
    ok = value.get("error") is None
    return {"generator": generator, "training set": training_set, "N train": value.get("n_train", ""),
            "R² ↑": interval_text(value["r2"], value["r2_low"], value["r2_high"]) if ok else "",
            "MAE ↓": interval_text(value["mae"], value["mae_low"], value["mae_high"]) if ok else "",
            "RMSE ↓": interval_text(value["rmse"], value["rmse_low"], value["rmse_high"]) if ok else "",
            "error": value.get("error") or ""}


def reid_frames(results: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The re-ID model's quality (paper Table 1) and AUC per head (Table 3), one line per distinct model."""
    quality, heads, seen = [], [], set()
    for result in results:
        reid = result.get("reid")
        if not reid or result["benchmark"]["benchmark_hash"] in seen:
            continue
        seen.add(result["benchmark"]["benchmark_hash"])
        name = f"{reid['plugin']} ({result['benchmark']['encoder']})"
        test, training = reid["test"], reid.get("training", {})
        quality.append({"model": name, "test pairs": test["pairs"],
                        "AUC [95 % CI] ↑": interval_text(test["auc"], test["auc_low"], test["auc_high"]),
                        "accuracy ↑": round(test["accuracy"], 3), "F1 ↑": round(test["f1"], 3),
                        "precision ↑": round(test["precision"], 3), "recall ↑": round(test["recall"], 3),
                        "val AUC ↑": training.get("val_auc", ""), "epochs": training.get("epochs", ""),
                        "s/epoch ↓": training.get("epoch_seconds", ""),
                        "reliable": "yes" if reid.get("reliable", True) else "NO (val AUC too low)"})
        heads.append({"model": name, **{f"AUC {h} ↑": interval_text(v["auc"], v["auc_low"], v["auc_high"])
                                         for h, v in test["heads"].items()}})
    return (pd.DataFrame(quality), pd.DataFrame(heads)) if quality else None


def reid_tables(results: list[dict[str, Any]]) -> str:
    frames = reid_frames(results)
    if frames is None:
        return ""
    quality, heads = frames
    return ("\n### Re-identification model (test pairs, threshold 0.5)\n\n"
            + tabulate(quality, headers="keys", tablefmt="github", showindex=False)
            + "\n\n### AUC per head\n\n" + tabulate(heads, headers="keys", tablefmt="github", showindex=False)
            + "\n")


def publishable_figures(result: dict[str, Any]) -> dict[str, str]:
    """The run's figures that may be published: only those the harness draws (aggregates and generated frames),
    whatever else a run directory from elsewhere lists."""
    listed = result.get("figures") or {}
    return {label: name for label, name in listed.items() if label in PUBLISHABLE and name == f"{label}.png"}


def publish_figures(results: list[dict[str, Any]], out: Path) -> None:
    """Copy each run's publishable figures next to a published table; per-sample tables, arrays and anything else
    in the run directory stay where they are."""
    for result in results:
        names = publishable_figures(result).values()
        if not names or "_source" not in result:
            continue
        bench = result["benchmark"]
        folder = out / "figures" / f"{bench['name']}-{bench['spec_hash'][:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            atomic_write_bytes(folder / name, (Path(result["_source"]) / "figures" / name).read_bytes())
        result["_figures"] = folder


def figure_links(results: list[dict[str, Any]], base: Path) -> str:
    """Markdown links to each run's publishable figures, relative to where the table is written."""
    links = []
    for result in results:
        folder = result.get("_figures") or (Path(result["_source"]) / "figures" if "_source" in result else None)
        for label, name in publishable_figures(result).items():
            if folder is not None:
                target = os.path.relpath(Path(folder) / name, base)
                links.append(f"[{label.replace('_', ' ')}]({target})")
    return ("\nFigures: " + " · ".join(links) + "\n") if links else ""


def render(results: list[dict[str, Any]], fmt: str, allow_mixed: bool = False, base: Path | None = None) -> str:
    """The table in `fmt`; Markdown adds the re-ID tables and links to figures (relative to `base`)."""
    if any("study" in r for r in results):
        if len(results) != 1:
            raise UserError("a re-ID study's results cannot be combined with other runs; pass one study run.")
        return render_study(results[0], fmt)
    frame, hashes = collect_rows(results, allow_mixed)
    every = columns(results)
    if fmt == "md":
        return markdown(results, frame, every, hashes, base or Path.cwd())
    if fmt == "html":
        from harness.leaderboard_html import page  # it builds on this module's tables and notes

        return page(results, frame, every, hashes)
    if fmt == "csv":
        return table(frame, [*every, *PROVENANCE], mixed=len(hashes) > 1, inline_intervals=False).to_csv(index=False)
    if fmt == "json":
        runs = [{"run": f"{r['benchmark']['name']}-{r['benchmark']['spec_hash'][:8]}",
                 "benchmark_hash": r["benchmark"]["benchmark_hash"], "environment": r.get("environment"),
                 # per plugin column: what a generator that never saw the training videos scores
                 "references": {m["key"]: m.get("reference") for m in r.get("metrics", [])}}
                for r in results]
        payload = {"benchmark_hashes": hashes, "title": results[0]["benchmark"]["title"],
                   "columns": [{"key": c.key, "header": c.header, "direction": c.direction, "group": c.group,
                                "definition": c.definition,
                                **({"interval": [f"{c.key}_low", f"{c.key}_high"]}
                                   if c.interval and c.read_bounds is None else {}),
                                **({"in": c.derived_from} if c.derived_from else {})}
                               for c in every],
                   "rows": json.loads(frame.to_json(orient="records")), "runs": runs}
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    raise UserError(f"unknown leaderboard format '{fmt}'; use md, csv, json or html.")
