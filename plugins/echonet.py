"""Reading EchoNet-style folders (Dynamic and Pediatric dialects) into fixed-length clips.

Both dialects are normalised to one table: string or fold splits, FileName with or without `.avi`.
Videos are resampled to the requested frame rate by nearest-time frame selection and cut to a clip from frame 0
(the first frame is the one privacy scoring uses); short videos are padded with their last frame.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from harness.data import VideoSet
from harness.errors import UserError
from harness.videoio import VideoReadError, read_avi

log = logging.getLogger("harness")
SPLIT_NAMES = {"TRAIN": "train", "VAL": "val", "TEST": "test", "HOLDOUT": "holdout"}


def resolve_root(root: Path | None, env_var: str, dataset: str) -> Path:
    if root is None:
        value = os.environ.get(env_var)
        if not value:
            raise UserError(f"{dataset}: no data folder given; set dataset.args.root in the spec "
                            f"or the environment variable {env_var} to the folder holding FileList.csv.")
        root = Path(value)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{dataset}: data folder {root} does not exist; set dataset.args.root "
                        f"(or {env_var}) to the folder holding FileList.csv and Videos/.")
    if not (root / "FileList.csv").is_file():
        raise UserError(f"{dataset}: {root} has no FileList.csv; point dataset.args.root (or {env_var}) at the "
                        "folder that holds FileList.csv and Videos/.")
    return root


def read_filelist(root: Path, fold_splits: dict[int, str], patient_from_name: bool) -> pd.DataFrame:
    """FileList.csv as a table with columns video_id, patient_id, ef, split, fps, source_file."""
    path = root / "FileList.csv"
    try:
        raw = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({exc}); restore the original FileList.csv.") from None
    for column in ("FileName", "EF", "Split"):
        if column not in raw.columns:
            raise UserError(f"{path}: column '{column}' is missing (found {', '.join(map(str, raw.columns))}); "
                            "use the dataset's original FileList.csv.")
    names = raw["FileName"].astype(str)
    stems = names.str.replace(r"\.avi$", "", regex=True)
    split = raw["Split"].map(lambda s: _split_name(s, fold_splits))
    fps = raw["FPS"].astype(float) if "FPS" in raw.columns else np.nan
    patient = stems.str.split("-").str[0] if patient_from_name else stems
    table = pd.DataFrame({
        "video_id": stems, "patient_id": patient, "ef": pd.to_numeric(raw["EF"], errors="coerce"), "split": split,
        "fps": pd.to_numeric(fps, errors="coerce"),
        "source_file": [str(root / "Videos" / f"{s}.avi") for s in stems],
    })
    return table[table["split"].notna()].reset_index(drop=True)


def drop_invalid_ef(table: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Rows whose EF is missing, not a number or outside 0-100 are skipped with a warning; their files are named."""
    valid = table["ef"].between(0, 100)
    bad = table.loc[~valid, "source_file"].map(lambda f: Path(f).name).tolist()
    for (name, ef) in zip(bad, table.loc[~valid, "ef"], strict=True):
        log.warning("skipping %s: %s gives it EF %s (a percentage within 0-100 is needed)", name, path, ef)
    return table[valid].reset_index(drop=True), bad


def _split_name(value, fold_splits: dict[int, str]) -> str | None:
    text = str(value).strip()
    if text.upper() in SPLIT_NAMES:
        return SPLIT_NAMES[text.upper()]
    try:
        return fold_splits.get(int(float(text)))
    except ValueError:
        return None


def resample_clip(frames: np.ndarray, src_fps: float, fps: float | None, length: int) -> tuple[np.ndarray, bool]:
    """Pick frames at the target rate from frame 0, `length` of them; pad with the last frame if short."""
    step = 1.0 if not fps or not src_fps else src_fps / fps
    idx = np.round(np.arange(length) * step).astype(int)
    padded = bool(idx[-1] >= len(frames))
    return frames[np.minimum(idx, len(frames) - 1)], padded


def resize_clip(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    t = torch.from_numpy(np.ascontiguousarray(frames)).float()[:, None]
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def load_clips(table: pd.DataFrame, fps: float | None, length: int, size: int, progress) -> tuple[VideoSet, dict]:
    """Decode every listed video into the run's clips (real videos and folders of generated ones alike); the
    table gains each file's own fps and frame count. Unreadable ones are skipped, counted and named in the report."""
    clips, keep, rates, sources, skipped, padded = [], [], [], [], [], 0
    for i, row in enumerate(progress(table.itertuples(), desc="decoding videos", total=len(table))):
        try:
            frames, native_fps = read_avi(Path(row.source_file))
        except VideoReadError as exc:
            log.warning("skipping unreadable video %s", exc)
            skipped.append(Path(row.source_file).name)
            continue
        src_fps = row.fps if row.fps == row.fps and row.fps > 0 else native_fps  # NaN-safe
        clip, was_padded = resample_clip(frames, src_fps, fps, length)
        padded += was_padded
        clips.append(resize_clip(clip, size))
        keep.append(i)
        rates.append(float(fps or src_fps))
        sources.append((float(src_fps), len(frames)))
    out = table.iloc[keep].copy()
    out["fps"] = rates
    out["source_fps"], out["source_frames"] = [s[0] for s in sources], [s[1] for s in sources]
    frames = np.stack(clips) if clips else np.zeros((0, length, size, size), np.uint8)
    report = {"videos": len(keep), "skipped": len(skipped), "skipped_files": skipped, "padded": padded}
    return VideoSet(frames, out), report
