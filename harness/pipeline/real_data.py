"""Phase 1, real data: every split of the spec's dataset as fixed-length clips, each a cached stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.components import Dataset
from harness.context import RunContext
from harness.data import ClipSpec, VideoSet
from harness.errors import UserError
from harness.pipeline.stages import Chosen, Stages, Stored


@dataclass(frozen=True)
class RealData:
    dataset: Dataset
    videos: dict[str, Stored[VideoSet]]
    reports: dict[str, dict[str, Any]]  # per split: videos read, skipped

    @property
    def clip(self) -> ClipSpec:
        return ClipSpec.of(self.videos["train"].value)


def load_real_data(stages: Stages, chosen: Chosen[Dataset], ctx: RunContext) -> RealData:
    videos, reports = {}, {}
    dataset = chosen.create()
    for split in dataset.splits():
        # read and written by one process: the others of a multi-process run would each write a copy in scratch
        artifact = stages.run(f"dataset-{split}", _load_split, external=True, alone=True, dataset=chosen,
                              split=split, ctx=ctx)
        videos[split] = Stored(artifact.key, VideoSet.load(artifact.path))
        reports[split] = artifact.meta["report"]
    return RealData(dataset, videos, reports)


def _load_split(folder: Path, dataset: Chosen[Dataset], split: str, ctx: RunContext) -> dict[str, Any]:
    loader = dataset.create()
    loaded = loader.load(split, ctx)
    if len(loaded) == 0:
        raise UserError(f"dataset '{dataset.name}': split '{split}' has no readable videos; check the dataset folder "
                        "and the Split column of its FileList.csv.")
    loaded.save(folder)
    return {"report": loader.load_report().get(split, {"videos": len(loaded)})}
