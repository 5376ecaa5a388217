"""Fidelity in a clip feature space (`fidelity.features`): the extractor fitted on the real training clips, the real
videos' features, and one row's Fréchet distance and k-NN precision / recall / density / coverage against the
training videos' (`harness.metrics.fidelity`).

The clips come from the decode the pixel tests share (`harness.pipeline.decoded`), real videos decoded too, so a
sample and the videos it is compared with pass through the same decoder. An extractor whose features are unusable
(NaN, a wrong shape, the same point for different clips) empties the fidelity columns with one sentence naming it;
the rest of the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.components import FeatureExtractor, RowFeatures, RowMetric
from harness.context import RunContext
from harness.data import LatentSet
from harness.errors import UserError
from harness.metrics.fidelity import FIDELITY_KEYS, fidelity_columns, fidelity_metrics
from harness.metrics.intervals import Bootstrap
from harness.pipeline.decoded import Decoded, Decoding, decoded
from harness.pipeline.encoding import Encoded
from harness.pipeline.row_metrics import measured_references, row_metric_cells
from harness.pipeline.stages import Chosen, Fitted, Stages, Stored

#: clips handed to the extractor at a time: bounds the memory of a large split's features
CHUNK_CLIPS = 512
#: the results row's keys of the clip feature space's columns
KEYS = {key: f"video_{key}" for key in FIDELITY_KEYS}

COLUMNS = fidelity_columns("video_", "fidelity", "", "the training videos' clip features")


@dataclass(frozen=True)
class FidelityReference:
    """The fitted extractor and the real videos' clip features a row is compared with, or why there are none."""

    chosen: Chosen[FeatureExtractor]
    extractor: Fitted[FeatureExtractor]
    decoding: Decoding  # the decode the clips come from
    knn: int
    boot: Bootstrap
    train: Stored[torch.Tensor] | None = None  # [N_train, D]
    test: Stored[torch.Tensor] | None = None  # [N_test, D]
    summary: dict[str, Any] | None = None  # what results.json reports: the extractor, the real test videos' numbers
    error: str | None = None

    @property
    def cache_identity(self) -> dict[str, Any]:
        return {"extractor": self.extractor.key, "train": self.train.key if self.train else None,
                "test": self.test.key if self.test else None}

    def row_features(self, samples: torch.Tensor) -> RowFeatures:
        """What a row metric sees in the clip feature space."""
        return RowFeatures(samples, self.train.value, self.test.value, space="clip", boot=self.boot)


def fit_fidelity(stages: Stages, chosen: Chosen[FeatureExtractor], encoded: Encoded, decoding: Decoding, knn: int,
                 boot: Bootstrap, metrics: list[Chosen[RowMetric]], n_samples: int, ctx: RunContext
                 ) -> FidelityReference:
    """Fit the extractor on the decoded real training clips, and measure the real test videos as a row would be:
    what a generator indistinguishable from the real data scores (the plugin metrics of the clip space too, on
    `n_samples` of them)."""
    train_clips, test_clips = (decoded(stages, f"decoded-{split}", decoding, encoded.latents[split], ctx)
                               for split in ("train", "test"))
    extractor = stages.fit("fidelity-fit", chosen, _fit, clips=train_clips, ctx=ctx)
    summary: dict[str, Any] = {"features": chosen.name, "input_shape": list(decoding.clip)}
    try:
        train = features(stages, chosen, extractor, train_clips, ctx)
        test = same_width(train.value, features(stages, chosen, extractor, test_clips, ctx), chosen.name)
    except UserError as exc:
        return FidelityReference(chosen, extractor, decoding, knn, boot, summary={**summary, "error": str(exc)},
                                 error=str(exc))
    summary.update(report=extractor.meta.get("report", {}), error=None,
                   real={KEYS[k]: v for k, v in fidelity_metrics(train.value, test.value, knn, boot).items()})
    reference = FidelityReference(chosen, extractor, decoding, knn, boot, train, test, summary)
    summary["metrics"] = measured_references(stages, metrics, "clip", test.value, reference.row_features,
                                             {"samples": test.key, "fidelity": reference.cache_identity},
                                             n_samples)
    return reference


def row_fidelity(stages: Stages, fidelity: FidelityReference, samples: Stored[LatentSet],
                 metrics: list[Chosen[RowMetric]], ctx: RunContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """A row's fidelity columns in the clip feature space, or the sentence saying why they are empty; and the
    cells of the plugin metrics computed in that space."""
    if fidelity.error is not None:
        return {"video_fidelity_error": fidelity.error}, {}
    clips = decoded(stages, "decoded-samples", fidelity.decoding, samples, ctx)
    try:
        own = same_width(fidelity.train.value, features(stages, fidelity.chosen, fidelity.extractor, clips, ctx),
                         fidelity.chosen.name)
    except UserError as exc:
        return {"video_fidelity_error": str(exc)}, {}
    columns = fidelity_metrics(fidelity.train.value, own.value, fidelity.knn, fidelity.boot)
    cells = row_metric_cells(stages, metrics, "clip", lambda: fidelity.row_features(own.value),
                             {"samples": own.key, "fidelity": fidelity.cache_identity})
    return {**{KEYS[k]: v for k, v in columns.items()}, "video_fidelity_error": None}, cells


def features(stages: Stages, chosen: Chosen[FeatureExtractor], extractor: Fitted[FeatureExtractor],
             clips: Stored[Decoded], ctx: RunContext) -> Stored[torch.Tensor]:
    """The extractor's features of a decoded set's clips `[N, D]` on the run's device (a cached stage), or a
    UserError naming the extractor when they are unusable."""
    # external: an extractor may read a local file, which the user can fix between runs, so no failure is cached
    artifact = stages.run("fidelity-features", _features, external=True, plugin=chosen.name, extractor=extractor,
                          clips=clips, ctx=ctx)
    return Stored(artifact.key, torch.from_numpy(np.load(artifact.path / "features.npy")).to(ctx.device))


def _fit(extractor: FeatureExtractor, clips: Stored[Decoded], ctx: RunContext) -> None:
    extractor.fit(np.asarray(clips.value.clips), ctx)


def _features(folder: Path, plugin: str, extractor: Fitted[FeatureExtractor], clips: Stored[Decoded],
              ctx: RunContext) -> None:
    model, array = extractor.get(), clips.value.clips

    def shard(block: range) -> torch.Tensor:
        parts = []
        for start in ctx.progress(range(block.start, block.stop, CHUNK_CLIPS), desc=f"{plugin} features"):
            chunk = np.asarray(array[start:min(start + CHUNK_CLIPS, block.stop)])
            out = torch.as_tensor(model.features(chunk, ctx)).detach().float().cpu()
            if out.ndim != 2 or len(out) != len(chunk):
                raise UserError(f"feature extractor '{plugin}' returned features of shape {list(out.shape)} for "
                                f"{len(chunk)} clips; it must return [clips, features].")
            parts.append(out)
        return torch.cat(parts) if parts else torch.zeros(0, 0)

    out = torch.cat([part for part in ctx.group.map(shard, len(array), CHUNK_CLIPS) if len(part)])
    check_features(out, np.asarray(array), plugin)
    np.save(folder / "features.npy", out.numpy())


def same_width(reference: torch.Tensor, other: Stored[torch.Tensor], name: str) -> Stored[torch.Tensor]:
    """`other`, when it has as many features per clip as `reference`; else one sentence naming the extractor."""
    if other.value.shape[1] != reference.shape[1]:
        raise UserError(f"feature extractor '{name}' returned {other.value.shape[1]} features per clip here but "
                        f"{reference.shape[1]} for the real training videos; it must return the same number for "
                        "every clip.")
    return other


def check_features(features: torch.Tensor, clips: np.ndarray, name: str) -> None:
    """One sentence naming the extractor when its features cannot be measured: NaN or infinite values, or one point
    for clips that differ (a constant extractor would make every row look perfect)."""
    bad = ~torch.isfinite(features).all(dim=1)
    if bad.any():
        raise UserError(f"feature extractor '{name}' returned NaN or infinite features for {int(bad.sum())} of "
                        f"{len(features)} clips.")
    differ = len(clips) > 1 and bool((clips != clips[:1]).any())
    if differ and bool((features == features[:1]).all()):
        raise UserError(f"feature extractor '{name}' returned the same features for all {len(features)} clips, "
                        "though the clips differ; it cannot tell videos apart.")
