"""Phase 3, re-identification: fit the re-ID model, embed the real splits, measure the model, and compute the real
reference (τ, the real test->train recall, real consistency) every generator row is compared with."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.components import ReIdFilter, RowFeatures
from harness.context import RunContext
from harness.data import LatentSet
from harness.errors import GeneratorOutputError
from harness.evaluation import PrivacyFilter, Reference, reference_stats
from harness.metrics.reid import reid_quality
from harness.pipeline.copy import CopyReference
from harness.pipeline.encoding import Encoded
from harness.pipeline.stages import Chosen, Fitted, Stages, Stored
from harness.spec import PrivacySpec

log = logging.getLogger("harness")


@dataclass(frozen=True)
class Features:
    """Re-ID features: the first frame of every video `[N, D]`, every frame of the first videos `[n, T, D]`."""

    first: torch.Tensor
    frames: torch.Tensor


@dataclass(frozen=True)
class Head:
    """The `pred` head's linear layer on `|f_a - f_b|`."""

    weight: torch.Tensor
    bias: float


@dataclass(frozen=True)
class Content:
    """Features of every k-th frame of the training and test videos `[N, F, D]`, each frame embedded on its own."""

    train: Stored[torch.Tensor]
    test: Stored[torch.Tensor]


@dataclass(frozen=True)
class Replicate:
    """Another re-ID model of the run, trained from its own seed (`privacy.reid_seeds`)."""

    reid: Fitted[ReIdFilter]
    head: Stored[Head]
    train: Stored[Features]
    test: Stored[Features]
    content: Content


@dataclass(frozen=True)
class ReidModel:
    reid: Fitted[ReIdFilter]
    head: Stored[Head]
    reference: Reference
    stats: dict[str, Any]  # reference_stats of the real data
    summary: dict[str, Any]  # what results.json reports about the model and the real reference
    privacy: PrivacySpec
    replicates: tuple[Replicate, ...] = ()
    copy: CopyReference | None = None  # the pixel copy test the privacy columns join (`privacy.copy_test`)

    @property
    def cache_identity(self) -> dict[str, Any]:
        # motion memorisation does not use the re-ID model: its settings do not change what the model computes
        return {"reid": self.reid.key, "head": self.head.key,
                "privacy": self.privacy.model_dump(mode="json", exclude={"motion"}),
                "copy": self.copy.cache_identity if self.copy is not None else None,
                "replicates": [[r.reid.key, r.head.key, r.train.key, r.test.key, r.content.train.key,
                                r.content.test.key] for r in self.replicates]}

    def privacy_filter(self, ctx: RunContext) -> PrivacyFilter:
        """The filter generators may apply (`ctx.privacy_filter`): the model loads only when a frame is checked."""
        def embed_frames(frames: np.ndarray) -> torch.Tensor:
            return self.reid.get().embed(frames[:, None], ctx, frames=[0])[:, 0]

        return PrivacyFilter(embed_frames, self.reference, self.stats["tau"], self.stats["ceiling"])


def reid_row_features(reid: ReidModel, samples: torch.Tensor) -> RowFeatures:
    """What a row metric sees in the re-ID space: first-frame features and the main head's privacy analysis (scored
    when a metric reads it)."""
    ref = reid.reference

    def scored() -> tuple[np.ndarray, np.ndarray]:
        pmax, nearest = ref.pmax(samples, ref.head)
        return pmax.cpu().numpy(), nearest.cpu().numpy()

    return RowFeatures(samples, ref.train_first, ref.test_first, scored, reid.stats["tau"], "reid", ref.boot)


def fit_reid(stages: Stages, chosen: Chosen[ReIdFilter], encoded: Encoded, privacy: PrivacySpec,
             ctx: RunContext, seeds: int = 1, copy: CopyReference | None = None) -> ReidModel:
    """The run's re-ID model and real reference, and `seeds - 1` more models trained from other seeds; with `copy`,
    the privacy columns join the re-ID model with the pixel copy test."""
    latents = encoded.latents
    reid = stages.fit("reid-fit", chosen, _fit, train=latents["train"], val=latents["val"], ctx=ctx)
    stride = privacy.content.frame_stride
    stored = {split: embed(stages, f"embed-{split}", reid, latents[split], *_frames_kept(split, latents, privacy),
                           ctx)
              for split in ("train", "val", "test")}
    head = head_of(stages, reid, ctx.device)
    quality = measure_quality(stages, stored["test"], head, privacy.bootstrap_resamples)
    features = {split: value.value for split, value in stored.items()}
    content = embed_content(stages, reid, encoded, stride, ctx)
    replicates = tuple(fit_replicate(stages, chosen, encoded, privacy, replace(ctx, seed=ctx.seed_for("reid-seed", k)))
                       for k in range(1, seeds))
    every_frame = privacy.reference_frames == "all"
    reference = Reference(
        train_first=features["train"].first, train_ids=latents["train"].value.table["video_id"].astype(str).tolist(),
        test_first=features["test"].first, test_frames=features["test"].frames, weight=head.value.weight,
        bias=head.value.bias, head=privacy.head, percentile=privacy.percentile, calibration=privacy.calibration,
        knn=privacy.knn, boot=privacy.bootstrap(ctx.seed_for("bootstrap")),
        content_train=content.train.value, content_test=content.test.value,
        content_percentile=privacy.content.percentile, group=ctx.group,
        copy=copy.scores if copy is not None else None,
        train_frames=features["train"].frames if every_frame else None)
    reference = replace(reference, replicates=tuple(
        replace(reference, train_first=r.train.value.first, test_first=r.test.value.first,
                train_frames=r.train.value.frames if every_frame else None,
                test_frames=r.test.value.frames, weight=r.head.value.weight, bias=r.head.value.bias,
                content_train=r.content.train.value, content_test=r.content.test.value)
        for r in replicates))
    stats = reference_stats(reference)
    report = reid.meta.get("report", {})
    val_auc = report.get("val_auc")
    reliable = (val_auc is None or val_auc >= privacy.min_val_auc) and not stats["tau_at_ceiling"]
    if val_auc is not None and val_auc < privacy.min_val_auc:
        log.warning("the re-ID model failed to learn (validation AUC %.3f < %.2f)", val_auc, privacy.min_val_auc)
    if stats["tau_at_ceiling"]:
        log.warning("τ sits at the re-ID model's ceiling: real held-out videos score like exact copies of training "
                    "videos, so only samples at that ceiling count as memorised and the privacy columns are "
                    "unreliable")
    summary = {"plugin": chosen.name, "training": report, "reliable": reliable, "test": quality,
               "head": privacy.head, "calibration": privacy.calibration, "percentile": privacy.percentile,
               "reference_frames": privacy.reference_frames, "reference_stride": privacy.content.frame_stride,
               "intervals": reference.boot.describe(),
               **{k: stats[k] for k in ("tau", "tau_low", "tau_high", "tau_test_to_train", "tau_train_to_test",
                                        "test_memorised_pct", "reference_recall", "reference_irs_inf", "ceiling",
                                        "tau_at_ceiling")},
               "consistency_real": float(np.mean(stats["consistency_real"]["corr"])),
               "consistency_real_head": float(np.mean(stats["consistency_real"]["pred"])),
               "models": seeds}
    if stats["content"] is not None:
        summary["content"] = {"frame_stride": privacy.content.frame_stride, "percentile": privacy.content.percentile,
                              "tau": stats["content"]["tau"]}
    if replicates:
        summary["replicates"] = [{"training": r.reid.meta.get("report", {}), "tau": calibrated["tau"]}
                                 for r, calibrated in zip(replicates, stats["replicates"], strict=True)]
    if copy is not None:
        summary["copy_test"] = copy.summary
    return ReidModel(reid, head, reference, stats, summary, privacy, replicates, copy)


def fit_replicate(stages: Stages, chosen: Chosen[ReIdFilter], encoded: Encoded, privacy: PrivacySpec,
                  ctx: RunContext) -> Replicate:
    """One more re-ID model, trained like the first from the seed in `ctx`, with its first-frame, training-frame
    (`privacy.reference_frames: all`) and content features."""
    latents = encoded.latents
    reid = stages.fit("reid-fit", chosen, _fit, train=latents["train"], val=latents["val"], ctx=ctx)
    train_videos, stride = _frames_kept("train", latents, privacy)
    return Replicate(reid, head_of(stages, reid, ctx.device),
                     embed(stages, "embed-train", reid, latents["train"], train_videos, stride, ctx),
                     embed(stages, "embed-test", reid, latents["test"], 0, 1, ctx),
                     embed_content(stages, reid, encoded, privacy.content.frame_stride, ctx))


def _frames_kept(split: str, latents: dict[str, Stored[LatentSet]], privacy: PrivacySpec) -> tuple[int, int]:
    """How many videos of a split have their frames embedded as well as their first frame, and every how many
    frames: all test videos' frames (consistency curves), every training video's every `content.frame_stride`-th
    frame when first frames are compared with all training frames."""
    if split == "test":
        return len(latents[split].value), 1
    if split == "train" and privacy.reference_frames == "all":
        return len(latents[split].value), privacy.content.frame_stride
    return 0, 1


def embed_content(stages: Stages, reid: Fitted[ReIdFilter], encoded: Encoded, stride: int, ctx: RunContext
                  ) -> Content:
    latents = encoded.latents
    return Content(*(embed_frames(stages, f"content-{split}", reid, latents[split], stride, ctx)
                     for split in ("train", "test")))


def embed(stages: Stages, name: str, reid: Fitted[ReIdFilter], latents: Stored[LatentSet], frame_videos: int,
          stride: int, ctx: RunContext) -> Stored[Features]:
    """Cached features: first frame of every video, every `stride`-th frame of the first `frame_videos` videos (each
    within its clip)."""
    artifact = stages.run(name, _embed, reid=reid, latents=latents, frame_videos=frame_videos, stride=stride,
                          ctx=ctx)
    loaded = (torch.from_numpy(np.load(artifact.path / f"{part}.npy")).to(ctx.device) for part in ("first", "frames"))
    return Stored(artifact.key, Features(*loaded))


def embed_frames(stages: Stages, name: str, reid: Fitted[ReIdFilter], latents: Stored[LatentSet], stride: int,
                 ctx: RunContext) -> Stored[torch.Tensor]:
    """Cached features `[N, F, D]` of every `stride`-th frame of every video (content memorisation), each frame
    embedded as a clip of its own: a re-ID model may normalise a clip as a whole, and a frame's features must not
    depend on the rest of its clip (its motion)."""
    artifact = stages.run(name, _embed_frames, reid=reid, latents=latents, stride=stride, ctx=ctx)
    return Stored(artifact.key, torch.from_numpy(np.load(artifact.path / "frames.npy")).to(ctx.device))


def head_of(stages: Stages, reid: Fitted[ReIdFilter], device: torch.device) -> Stored[Head]:
    """The model's `pred` head, kept with the cache so warm runs score without loading the model."""
    artifact = stages.run("reid-head", _head, reid=reid)
    weight = torch.tensor(artifact.meta["weight"], dtype=torch.float32, device=device)
    return Stored(artifact.key, Head(weight, artifact.meta["bias"]))


def measure_quality(stages: Stages, test: Stored[Features], head: Stored[Head], resamples: int) -> dict[str, Any]:
    """AUC (with interval), accuracy, F1, precision, recall on one fixed-seed pair per test video, per head."""
    return stages.run("reid-eval", _quality, features=test, head=head, resamples=resamples).meta["quality"]


def _fit(reid: ReIdFilter, train: Stored[LatentSet], val: Stored[LatentSet], ctx: RunContext) -> None:
    reid.fit(train.value, val.value, ctx)


def _embed(folder: Path, reid: Fitted[ReIdFilter], latents: Stored[LatentSet], frame_videos: int, stride: int,
           ctx: RunContext) -> None:
    model, clips = reid.get(), latents.value.latents
    first = torch.cat(ctx.group.map(lambda b: model.embed(clips[b.start:b.stop], ctx, frames=[0])[:, 0], len(clips)))
    kept = list(range(0, clips.shape[1], stride))
    frames = torch.cat(ctx.group.map(lambda b: model.embed(clips[b.start:b.stop], ctx, frames=kept), frame_videos)) \
        if frame_videos else first[:0, None]
    for name, value in (("first", first), ("frames", frames)):
        np.save(folder / f"{name}.npy", _finite(value).numpy().astype(np.float32))


def _embed_frames(folder: Path, reid: Fitted[ReIdFilter], latents: Stored[LatentSet], stride: int, ctx: RunContext,
                  chunk: int = 1024) -> None:
    clips, model = latents.value.latents, reid.get()

    def shard(block: range) -> torch.Tensor:
        parts = []
        for start in range(block.start, block.stop, chunk):  # bounded memory: a chunk of videos' frames at a time
            frames = np.asarray(clips[start:min(start + chunk, block.stop), ::stride])
            alone = model.embed(frames.reshape(-1, 1, *frames.shape[2:]), ctx)  # [n * F, 1, D]
            parts.append(alone.view(len(frames), frames.shape[1], -1))
        return torch.cat(parts) if parts else torch.zeros((0, 0, 0))

    np.save(folder / "frames.npy", _finite(torch.cat(ctx.group.map(shard, len(clips)))).numpy().astype(np.float32))


def _finite(features: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(features).all():
        raise GeneratorOutputError("the re-ID model produced NaN features; the clips contain values it cannot "
                                   "handle.")
    return features


def _head(folder: Path, reid: Fitted[ReIdFilter]) -> dict[str, Any]:
    weight, bias = reid.get().head_parameters()
    return {"weight": weight.tolist(), "bias": bias}


def _quality(folder: Path, features: Stored[Features], head: Stored[Head], resamples: int) -> dict[str, Any]:
    return {"quality": reid_quality(features.value.frames, head.value.weight, head.value.bias, seed=0,
                                    resamples=resamples)}
