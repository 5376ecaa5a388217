"""Built-in datasets: the embedded `echo-phantom`, and loaders for local EchoNet-Dynamic / Pediatric folders."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, ValidationError

from harness import hookimpl
from harness.components import Command, ComponentConfig, Dataset
from harness.context import RunContext
from harness.data import VideoSet
from harness.errors import UserError
from harness_plugins.echonet import drop_invalid_ef, load_clips, read_filelist, resolve_root
from harness_plugins.phantom.simulator import recombine
from harness_plugins.phantom.writers import (
    HOLDOUT_FOLD,
    TEST_FOLD,
    TRAIN_FOLDS,
    VAL_FOLD,
    CohortVideo,
    build_cohort,
    video_id,
    write_dynamic,
    write_pediatric,
)


class ClipConfig(ComponentConfig):
    fps: PositiveFloat | None = Field(32.0, description="resample to this frame rate; null keeps the native one")
    clip_length: PositiveInt = Field(32, description="frames per clip, starting at frame 0")
    size: PositiveInt = 112
    max_videos: PositiveInt | None = Field(None, description="cap per split, for quick runs")


class _FolderDataset(Dataset):
    """Shared loading: read the normalised FileList, keep one split, decode its clips."""

    dialect: str = "dynamic"
    published: ClassVar[dict[str, int]] = {}  # split sizes of the public release, for a plan without the data

    def __init__(self, config=None):
        super().__init__(config)
        self._reports: dict[str, Any] = {}

    def _root(self, ctx: RunContext) -> Path:
        raise NotImplementedError

    def _fold_splits(self) -> dict[int, str]:
        return {}

    def load(self, split: str, ctx: RunContext) -> VideoSet:
        root = self._root(ctx)
        table = read_filelist(root, self._fold_splits(), patient_from_name=self.dialect == "pediatric")
        table, invalid_ef = drop_invalid_ef(table[table["split"] == split], root / "FileList.csv")
        if self.config.max_videos:
            table = table.iloc[: self.config.max_videos]
        videos, report = load_clips(table, self.config.fps, self.config.clip_length, self.config.size, ctx.progress)
        if invalid_ef:  # counted like unreadable videos
            report.update(skipped=report["skipped"] + len(invalid_ef), invalid_ef_files=invalid_ef)
        self._reports[split] = report
        return videos

    def load_report(self) -> dict[str, Any]:
        return dict(self._reports)

    def planned_size(self) -> tuple[dict[str, int], int, int, str] | None:
        """Videos per split from FileList.csv (before any video is read), or the dataset's published counts."""
        try:
            root = self._root(None)
        except UserError:
            if not self.published:
                return None
            counts, source = dict(self.published), "the published split sizes: no data folder here"
        else:
            table = read_filelist(root, self._fold_splits(), patient_from_name=self.dialect == "pediatric")
            counts = table["split"].value_counts().to_dict()
            source = f"{root / 'FileList.csv'}"
        counts = {split: min(counts.get(split, 0), self.config.max_videos or 1 << 62) for split in self.splits()}
        return counts, self.config.clip_length, self.config.size, source


class EchoNetDynamic(_FolderDataset):
    """EchoNet-Dynamic from a local folder (`FileList.csv`, `VolumeTracings.csv`, `Videos/`)."""

    published = {"train": 7465, "val": 1288, "test": 1277}

    class Config(ClipConfig):
        root: Path | None = Field(None, description="folder with FileList.csv; else $HARNESS_ECHONET_DYNAMIC")

    def _root(self, ctx):
        return resolve_root(self.config.root, "HARNESS_ECHONET_DYNAMIC", "echonet-dynamic")


class EchoNetPediatric(_FolderDataset):
    """EchoNet-Pediatric (one view) from a local folder; integer folds map to splits as configured."""

    dialect = "pediatric"

    class Config(ClipConfig):
        root: Path | None = Field(None, description="folder with FileList.csv or with A4C/ and PSAX/ "
                                                    "sub-folders; else $HARNESS_ECHONET_PEDIATRIC")
        view: Literal["a4c", "psax"] = "a4c"
        train_folds: list[int] = list(TRAIN_FOLDS)
        val_folds: list[int] = [VAL_FOLD]
        test_folds: list[int] = [TEST_FOLD]
        holdout_folds: list[int] = Field([], description="folds held out from everything (the holdout control's "
                                                         "pool); none by default")

    def splits(self):
        return ("train", "val", "test", "holdout") if self.config.holdout_folds else super().splits()

    def _root(self, ctx):
        root = self.config.root
        if root is not None and (Path(root) / self.config.view.upper() / "FileList.csv").is_file():
            root = Path(root) / self.config.view.upper()
        return resolve_root(root, "HARNESS_ECHONET_PEDIATRIC", "echonet-pediatric")

    def _fold_splits(self):
        c = self.config
        return {**{f: "train" for f in c.train_folds}, **{f: "val" for f in c.val_folds},
                **{f: "test" for f in c.test_folds}, **{f: "holdout" for f in c.holdout_folds}}


class EchoPhantom(_FolderDataset):
    """Simulated echocardiograms with ground truth, written in EchoNet format then read by the same loader."""

    # bump whenever the simulator's output changes (3: ES traced first; holdout split; 4: each patient's own beat
    # timing and probe drift)
    version = "4"

    class Config(ClipConfig):
        view: Literal["a4c", "psax"] = "a4c"
        format: Literal["dynamic", "pediatric"] = "dynamic"
        n_train: PositiveInt = 200
        n_val: PositiveInt = 40
        n_test: PositiveInt = 60
        n_holdout: int = Field(0, ge=0, description="videos held out from everything, for the holdout control")
        n_frames: PositiveInt = Field(96, description="frames per written video")
        written_fps: PositiveFloat = 50.0
        twin_fraction: float = Field(0.08, ge=0, le=0.5, description="share of patients that nearly "
                                                                      "coincide with another patient")

    @property
    def dialect(self) -> str:  # type: ignore[override]
        return self.config.format

    def splits(self):
        return ("train", "val", "test", "holdout") if self.config.n_holdout else super().splits()

    def _fold_splits(self):
        return {**{f: "train" for f in TRAIN_FOLDS}, VAL_FOLD: "val", TEST_FOLD: "test", HOLDOUT_FOLD: "holdout"}

    def write(self, folder: Path, videos: list[CohortVideo], progress: bool) -> None:
        c = self.config
        writer = write_dynamic if c.format == "dynamic" else write_pediatric
        writer(folder, videos, c.view, c.n_frames, c.written_fps, progress=progress)

    def planned_size(self) -> tuple[dict[str, int], int, int, str] | None:
        counts = {split.lower(): n for split, n in self._counts().items()}
        return {split: counts[split] for split in self.splits()}, self.config.clip_length, self.config.size, \
            "the spec (simulated)"

    def _counts(self) -> dict[str, int]:
        c = self.config
        return {"TRAIN": c.n_train, "VAL": c.n_val, "TEST": c.n_test, "HOLDOUT": c.n_holdout}

    def _cohort(self, ctx: RunContext) -> list[CohortVideo]:
        return build_cohort(ctx.seed_for("echo-phantom"), self._counts(), self.config.twin_fraction, "PH")

    def _root(self, ctx):
        key = {"config": self.config.model_dump(mode="json"), "seed": ctx.seed_for("echo-phantom"),
               "version": self.version}
        return ctx.cached_folder("echo-phantom", key, lambda tmp: self.write(tmp, self._cohort(ctx), ctx.show_progress))

    def _written(self, name: str, key: dict[str, Any], videos, ctx: RunContext) -> VideoSet:
        """Videos written once into a cached folder (`videos` makes them) and loaded like the dataset's own."""
        c = self.config
        key = {**key, "config": c.model_dump(mode="json"), "version": self.version}
        folder = ctx.cached_folder(name, key, lambda tmp: self.write(tmp, videos(), ctx.show_progress))
        table = read_filelist(folder, self._fold_splits(), patient_from_name=self.dialect == "pediatric")
        loaded, _ = load_clips(table, c.fps, c.clip_length, c.size, ctx.progress)
        return loaded

    def fresh(self, efs: list[float], ctx: RunContext, name: str) -> VideoSet:
        """New patients from the dataset's distribution (never in it), with the requested EFs, loaded the same way."""
        seed = ctx.seed_for("phantom-fresh", name)
        return self._written("phantom-fresh", {"seed": seed, "efs": efs}, lambda: build_cohort(
            seed, {"TRAIN": len(efs)}, self.config.twin_fraction, "FR", efs), ctx)

    def recombined(self, sources: list[str], keep: Literal["motion", "content"], efs: list[float],
                   ctx: RunContext, name: str) -> VideoSet:
        """New videos that keep the motion (EF, heart rate, phase, beat timing, probe path) or the content (anatomy,
        position, texture) of the given videos of the dataset; the rest, and the acquisition noise, come from a new
        patient with the requested EF."""
        known = {video_id(v, self.dialect): v for v in self._cohort(ctx)}
        missing = sorted(set(sources) - set(known))
        if missing:
            raise UserError(f"echo-phantom: {len(missing)} source videos are not in the dataset (first: "
                            f"{missing[0]}).")
        seed = ctx.seed_for("phantom-recombined", keep, name)

        def videos() -> list[CohortVideo]:
            new = build_cohort(seed, {"TRAIN": len(sources)}, 0.0, "RC", efs)
            out = []
            for video, source in zip(new, sources, strict=True):
                old, fresh = known[source].patient, video.patient
                content, motion = (fresh, old) if keep == "motion" else (old, fresh)
                out.append(replace(video, patient=recombine(content, motion, fresh.patient_id)))
            return out

        return self._written("phantom-recombined", {"seed": seed, "sources": sources, "keep": keep, "efs": efs},
                             videos, ctx)


class WritePhantom(Command):
    """`harness data phantom`: write a simulated cohort to a folder, in EchoNet format."""

    help = "write a simulated echo dataset in EchoNet format"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--format", choices=["dynamic", "pediatric"], default="dynamic")
        parser.add_argument("--view", choices=["a4c", "psax"], default="a4c")
        parser.add_argument("--n-train", type=int, default=200)
        parser.add_argument("--n-val", type=int, default=40)
        parser.add_argument("--n-test", type=int, default=60)
        parser.add_argument("--n-holdout", type=int, default=0)
        parser.add_argument("--n-frames", type=int, default=96)
        parser.add_argument("--fps", type=float, default=50.0)
        parser.add_argument("--twin-fraction", type=float, default=0.08)
        parser.add_argument("--seed", type=int, default=0)

    def __call__(self, args: argparse.Namespace) -> int:
        try:
            config = EchoPhantom.Config(view=args.view, format=args.format, n_train=args.n_train, n_val=args.n_val,
                                        n_test=args.n_test, n_holdout=args.n_holdout, n_frames=args.n_frames,
                                        written_fps=args.fps, twin_fraction=args.twin_fraction)
        except ValidationError as err:
            first = err.errors()[0]
            flag = {"written_fps": "fps"}.get(str(first["loc"][0]), str(first["loc"][0])).replace("_", "-")
            raise UserError(f"harness data phantom: --{flag}: {first['msg']}.") from None
        phantom = EchoPhantom(config)
        counts = phantom._counts()
        started = time.perf_counter()
        phantom.write(args.out, build_cohort(args.seed, counts, args.twin_fraction, "PH"), progress=True)
        total, seconds = sum(counts.values()), time.perf_counter() - started
        print(f"wrote {total} {args.view} videos ({args.format} format) to {args.out} in {seconds:.1f}s "
              f"({total / seconds:.1f} videos/s)")
        return 0


@hookimpl
def register_commands(register):
    register("data phantom", WritePhantom)


@hookimpl
def register_datasets(register):
    register("echo-phantom", EchoPhantom)
    register("echonet-dynamic", EchoNetDynamic)
    register("echonet-pediatric", EchoNetPediatric)
