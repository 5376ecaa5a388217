"""Write a simulated cohort to disk in EchoNet-Dynamic's or EchoNet-Pediatric's exact layout.

Dynamic: `Videos/<FileName>.avi`, `FileList.csv` (FileName without `.avi`, Split TRAIN/VAL/TEST) and
`VolumeTracings.csv` (FileName with `.avi`, line pairs X1,Y1,X2,Y2 on the ES frame, then the ED frame: EchoNet's
loader takes a file's first traced frame as end-systole and its last as end-diastole).
Pediatric: FileName `<patient>-<accession>-<instance>.avi`, integer Split folds 0-9, point tracings X,Y.
A cohort may also hold a HOLDOUT split (videos no model or threshold ever sees): Split `HOLDOUT`, or fold 10.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from harness.hashing import derive_seed
from harness.videoio import write_avi
from harness.workers import process_map
from harness_plugins.phantom.simulator import (
    EF_MAX,
    EF_MIN,
    Patient,
    contraction,
    ed_es_frames,
    lv_chords,
    lv_contour,
    moved,
    probe_path,
    render_video,
    sample_patients,
)

SPLITS = ("TRAIN", "VAL", "TEST", "HOLDOUT")
TRAIN_FOLDS, VAL_FOLD, TEST_FOLD, HOLDOUT_FOLD = tuple(range(8)), 8, 9, 10


@dataclass(frozen=True)
class CohortVideo:
    patient: Patient
    split: str
    file_stem: str
    noise_seed: int


def build_cohort(seed: int, counts: dict[str, int], twin_fraction: float, prefix: str = "PH",
                 efs: Sequence[float] | None = None) -> list[CohortVideo]:
    """One video per patient; patients are drawn once and dealt to the splits in a seeded random order.

    `efs` (one per video, in output order) replaces the drawn ejection fractions, for conditional sampling.
    """
    rng = np.random.default_rng(derive_seed(seed, "cohort"))
    total = sum(counts.values())
    patients = sample_patients(rng, total, twin_fraction, prefix)
    splits = [s for s in SPLITS for _ in range(counts.get(s, 0))]
    order = rng.permutation(total)
    videos = []
    for slot, idx in enumerate(order):
        patient = patients[idx]
        if efs is not None:
            patient = replace(patient, ef=float(np.clip(efs[slot], EF_MIN, EF_MAX)))
        stem = f"0X{derive_seed(seed, 'file', patient.patient_id):08X}{idx:05d}"
        videos.append(CohortVideo(patient, splits[slot], stem, derive_seed(seed, "noise", patient.patient_id)))
    return videos


def _render_one(job: tuple[CohortVideo, str, int, float, Path]) -> None:
    video, view, n_frames, fps, path = job
    write_avi(path, render_video(video.patient, view, n_frames, fps, video.noise_seed), fps)


def _render_all(videos, view, n_frames, fps, folder: Path, name_of, progress: bool) -> None:
    jobs = [(video, view, n_frames, fps, folder / "Videos" / name_of(video)) for video in videos]
    process_map(_render_one, jobs, lambda done: tqdm(done, total=len(jobs), desc=f"writing phantom {view}",
                                                     disable=not progress, leave=False))


def _traced_frames(patient: Patient, n_frames: int, fps: float) -> tuple[int, int]:
    """The traced frames in EchoNet's order: end-systole first, end-diastole last."""
    ed, es = ed_es_frames(patient, n_frames, fps)
    return es, ed


def _fmt(value: float) -> str:
    return repr(float(value))


def write_dynamic(folder: Path, videos: list[CohortVideo], view: str, n_frames: int, fps: float,
                  progress: bool = True) -> None:
    folder = Path(folder)
    (folder / "Videos").mkdir(parents=True, exist_ok=True)
    _render_all(videos, view, n_frames, fps, folder, lambda v: f"{v.file_stem}.avi", progress)
    with open(folder / "FileList.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"])
        for v in videos:
            p = v.patient
            out.writerow([v.file_stem, _fmt(p.measured_ef), _fmt(p.esv), _fmt(p.edv), 112, 112, _fmt(fps),
                          n_frames, v.split])
    with open(folder / "VolumeTracings.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["FileName", "X1", "Y1", "X2", "Y2", "Frame"])
        for v in videos:
            c, path = contraction(v.patient, n_frames, fps), probe_path(v.patient, n_frames, fps)
            for frame in _traced_frames(v.patient, n_frames, fps):
                for x1, y1, x2, y2 in lv_chords(moved(v.patient, path[frame]), float(c[frame])):
                    out.writerow([f"{v.file_stem}.avi", f"{x1:.4f}", f"{y1:.4f}", f"{x2:.4f}", f"{y2:.4f}", frame])


def pediatric_fold(split: str, index: int) -> int:
    return {"VAL": VAL_FOLD, "TEST": TEST_FOLD, "HOLDOUT": HOLDOUT_FOLD}.get(split,
                                                                         TRAIN_FOLDS[index % len(TRAIN_FOLDS)])


def pediatric_name(v: CohortVideo) -> str:
    return f"CR{v.patient.patient_id}-{v.noise_seed % 100000:05d}-{1:06d}.avi"


def video_id(v: CohortVideo, dialect: str) -> str:
    """The id the EchoNet loader gives the written video (its file name without `.avi`)."""
    return v.file_stem if dialect == "dynamic" else pediatric_name(v).removesuffix(".avi")


def write_pediatric(folder: Path, videos: list[CohortVideo], view: str, n_frames: int, fps: float,
                    progress: bool = True) -> None:
    folder = Path(folder)
    (folder / "Videos").mkdir(parents=True, exist_ok=True)
    name_of = pediatric_name
    _render_all(videos, view, n_frames, fps, folder, name_of, progress)
    rng = np.random.default_rng(derive_seed(len(videos), "demographics"))
    with open(folder / "FileList.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["FileName", "EF", "Sex", "Age", "Weight", "Height", "Split"])
        for i, v in enumerate(videos):
            age = float(rng.uniform(0, 18))
            height = 50 + 110 * (age / 18) + float(rng.normal(0, 5))
            weight = 3.5 + 60 * (age / 18) ** 1.5 + float(rng.normal(0, 3))
            out.writerow([name_of(v), _fmt(v.patient.measured_ef), "MF"[int(rng.integers(2))], f"{age:.2f}",
                          f"{max(weight, 2.0):.1f}", f"{max(height, 40.0):.1f}", pediatric_fold(v.split, i)])
    with open(folder / "VolumeTracings.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["FileName", "X", "Y", "Frame"])
        for v in videos:
            c, path = contraction(v.patient, n_frames, fps), probe_path(v.patient, n_frames, fps)
            for frame in _traced_frames(v.patient, n_frames, fps):
                for x, y in lv_contour(moved(v.patient, path[frame]), float(c[frame])):
                    out.writerow([name_of(v), f"{x:.4f}", f"{y:.4f}", frame])
