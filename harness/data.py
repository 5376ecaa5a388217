"""The data that flows between stages: clips of real videos, their latents, and generated samples.

Every set is an array plus a table with one row per video; the table is what makes a sample traceable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

TABLE_COLUMNS = ["video_id", "patient_id", "ef", "split", "fps", "source_file"]


def _check_table(table: pd.DataFrame, n: int, what: str) -> pd.DataFrame:
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{what} table lacks columns {missing}")
    if len(table) != n:
        raise ValueError(f"{what} has {n} videos but its table has {len(table)} rows")
    return table.reset_index(drop=True)


def _save_table(table: pd.DataFrame, path: Path) -> None:
    path.write_text(table.to_json(orient="split", index=False))


def _load_table(path: Path) -> pd.DataFrame:
    payload = json.loads(path.read_text())
    return pd.DataFrame(payload["data"], columns=payload["columns"])


@dataclass
class VideoSet:
    """Fixed-length grayscale clips `uint8 [N, T, H, W]` and their table."""

    frames: np.ndarray
    table: pd.DataFrame

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.dtype != np.uint8:
            raise ValueError(f"VideoSet frames must be uint8 [N,T,H,W], got {self.frames.dtype} {self.frames.shape}")
        self.table = _check_table(self.table, len(self.frames), "VideoSet")

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, indices: np.ndarray | range) -> VideoSet:
        """The chosen videos: in memory, or for a range a view (a memory-mapped set stays on disk)."""
        if isinstance(indices, range) and indices.step == 1:
            return VideoSet(self.frames[indices.start:indices.stop], self.table.iloc[indices.start:indices.stop])
        indices = np.asarray(indices, dtype=np.int64)
        return VideoSet(np.asarray(self.frames[indices]), self.table.iloc[indices])

    def save(self, folder: Path) -> None:
        np.save(folder / "frames.npy", self.frames)
        _save_table(self.table, folder / "table.json")

    @classmethod
    def load(cls, folder: Path) -> VideoSet:
        # Memory-mapped: a full-size dataset does not need to fit in RAM.
        return cls(np.load(folder / "frames.npy", mmap_mode="r"), _load_table(folder / "table.json"))


@dataclass
class LatentSet:
    """Encoded clips `float16 [N, T, C, h, w]` and the same table as the videos they came from."""

    latents: np.ndarray
    table: pd.DataFrame

    def __post_init__(self) -> None:
        if self.latents.ndim != 5:
            raise ValueError(f"LatentSet latents must be [N,T,C,h,w], got shape {self.latents.shape}")
        self.table = _check_table(self.table, len(self.latents), "LatentSet")

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def clip_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    def subset(self, indices: np.ndarray, ef: np.ndarray | None = None) -> LatentSet:
        """The chosen videos (in memory), optionally with other EF labels (e.g. a regressor's)."""
        table = self.table.iloc[indices].copy()
        if ef is not None:
            table["ef"] = np.asarray(ef, dtype=float)
        return LatentSet(np.asarray(self.latents[indices]), table)

    def save(self, folder: Path) -> None:
        np.save(folder / "latents.npy", np.ascontiguousarray(self.latents, dtype=np.float16))
        _save_table(self.table, folder / "table.json")

    @classmethod
    def load(cls, folder: Path) -> LatentSet:
        return cls(np.load(folder / "latents.npy", mmap_mode="r"), _load_table(folder / "table.json"))


PROVENANCE_COLUMNS = ["sample_id", "seed", "requested_ef", "source_ids"]


@dataclass
class SampleSet(LatentSet):
    """Generated latents plus one provenance record per sample (seed, requested EF, sources, sampler...).

    Provenance makes each sample regenerable and independent of file order.
    """

    provenance: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __post_init__(self) -> None:
        super().__post_init__()
        missing = [c for c in PROVENANCE_COLUMNS if c not in self.provenance.columns]
        if missing:
            raise ValueError(f"SampleSet provenance lacks columns {missing}")
        if len(self.provenance) != len(self.latents):
            raise ValueError("SampleSet provenance must have one row per sample")
        self.provenance = self.provenance.reset_index(drop=True)

    @classmethod
    def from_conditions(cls, latents: np.ndarray, conditions: list[Condition], *, fps: float,
                        ef: np.ndarray | list[float] | None = None, sources: list[list[str]] | None = None,
                        **provenance: object) -> SampleSet:
        """A generator's output in one call: clips `[N, T, C, h, w]` in the order of `conditions`.

        :param fps: frame rate of the clips.
        :param ef: the EF each sample shows (default: the requested one).
        :param sources: ids each sample was made from (training videos, a conditioning frame...); default none.
        :param provenance: further per-sample provenance columns (a value or one per sample), e.g. `sampler`,
            `steps`, `model_hash`, `batch`.
        """
        table, records = _records(conditions, fps, ef, sources, provenance)
        return cls(np.asarray(latents).astype(np.float16), table, records)

    def save(self, folder: Path) -> None:
        super().save(folder)
        _save_table(self.provenance, folder / "provenance.json")

    @classmethod
    def load(cls, folder: Path) -> SampleSet:
        base = LatentSet.load(folder)
        return cls(base.latents, base.table, _load_table(folder / "provenance.json"))


def _records(conditions: list[Condition], fps: float, ef, sources: list[list[str]] | None,
             provenance: dict[str, object]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table and provenance of generated clips, one row per condition, in order."""
    ids = [c.sample_id for c in conditions]
    requested = [c.ef for c in conditions]
    table = pd.DataFrame({"video_id": ids, "patient_id": "", "ef": np.asarray(requested if ef is None else ef,
                                                                              dtype=float),
                          "split": "synthetic", "fps": float(fps), "source_file": ""})
    records = pd.DataFrame({"sample_id": ids, "seed": [c.seed for c in conditions], "requested_ef": requested,
                            "source_ids": [";".join(s) for s in sources] if sources else "", **provenance})
    return table, records


#: ITU-R BT.601 luma: RGB video (EchoNet stores grey echo in three equal channels) to the datasets' grayscale.
LUMA = np.array([0.299, 0.587, 0.114])


@dataclass
class PixelSamples:
    """A pixel-space generator's output: uint8 clips, grayscale `[N, T, H, W]` or RGB `[N, T, H, W, 3]`, with the
    table and provenance of a SampleSet. The core checks them against the run's clips and encodes them."""

    frames: np.ndarray
    table: pd.DataFrame
    provenance: pd.DataFrame

    @classmethod
    def from_conditions(cls, frames: np.ndarray, conditions: list[Condition], *, fps: float,
                        ef: np.ndarray | list[float] | None = None, sources: list[list[str]] | None = None,
                        **provenance: object) -> PixelSamples:
        """Like `SampleSet.from_conditions`, for uint8 pixel clips at the run's size, length and fps (`ctx.clip`)."""
        table, records = _records(conditions, fps, ef, sources, provenance)
        return cls(np.asarray(frames), table, records)

    def __len__(self) -> int:
        return len(self.frames)

    def grayscale(self) -> PixelSamples:
        """The clips in the datasets' channels (grayscale), rounded to uint8."""
        if self.frames.ndim == 4:
            return self
        grey = np.rint(np.asarray(self.frames, dtype=np.float32) @ LUMA.astype(np.float32))
        return PixelSamples(np.clip(grey, 0, 255).astype(np.uint8), self.table, self.provenance)

    def videos(self) -> VideoSet:
        return VideoSet(self.grayscale().frames, self.table)

    def save(self, folder: Path) -> None:
        self.videos().save(folder)
        _save_table(self.provenance, folder / "provenance.json")

    @classmethod
    def load(cls, folder: Path) -> PixelSamples:
        videos = VideoSet.load(folder)
        return cls(videos.frames, videos.table, _load_table(folder / "provenance.json"))


def load_samples(folder: Path) -> SampleSet | PixelSamples:
    """A generator's stored output, latent or pixel."""
    return PixelSamples.load(folder) if (folder / "frames.npy").is_file() else SampleSet.load(folder)


@dataclass(frozen=True)
class ClipSpec:
    """The clips a run works with, which a pixel-space generator must produce: `[frames, height, width]` at `fps`."""

    frames: int
    height: int
    width: int
    fps: float

    @classmethod
    def of(cls, videos: VideoSet) -> ClipSpec:
        _, frames, height, width = videos.frames.shape
        return cls(frames, height, width, float(videos.table["fps"].iloc[0]))


@dataclass(frozen=True)
class Condition:
    """One requested video: the generator must honour the seed and should honour the EF."""

    sample_id: str
    seed: int
    ef: float
