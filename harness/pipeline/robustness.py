"""Phase 5b, robustness of memorisation detection: the spec's near-copy rows (`robustness`), each a perturbation
applied to training videos and the same one applied to held-out videos, scored for privacy only (no downstream
task, no figures of their own) into the Robustness table: a near-copy must be flagged like a copy, a perturbed
held-out video like a held-out one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.cache import atomic_write_text
from harness.context import RunContext
from harness.metrics.intervals import Bootstrap
from harness.pipeline.encoding import Encoded
from harness.pipeline.motion import MotionReference
from harness.pipeline.reid import ReidModel
from harness.pipeline.row import RowRequest, conditions, run_row
from harness.pipeline.stages import Stages
from harness.spec import ResolvedSpec

#: what the Robustness table reports of each near-copy row (with intervals where the row has them)
MEASURES = ("memorised_pct", "content_memorised_pct", "motion_memorised_pct")


def run_robustness(stages: Stages, resolved: ResolvedSpec, choose, encoded: Encoded, reid: ReidModel,
                   motion: MotionReference | None, boot: Bootstrap, ctx: RunContext, run_dir: Path
                   ) -> dict[str, Any]:
    """Every near-copy row of the spec's `robustness` section, summarised; per-sample tables go to
    `samples/robustness/`."""
    spec = resolved.spec.robustness
    asked = conditions(spec.samples, encoded.latents["train"].value, resolved.spec.conditions, ctx)
    lines = []
    for row, args in ctx.progress(spec.entries(), desc="robustness (near-copies)"):
        key = f"robustness.{row}"
        request = RowRequest(row, choose("generators", spec.generator, key), resolved.robustness_hash(row), asked,
                             [], boot, privacy_only=True)
        result = run_row(stages, request, encoded, reid, motion, None, None, ctx)
        if result.table is not None and ctx.group.main:
            atomic_write_text(run_dir / "samples" / "robustness" / f"{spec.table_stem(row)}.csv",
                              result.table.to_csv(index=False))
        lines.append(summarise(row, args, result.row, result.table))
    return {"generator": spec.generator, "samples": spec.samples, "rows": lines}


def summarise(row: str, args: dict[str, str], measured: dict[str, Any], table: pd.DataFrame | None
              ) -> dict[str, Any]:
    """One line of the Robustness table: the row's memorisation numbers with intervals, and how often the re-ID
    model's nearest training video is the sample's own source (a near-copy's ground truth)."""
    line: dict[str, Any] = {"row": row, **args, "error": measured.get("error") or measured.get("motion_error")}
    for key in MEASURES:
        for end in ("", "_low", "_high"):
            line[f"{key}{end}"] = measured.get(f"{key}{end}")
    if table is not None and args.get("source") == "train" and "nearest_pred" in table:
        line["source_found_pct"] = float(100 * np.mean(table["nearest_pred"].astype(str)
                                                       == table["source_ids"].astype(str)))
    return line
