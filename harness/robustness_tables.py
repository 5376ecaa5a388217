"""The Robustness table of a run with a `robustness` section: per perturbation and strength, how often near-copies
of training videos and the same perturbation of held-out videos are flagged (Markdown here; the page reuses the
frame)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from tabulate import tabulate

from harness.metrics.columns import interval_text
from harness.privacy_spec import UNPERTURBED

#: the Robustness table's measures: key and header
ROBUSTNESS = (("memorised_pct", "memorised %"), ("content_memorised_pct", "content %"),
              ("motion_memorised_pct", "motion %"))


def robustness_frame(results: list[dict[str, Any]]) -> tuple[str, pd.DataFrame] | None:
    """One line per perturbation and strength: the near-copies' memorised, content and motion memorised % (they
    should be flagged), how often the nearest training video was the source, and the same perturbation on held-out
    videos (they should stay at the rate of the same videos unperturbed, the first line); for every run with a
    `robustness` section, with a benchmark column where there are several (e.g. the default next to the seed
    paper's privacy recipe)."""
    runs = [r for r in results if r.get("robustness")]
    if not runs:
        return None
    lines: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        _add_lines(lines, run, len(runs) > 1)
    robustness = runs[0]["robustness"]
    nominal = 100 - (runs[0].get("reid") or {}).get("percentile", 95)
    note = (f"Each near-copy is a training video passed through one perturbation at one strength "
            f"(`{robustness['generator']}`, {robustness['samples']} samples per line and side) on its way to the "
            "harness, read like any video file; a memorisation detector must flag it as it flags an exact copy "
            "(near-copy columns ↑). The same perturbation applied to held-out videos nobody trained on must not be "
            f"flagged more often than those videos are as they are: the *{UNPERTURBED}* line reads the very same "
            "videos of both sides from their files without a perturbation, the paired reference of every line "
            f"(the real rate is {nominal:g} % by construction; the privacy table's holdout row draws other "
            "held-out videos). *source nearest %*: near-copies whose nearest training video (pred head) is the one "
            "they were made from. Intervals as in the privacy table.")
    return note, pd.DataFrame(list(lines.values())).fillna("")


def _add_lines(lines: dict[tuple[str, str], dict[str, Any]], run: dict[str, Any], named: bool) -> None:
    """The run's near-copy rows into `lines`, one line per benchmark, perturbation and strength."""
    bench = run["benchmark"]["name"]
    for row in run["robustness"]["rows"]:
        entry = (bench, f"{row['perturbation']}:{row['strength']}")
        line = lines.setdefault(entry, {**({"benchmark": bench} if named else {}),
                                        "perturbation": row["perturbation"], "strength": row["strength"]})
        side = "near-copy" if row["source"] == "train" else "held-out"
        for key, header in ROBUSTNESS:
            value = row.get(key)
            line[f"{side} {header}"] = "" if value is None else interval_text(value, row.get(f"{key}_low"),
                                                                               row.get(f"{key}_high"), 1)
        if row["source"] == "train":
            line["source nearest %"] = "" if row.get("source_found_pct") is None else round(row["source_found_pct"], 1)
        if row.get("error"):
            line["error"] = "; ".join(filter(None, (line.get("error"), f"{side}: {row['error']}")))


def robustness_tables(results: list[dict[str, Any]]) -> str:
    robustness = robustness_frame(results)
    if robustness is None:
        return ""
    note, lines = robustness
    return ("### Robustness of memorisation detection (near-copies)\n\n"
            + tabulate(lines, headers="keys", tablefmt="github", showindex=False) + "\n\n" + note + "\n\n")
