"""`harness export RUN_DIR --row NAME --out DIR`: a row's privacy-compliant samples as a shareable dataset.

The samples whose P_max is at most τ (optionally all, the memorised ones marked) are written as an
EchoNet-Dynamic-format dataset: `Videos/<id>.avi`, `FileList.csv` and a `privacy.json` saying how they were
filtered. Latent samples are decoded with the run's own encoder; a pixel-space generator's clips are written as it
returned them (in grey). Rows whose generator returns real videos are refused: their frames are patients. The
folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from harness import __version__
from harness.cache import TMP_PREFIX, ArtifactCache
from harness.data import PixelSamples, SampleSet, load_samples
from harness.errors import UserError
from harness.hashing import stable_hash
from harness.plugins import Registry
from harness.videoio import write_avi

SPLITS = ("TRAIN", "VAL", "TEST")


@dataclass(frozen=True)
class ExportOptions:
    include_memorised: bool = False
    ef: Literal["requested", "measured"] = "requested"
    split: tuple[float, float, float] = (1.0, 0.0, 0.0)  # TRAIN, VAL, TEST shares, assigned by hashed sample id


def export_row(run_dir: Path, row_name: str, out: Path, registry: Registry, cache: ArtifactCache,
               options: ExportOptions, progress: bool = True) -> dict[str, Any]:
    results, manifest = _read_run(run_dir)
    row = next((r for r in results["rows"] if r["generator"] == row_name), None)
    if row is None:
        names = ", ".join(r["generator"] for r in results["rows"])
        raise UserError(f"{run_dir}: no row '{row_name}'; its rows are {names}.")
    factory = registry.get("generators", row["plugin"]).factory
    if factory.shows_real_frames:
        raise UserError(f"row '{row_name}' ({row['plugin']}) returns real videos, which are patients' frames; "
                        "only generated rows can be exported.")
    if row.get("error"):
        raise UserError(f"row '{row_name}' failed ({row['error']}); there is nothing to export.")
    if results.get("reid") is None:
        raise UserError(f"{run_dir}: the run has no re-ID model, so its samples were never privacy-filtered; add "
                        "a `reid` section to the spec and run it again.")
    if out.exists():
        raise UserError(f"{out} already exists; choose another --out folder (exports never overwrite).")
    table = pd.read_csv(run_dir / "samples" / f"{row_name}.csv", dtype={"sample_id": str})
    if options.ef == "measured" and "measured_ef" not in table.columns:
        raise UserError(f"{run_dir}: the run has no downstream task, so no measured EF; use --ef requested.")
    keep = np.ones(len(table), bool) if options.include_memorised else ~table["memorised"].to_numpy(dtype=bool)
    if not keep.any():
        raise UserError(f"every sample of row '{row_name}' is memorised (P_max above τ), so nothing passes the "
                        "privacy filter; --include-memorised exports them marked.")
    clips, fps = _pixels(row, manifest, registry, cache, np.flatnonzero(keep), progress)
    chosen = table[keep].reset_index(drop=True)
    ef = chosen["measured_ef" if options.ef == "measured" else "requested_ef"].to_numpy(dtype=float)
    filelist = pd.DataFrame({"FileName": chosen["sample_id"], "EF": np.round(ef, 3), "ESV": 0, "EDV": 0,
                             "FrameHeight": clips.shape[2], "FrameWidth": clips.shape[3], "FPS": fps,
                             "NumberOfFrames": clips.shape[1],
                             "Split": [_split(sid, options.split) for sid in chosen["sample_id"]]})
    if options.include_memorised:
        filelist["Memorised"] = chosen["memorised"].to_numpy(dtype=bool)
    reid = results["reid"]
    report = {"row": row_name, "generator": row["plugin"], "generator_hash": row["generator_hash"],
              "benchmark_hash": results["benchmark"]["benchmark_hash"], "tau": reid["tau"], "head": reid["head"],
              "calibration": reid["calibration"], "percentile": reid["percentile"],
              "kept": int(keep.sum()), "removed": int((~keep).sum()) if not options.include_memorised else 0,
              "memorised_included": int(chosen["memorised"].sum()) if options.include_memorised else 0,
              "reid_model": next((s["key"] for s in manifest["stages"] if s["stage"] == "reid-fit"), None),
              "ef": options.ef, "harness_version": __version__}
    _write(out, clips, fps, filelist, report, progress)
    return report


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        return (json.loads((run_dir / "results.json").read_text()),
                json.loads((run_dir / "manifest.json").read_text()))
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{run_dir}: not a run directory (results.json and manifest.json are needed); pass the "
                        "folder `harness run` wrote.") from None


def _pixels(row: dict[str, Any], manifest: dict[str, Any], registry: Registry, cache: ArtifactCache,
            indices: np.ndarray, progress: bool) -> tuple[np.ndarray, float]:
    """The chosen samples as uint8 grey clips `[n, T, H, W]`, and their fps."""
    stored = cache.get("samples", row["artifacts"].get("samples", ""))
    if stored is None:
        raise UserError(f"the cache {cache.root} no longer holds row '{row['generator']}''s samples; re-run the "
                        "spec with the same --cache first.")
    samples = load_samples(stored.path)
    fps = float(samples.table["fps"].iloc[0])
    if isinstance(samples, PixelSamples):
        return np.asarray(samples.frames)[indices], fps
    return _decode(samples, manifest, registry, cache, indices, progress), fps


def _decode(samples: SampleSet, manifest: dict[str, Any], registry: Registry, cache: ArtifactCache,
            indices: np.ndarray, progress: bool) -> np.ndarray:
    """Decode latent samples with the run's own fitted encoder (on the GPU when there is one)."""
    from harness.context import RunContext, resolve_device

    spec = manifest["resolved_spec"]["encoder"]
    factory = registry.get("encoders", spec["plugin"]).factory
    encoder = factory(factory.Config(**spec["args"]))
    fit_key = next((s["key"] for s in manifest["stages"] if s["stage"] == "encoder-fit"), "")
    fit = cache.get("encoder-fit", fit_key)
    if fit is None:
        raise UserError(f"the cache {cache.root} no longer holds the run's encoder; re-run the spec with the same "
                        "--cache first.")
    if fit.meta.get("saved"):  # an encoder that saved nothing (identity) decodes without state
        encoder.load_state(fit.path / "state")
    ctx = RunContext(resolve_device("auto"), manifest["seed"], cache, show_progress=False)
    chunks = np.array_split(indices, max(1, len(indices) // 32))
    return np.concatenate([encoder.decode(samples.subset(chunk), ctx).frames
                           for chunk in tqdm(chunks, desc="decoding samples", disable=not progress, leave=False)])


def _split(sample_id: str, shares: tuple[float, float, float]) -> str:
    """A deterministic split: the sample id's hash placed on [0, 1) against the cumulative shares."""
    u = int(stable_hash(sample_id), 16) / 16 ** 16
    return next((name for name, edge in zip(SPLITS, np.cumsum(shares), strict=True) if u < edge), SPLITS[-1])


def _write(out: Path, clips: np.ndarray, fps: float, filelist: pd.DataFrame, report: dict[str, Any],
           progress: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{TMP_PREFIX}{out.name}-{uuid.uuid4().hex[:8]}")
    try:
        for name, clip in tqdm(list(zip(filelist["FileName"], clips, strict=True)), desc="writing videos",
                               disable=not progress, leave=False):
            write_avi(tmp / "Videos" / f"{name}.avi", clip, fps)
        (tmp / "Videos").mkdir(parents=True, exist_ok=True)
        filelist.to_csv(tmp / "FileList.csv", index=False)
        (tmp / "privacy.json").write_text(json.dumps(report, indent=2))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
