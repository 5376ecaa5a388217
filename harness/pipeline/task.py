"""Phase 4, the real downstream task: the task trained on the real training split (the ceiling row, and the meter
of every sample's label), and the same task trained on any selection of videos, always tested on real test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.components import Task
from harness.context import RunContext
from harness.data import LatentSet
from harness.hashing import stable_hash
from harness.pipeline.encoding import Encoded
from harness.pipeline.stages import Chosen, Fitted, Stages, Stored
from harness.spec import DownstreamSpec


@dataclass(frozen=True)
class Selection:
    """Some videos of a cached set, optionally re-labelled: what one strategy trains on."""

    source: Stored[LatentSet]
    indices: np.ndarray  # sorted
    labels: Stored[np.ndarray] | None = None  # one per video of `source`; None keeps the set's own labels

    @property
    def cache_identity(self) -> dict[str, Any]:
        return {"source": self.source.key, "indices": stable_hash(self.indices.tolist()),
                "labels": None if self.labels is None else self.labels.key}

    def videos(self) -> LatentSet:
        labels = None if self.labels is None else self.labels.value[self.indices]
        return self.source.value.subset(self.indices, labels)


@dataclass(frozen=True)
class RealTask:
    chosen: Chosen[Task]
    task: Fitted[Task]
    latents: dict[str, Stored[LatentSet]]  # the real splits it trains, selects and tests on
    spec: DownstreamSpec
    summary: dict[str, Any]  # the real-full row of the utility table
    predictions: Path  # real-full predictions on the real test split, for the EF scatter


def fit_real_task(stages: Stages, chosen: Chosen[Task], encoded: Encoded, downstream: DownstreamSpec,
                  ctx: RunContext) -> RealTask:
    latents = encoded.latents
    task = stages.fit("downstream-fit", chosen, _fit, train=latents["train"], val=latents["val"], ctx=ctx)
    tested = stages.run("downstream-test", _test, task=task, test=latents["test"], ctx=ctx)
    summary = {"task": chosen.name, "relabel": downstream.relabel, "strategies": downstream.strategies,
               "real_full": {**tested.meta["metrics"], "n_train": len(latents["train"].value),
                             "training": task.meta.get("report", {})},
               "artifacts": {"downstream-fit": task.key}}  # the real-full regressor's state, e.g. to fine-tune from
    return RealTask(chosen, task, latents, downstream, summary, tested.path / "predictions.npy")


def measure(stages: Stages, real: RealTask, samples: Stored[LatentSet], ctx: RunContext) -> Stored[np.ndarray]:
    """The label the real-trained task predicts for every sample (adherence, and re-labelling)."""
    artifact = stages.run("downstream-measure", _measure, task=real.task, samples=samples, ctx=ctx)
    return Stored(artifact.key, np.load(artifact.path / "measured.npy"))


def train_and_test(stages: Stages, real: RealTask, selection: Selection, ctx: RunContext
                   ) -> tuple[dict[str, Any], Path]:
    """A fresh task trained on one selection (cached by what was selected), tested on the real test split."""
    artifact = stages.run("downstream", _train_and_test, task=real.chosen, train=selection,
                          val=real.latents["val"], test=real.latents["test"], ctx=ctx)
    return artifact.meta["metrics"], artifact.path / "predictions.npy"


def _fit(task: Task, train: Stored[LatentSet], val: Stored[LatentSet], ctx: RunContext) -> None:
    task.fit(train.value, val.value, ctx)


def _test(folder: Path, task: Fitted[Task], test: Stored[LatentSet], ctx: RunContext) -> dict[str, Any]:
    model = task.get()
    predictions = model.predict(test.value, ctx)
    np.save(folder / "predictions.npy", predictions)
    return {"metrics": model.evaluate(test.value, ctx, predictions)}


def _measure(folder: Path, task: Fitted[Task], samples: Stored[LatentSet], ctx: RunContext) -> None:
    np.save(folder / "measured.npy", task.get().predict(samples.value, ctx))


def _train_and_test(folder: Path, task: Chosen[Task], train: Selection, val: Stored[LatentSet],
                    test: Stored[LatentSet], ctx: RunContext) -> dict[str, Any]:
    model, data = task.create(), train.videos()
    model.fit(data, val.value, ctx)
    predictions = model.predict(test.value, ctx)
    np.save(folder / "predictions.npy", predictions)
    return {"metrics": {**model.evaluate(test.value, ctx, predictions), "n_train": len(data)},
            "training": model.fit_report()}
