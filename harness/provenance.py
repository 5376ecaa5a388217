"""How a leaderboard says where its numbers were made: per-row provenance columns, the one-line warning for rows
from different environments, and the "How these numbers were made" section (records from `harness.environment`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from tabulate import tabulate

from harness.environment import device_label
from harness.metrics.columns import Column

#: Where each row's numbers were made (CSV and JSON; Markdown says it once per run, under the tables).
PROVENANCE = [Column("harness_version", "harness version"), Column("git_revision", "revision"),
              Column("device", "device"), Column("seed", "seed")]


def row_provenance(result: dict[str, Any]) -> dict[str, Any]:
    record = result.get("environment") or {}
    return {"harness_version": record.get("harness_version", result.get("harness_version")),
            "git_revision": record.get("git_revision"), "device": device_label(record) if record else "unrecorded",
            "seed": record.get("seed", result["benchmark"].get("seed"))}


def mixed_environments(results: list[dict[str, Any]]) -> str | None:
    """One line when the runs come from different harness versions or devices (models trained there differ beyond
    what the intervals cover), else None."""
    versions = sorted({str(row_provenance(r)["harness_version"]) for r in results})
    devices = sorted({str(row_provenance(r)["device"]) for r in results})
    differ = [f"harness versions ({', '.join(versions)})" if len(versions) > 1 else "",
              f"devices ({'; '.join(devices)})" if len(devices) > 1 else ""]
    differ = [d for d in differ if d]
    if not differ:
        return None
    return (f"warning: these rows come from different {' and '.join(differ)}; their models were trained "
            "differently, which most intervals do not cover, so rank rows from one environment.")


#: What reproduces exactly and what only within intervals, said under every record.
REPRODUCIBILITY = ("The same record (revision, packages, device and thread count) and seed reproduce these numbers bit "
                   "for bit. Another machine, GPU or thread count trains every model slightly differently; only the "
                   "numbers averaged over several re-ID models (`privacy.reid_seeds`) have intervals that include "
                   "such variation: `harness compare` shows where another environment's run lands.")


def records(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One line per run (harness version and revision, device, torch build, python, seed) and the distinct
    package sets."""
    lines, packages = [], set()
    for result in results:
        record = result.get("environment")
        if not record:
            continue
        torch_build = record["torch_build"]
        revision = (record["git_revision"] or "not a checkout")[:12] + (" (modified)" if record["git_dirty"] else "")
        lines.append({"run": f"{result['benchmark']['name']}-{result['benchmark']['spec_hash'][:8]}",
                      "harness": record["harness_version"], "revision": revision, "device": device_label(record),
                      "torch": f"{torch_build['version']} ({torch_build['cpu_capability']})",
                      "python": record["python"], "seed": record["seed"]})
        packages.add(", ".join(f"{k} {v}" for k, v in record["packages"].items()))
    return lines, sorted(packages)


def provenance(results: list[dict[str, Any]]) -> str:
    """How each run's numbers were made, as Markdown."""
    lines, packages = records(results)
    if not lines:
        return ""
    return ("\n### How these numbers were made\n\n"
            + tabulate(pd.DataFrame(lines), headers="keys", tablefmt="github", showindex=False) + "\n\n"
            + "".join(f"Packages: {p}.\n" for p in packages) + "\n" + REPRODUCIBILITY + "\n")
