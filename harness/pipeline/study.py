"""Phase 6 (instead of generator rows), a re-ID study: several re-ID models, each tested on its own test split and,
with `cross`, on every other variant's test split encoded with the model's own encoder (paper Tables 1-3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.context import RunContext
from harness.pipeline.encoding import Encoded, encode
from harness.pipeline.real_data import RealData
from harness.pipeline.reid import ReidModel, embed, measure_quality
from harness.pipeline.stages import Stages
from harness.spec import PrivacySpec


@dataclass(frozen=True)
class TrainedVariant:
    """One variant's data, encoder and re-ID model."""

    name: str
    data: RealData
    encoded: Encoded
    reid: ReidModel
    summary: dict[str, Any]  # what results.json reports about the variant


def describe(name: str, dataset: str, dataset_args: dict[str, Any], data: RealData, encoded: Encoded,
             reid: ReidModel) -> TrainedVariant:
    summary = {"name": name, "dataset": dataset, "dataset_args": dataset_args, "encoder": encoded.summary,
               "reid": reid.summary, "splits": data.reports}
    return TrainedVariant(name, data, encoded, reid, summary)


def study_tests(stages: Stages, variants: list[TrainedVariant], cross: bool, privacy: PrivacySpec,
                ctx: RunContext) -> list[dict[str, Any]]:
    """Each model on its own test split, then (with `cross`) on each other distinct test split once, named after
    a variant in the model's space when there is one."""
    tests = [{"model": v.name, "tested_on": v.name, "space": v.encoded.summary["space"], **v.reid.summary["test"]}
             for v in variants]
    if not cross:
        return tests
    for v in variants:
        space = v.encoded.summary["space"]
        others: dict[str, TrainedVariant] = {}
        for u in variants:
            key = u.data.videos["test"].key
            if key == v.data.videos["test"].key:
                continue
            if key not in others or (u.encoded.summary["space"] == space != others[key].encoded.summary["space"]):
                others[key] = u
        for u in others.values():
            tests.append({"model": v.name, "tested_on": u.name, "space": space,
                          **cross_quality(stages, v, u, privacy, ctx)})
    return tests


def cross_quality(stages: Stages, model: TrainedVariant, other: TrainedVariant, privacy: PrivacySpec,
                  ctx: RunContext) -> dict[str, Any]:
    """Model quality on another dataset's test split, encoded with the model's own encoder."""
    latents = encode(stages, model.encoded.encoder, other.data.videos["test"], "test", ctx)
    features = embed(stages, "embed-test", model.reid.reid, latents, len(latents.value), 1, ctx)
    return measure_quality(stages, features, model.reid.head, privacy.bootstrap_resamples)
