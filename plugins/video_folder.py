"""Built-in `video-folder` generator: score a folder of videos a model already generated, with no code.

Layouts it reads, found from what is in the folder:
- EchoNet-Synthetic's: `FileList.csv` (FileName without extension, EF as an integer percent) and the videos in
  `avi/` or `mp4/` (RGB, grey content in three equal channels);
- EchoNet-Dynamic's: `FileList.csv` and `Videos/`;
- any folder of videos with a CSV naming each file and its EF (`csv`, `file_column`, `ef_column`).

Any container and codec PyAV reads. Videos are decoded and resampled to the run's fps and clip length by the very
function that reads real datasets, and kept in a cached folder keyed by the files' names, sizes and modification
times, so a warm run decodes nothing. Each video's EF is the EF it was requested with; its provenance is the file
name, its SHA-256, and its own fps and frame count.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt

from harness import hookimpl
from harness.cache import file_digest
from harness.components import ComponentConfig, Generator
from harness.context import RunContext
from harness.data import Condition, PixelSamples, VideoSet
from harness.errors import UserError
from harness.hashing import derive_seed
from harness_plugins.echonet import load_clips

log = logging.getLogger("harness")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".gif", ".mpg", ".mpeg", ".m4v")
SUBFOLDERS = ("avi", "mp4", "Videos", "videos", ".")

#: how many skipped files a row's report names
SKIPPED_NAMED = 1000


class VideoFolder(Generator):
    """Every (or a deterministic subset of every) readable video in `root`, as one row."""

    output = "pixels"

    class Config(ComponentConfig):
        root: Path = Field(description="the folder of generated videos")
        csv: str = Field("FileList.csv", description="the CSV (relative to root) naming each file and its EF")
        file_column: str = "FileName"
        ef_column: str = "EF"
        n_samples: PositiveInt | None = Field(None, description="score a deterministic subset of this many videos")

    def __init__(self, config=None):
        super().__init__(config)
        self._skipped: list[str] = []

    # ------------------------------------------------------------------------------------------ the folder

    def _listing(self) -> pd.DataFrame:
        """The CSV as a table of video id, EF and file path; every problem with it is one sentence."""
        root, cfg = Path(self.config.root).expanduser(), self.config
        if not root.is_dir():
            raise UserError(f"video-folder: {root} is not a folder; set generators[].args.root to the folder of "
                            "generated videos.")
        path = root / cfg.csv
        if not path.is_file():
            raise UserError(f"video-folder: {path} does not exist; the folder needs a CSV naming each video and its "
                            "EF (set `csv`, `file_column` and `ef_column` for your own).")
        try:
            raw = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise UserError(f"video-folder: {path} is not a readable CSV ({exc}).") from None
        for column, arg in ((cfg.file_column, "file_column"), (cfg.ef_column, "ef_column")):
            if column not in raw.columns:
                raise UserError(f"video-folder: {path} has no column '{column}' (found "
                                f"{', '.join(map(str, raw.columns))}); set generators[].args.{arg}.")
        ef = pd.to_numeric(raw[cfg.ef_column], errors="coerce")
        bad = raw[cfg.file_column][~ef.between(0, 100)]
        if len(bad):
            raise UserError(f"video-folder: {path}: {len(bad)} EF values are not numbers within 0-100 (e.g. for "
                            f"'{bad.iloc[0]}'); EF is a percentage.")
        files = [self._find(root, str(name)) for name in raw[cfg.file_column]]
        table = pd.DataFrame({"video_id": [Path(str(n)).stem for n in raw[cfg.file_column]], "patient_id": "",
                              "ef": ef.astype(float), "split": "synthetic", "fps": np.nan,
                              "source_file": [str(f) if f else "" for f in files]})
        missing = table["source_file"] == ""
        self._skipped = raw[cfg.file_column][missing].astype(str).tolist()
        for name in self._skipped:
            log.warning("video-folder: skipping %s, which %s names but %s does not hold", name, path.name, root)
        table = table[~missing].reset_index(drop=True)
        if table.empty:
            raise UserError(f"video-folder: none of the {len(raw)} files {path} names is in {root} (looked in "
                            f"{', '.join(SUBFOLDERS)} with the extensions {', '.join(VIDEO_SUFFIXES)}).")
        twice = table["video_id"][table["video_id"].duplicated()]
        if len(twice):
            raise UserError(f"video-folder: {path} names the video '{twice.iloc[0]}' twice; each video needs its own "
                            "file name.")
        return table

    @staticmethod
    def _find(root: Path, name: str) -> Path | None:
        """The file a CSV entry names: as written, or its stem with a video extension, in the layout's folders."""
        candidates = [name] if Path(name).suffix.lower() in VIDEO_SUFFIXES else [name + s for s in VIDEO_SUFFIXES]
        for folder in SUBFOLDERS:
            for candidate in candidates:
                if (root / folder / candidate).is_file():
                    return root / folder / candidate
        return None

    def _decoded(self, ctx: RunContext) -> tuple[VideoSet, pd.DataFrame]:
        """The folder's videos as the run's clips (a cached folder), and their provenance."""
        table = self._listing()
        files = [Path(f) for f in table["source_file"]]
        fingerprint = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        clip = ctx.clip

        def build(folder: Path) -> None:
            videos, report = load_clips(table, clip.fps, clip.frames, clip.height, ctx.progress)
            videos.save(folder)
            (folder / "skipped.txt").write_text("\n".join(report["skipped_files"]))
            digests = pd.DataFrame({"file": [f.name for f in files], "sha256": [file_digest(f) for f in files]})
            digests.to_csv(folder / "sha256.csv", index=False)

        cached = ctx.cached_folder("video-folder", {"root": str(self.config.root), "csv": self.config.csv,
                                                    "files": fingerprint, "table": table.to_dict("list"),
                                                    "clip": [clip.frames, clip.height, clip.width, clip.fps]}, build)
        videos = VideoSet.load(cached)
        self._skipped += [s for s in (cached / "skipped.txt").read_text().splitlines() if s]
        digests = pd.read_csv(cached / "sha256.csv").set_index("file")["sha256"]
        names = [Path(f).name for f in videos.table["source_file"]]
        provenance = pd.DataFrame({"file": names, "sha256": digests.loc[names].to_numpy(),
                                   "source_fps": videos.table["source_fps"].to_numpy(),
                                   "source_frames": videos.table["source_frames"].to_numpy()})
        return videos, provenance

    # ------------------------------------------------------------------------------------------ the generator

    def existing_samples(self, ctx: RunContext) -> list[Condition]:
        videos, provenance = self._decoded(ctx)
        if len(videos) == 0:
            raise UserError(f"video-folder: none of the videos in {self.config.root} could be decoded.")
        order = np.arange(len(videos))
        if self.config.n_samples and self.config.n_samples < len(videos):
            order = np.sort(ctx.rng("video-folder", *provenance["sha256"]).choice(len(videos), self.config.n_samples,
                                                                                   replace=False))
        self._videos, self._provenance = videos, provenance
        # a video's seed comes from its content, so the samples' cache key changes when a file does
        return [Condition(str(videos.table["video_id"].iloc[i]), derive_seed(0, provenance["sha256"].iloc[i]),
                          float(videos.table["ef"].iloc[i])) for i in order]

    def sample(self, conditions: list[Condition], ctx: RunContext) -> PixelSamples:
        index = {v: i for i, v in enumerate(self._videos.table["video_id"].astype(str))}
        rows = [index[c.sample_id] for c in conditions]
        chosen = self._provenance.iloc[rows]
        return PixelSamples.from_conditions(
            np.asarray(self._videos.frames)[rows], conditions, fps=ctx.clip.fps, sources=[[f] for f in chosen["file"]],
            **{column: chosen[column].to_numpy() for column in chosen.columns})

    def report(self) -> dict[str, int | list[str]]:
        # every skipped file is named (a thousand at most: the count says how many more)
        return {"skipped": len(self._skipped), "skipped_files": self._skipped[:SKIPPED_NAMED]} if self._skipped else {}


@hookimpl
def register_generators(register):
    register("video-folder", VideoFolder)
