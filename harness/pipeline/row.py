"""Phase 5, one generator row: fit -> sample -> privacy/recall/fidelity metrics -> downstream strategies.

Everything a row does is isolated: a generator that fails (a user error, unusable output, a bug) becomes a row
with an `error`, and the other rows still run.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.components import Generator, RowMetric
from harness.context import RunContext
from harness.data import ClipSpec, Condition, LatentSet, PixelSamples, SampleSet
from harness.distributed import concat
from harness.downstream import adherence, learned_real_videos, select
from harness.errors import GeneratorOutputError, Ineligible, UserError
from harness.evaluation import row_metrics
from harness.figures import tsne_coordinates
from harness.metrics.columns import Column
from harness.metrics.intervals import Bootstrap
from harness.pipeline.copy import row_copy
from harness.pipeline.encoding import Encoded
from harness.pipeline.fidelity import FidelityReference, row_fidelity
from harness.pipeline.motion import MotionReference, row_motion
from harness.pipeline.reid import Features, ReidModel, embed, embed_frames, reid_row_features
from harness.pipeline.row_metrics import row_metric_cells
from harness.pipeline.stages import Chosen, Stages, Stored
from harness.pipeline.task import RealTask, Selection, measure, train_and_test
from harness.spec import ConditionSpec

log = logging.getLogger("harness")
COLUMNS = [
    Column("sample_seconds_per_video", "s/video", "↓", 4, group="cost",
           definition="wall seconds per sampled video on the run's device"),
    Column("fit_seconds", "training s", "↓", 1, group="cost",
           definition="wall seconds the generator's fit took (training, or indexing for a control), when it was "
                      "built"),
    Column("peak_rss_mb", "peak memory MB", "↓", 0, group="cost",
           definition="the process's peak resident memory while the generator trained and sampled"),
    Column("cuda_peak_mb", "peak GPU MB", "↓", 0, group="cost",
           definition="peak GPU memory allocated while the generator trained and sampled"),
]


@dataclass(frozen=True)
class RowRequest:
    """What the spec asks of one row."""

    name: str
    generator: Chosen[Generator]
    generator_hash: str
    conditions: list[Condition]
    metrics: list[Chosen[RowMetric]]
    boot: Bootstrap  # how the row's intervals are drawn
    privacy_only: bool = False  # True: privacy and coverage only (no fidelity, t-SNE or filmstrip), e.g. the
    # Robustness table's rows


@dataclass(frozen=True)
class RowResult:
    row: dict[str, Any]  # the results row (see harness.results.ResultRow)
    table: pd.DataFrame | None  # per sample: provenance, P_max and nearest video per head, measured label
    arrays: Path | None = None  # what the privacy figures draw
    ef_predictions: Path | None = None  # the first strategy's predictions on the real test split
    filmstrip: Path | None = None  # decoded frames of the first samples (generated rows only)
    motion_scores: np.ndarray | None = None  # every sample's best motion score (NaN: a frozen sample)


def _cost(fit: dict[str, Any], sampling: dict[str, Any]) -> dict[str, Any]:
    """What the generator's fit and sampling stages recorded (when they were built) that the cost table shows."""
    cost = {"fit_seconds": fit.get("seconds"),
            "peak_rss_mb": max((m["peak_rss_mb"] for m in (fit, sampling) if m.get("peak_rss_mb")), default=None),
            "cuda_peak_mb": max((m["cuda_peak_mb"] for m in (fit, sampling) if m.get("cuda_peak_mb")), default=None)}
    return {k: v for k, v in cost.items() if v is not None}


def conditions(n: int, train: LatentSet, spec: ConditionSpec, ctx: RunContext) -> list[Condition]:
    """The requested videos, identical for every generator of a benchmark (same seeds, same EFs)."""
    rng = ctx.rng("conditions", spec.ef)
    if spec.ef == "train-distribution":
        efs = rng.choice(train.table["ef"].to_numpy(dtype=float), size=n, replace=True)
    else:
        efs = rng.uniform(*spec.ef_range, size=n)
    return [Condition(f"s{i:06d}", ctx.seed_for("sample", i), round(float(ef), 3)) for i, ef in enumerate(efs)]


def run_row(stages: Stages, request: RowRequest, encoded: Encoded, reid: ReidModel | None,
            motion: MotionReference | None, fidelity: FidelityReference | None, task: RealTask | None,
            ctx: RunContext) -> RowResult:
    # 1. the generator's samples (its fit runs only when they are not cached)
    latents = encoded.latents
    generator = stages.fit("generator-fit", request.generator, _fit, ctx=ctx,
                           data={s: latents[s] for s in request.generator.factory.splits if s in latents})
    filtered_by = {"privacy": reid} if reid is not None and generator.component.uses_privacy_filter else {}
    pixels = request.generator.factory.output == "pixels"
    expected = {"clip": ctx.clip} if pixels else {"clip_shape": list(latents["train"].value.clip_shape)}
    base = {"generator": request.name, "plugin": request.generator.name, "generator_hash": request.generator_hash,
            "control": request.generator.factory.control, "n_samples": len(request.conditions),
            "n_asked": len(request.conditions)}
    artifacts = {"generator-fit": generator.key}
    try:
        asked = generator.component.existing_samples(ctx) or request.conditions
        base["n_samples"] = len(asked)
        produced = sampled = stages.run("samples", _sample, generator=generator, conditions=asked,
                                        ctx=ctx, **expected, **filtered_by)
        artifacts["samples"] = produced.key
        if pixels:  # from here on, every stage is the same as for a latent generator
            sampled = stages.run("encode-samples", _encode_samples, encoder=encoded.encoder,
                                 pixels=Stored(produced.key, PixelSamples.load(produced.path)), ctx=ctx)
            artifacts["encode-samples"] = sampled.key
    except (UserError, GeneratorOutputError, Ineligible) as exc:
        log.info("generator %s failed: %s", request.name, exc)
        return RowResult({**base, "artifacts": artifacts, "error": str(exc)}, None)
    except Exception as exc:  # a plugin bug: isolate it to its row, keep the traceback in the log
        log.info("generator %s raised:\n%s", request.name, traceback.format_exc())
        return RowResult({**base, "artifacts": artifacts,
                          "error": f"{type(exc).__name__}: {exc} (traceback in run.log)"}, None)
    samples = Stored(sampled.key, SampleSet.load(sampled.path))
    report = {**generator.meta.get("report", {}), **generator.component.report()}
    if report:
        base["generator_report"] = report
    row = {**base, "artifacts": artifacts, "n_returned": len(samples.value),
           "sample_seconds_per_video": round(produced.meta["sample_seconds_per_video"], 5),
           **_cost(generator.meta, produced.meta), "error": None}
    table, per_sample, out = samples.value.provenance, None, {}
    try:
        # 2. privacy, recall, consistency and fidelity against the real reference
        if reid is not None:
            metrics, per_sample, out["arrays"] = privacy_metrics(stages, request, samples, reid, ctx)
            row.update(metrics)
            table = table.merge(per_sample, on="sample_id", how="left")
        # 2b. motion memorisation against the real videos' motion
        if motion is not None:
            metrics, moved, out["motion_scores"] = row_motion(stages, motion, samples, table["sample_id"].tolist(),
                                                              request.boot, ctx)
            row.update(metrics)
            if moved is not None:
                table = table.merge(moved, on="sample_id", how="left")
        # 2c. fidelity in the clip feature space
        if fidelity is not None and not request.privacy_only:
            columns, cells = row_fidelity(stages, fidelity, samples, request.metrics, ctx)
            row.update(columns)
            if cells:
                row["extra_metrics"] = {**(row.get("extra_metrics") or {}), **cells}
        # 3. downstream utility under every strategy, and adherence to the requested label
        if task is not None:
            utility, measured, out["ef_predictions"] = downstream_utility(stages, samples, per_sample, reid, task,
                                                                          request.boot, ctx)
            row.update(utility)
            table["measured_ef"] = measured
        # 4. frames for the filmstrip (generated rows only: a copying control's frames are real patients)
        if not request.generator.factory.shows_real_frames and not request.privacy_only:
            out["filmstrip"] = filmstrip(stages, encoded, samples, ctx)
    except (ValueError, GeneratorOutputError) as exc:
        log.info("metrics of %s failed: %s", request.name, exc)
        row["error"] = f"metrics failed: {exc}"
    return RowResult(row, table, **out)


def privacy_metrics(stages: Stages, request: RowRequest, samples: Stored[SampleSet], reid: ReidModel,
                    ctx: RunContext) -> tuple[dict[str, Any], pd.DataFrame, Path]:
    n_frames = 0 if request.privacy_only else min(len(samples.value), reid.privacy.consistency_videos)
    features = embed(stages, "embed-samples", reid.reid, samples, n_frames, 1, ctx)
    replicates = [embed(stages, "embed-samples", r.reid, samples, 0, 1, ctx) for r in reid.replicates]
    stride = reid.privacy.content.frame_stride
    content = [embed_frames(stages, "content-samples", model, samples, stride, ctx)
               for model in (reid.reid, *(r.reid for r in reid.replicates))]
    copy = row_copy(stages, reid.copy, samples, ctx) if reid.copy is not None else None
    artifact = stages.run("row-metrics", _row_metrics, features=features, replicates=replicates, content=content,
                          reid=reid, samples=samples, row=request.name, full=not request.privacy_only,
                          copy=copy, ctx=ctx)
    metrics = artifact.meta["metrics"]
    if request.metrics:
        metrics["extra_metrics"] = row_metric_cells(stages, request.metrics, "reid",
                                                    lambda: reid_row_features(reid, features.value.first),
                                                    {"samples": features.key, "reid": reid.cache_identity})
    return (metrics, pd.read_csv(artifact.path / "per_sample.csv", dtype={"sample_id": str}),
            artifact.path / "arrays.npz")


def downstream_utility(stages: Stages, samples: Stored[SampleSet], per_sample: pd.DataFrame | None,
                       reid: ReidModel | None, task: RealTask, boot: Bootstrap, ctx: RunContext
                       ) -> tuple[dict[str, Any], np.ndarray, Path | None]:
    """Adherence to the requested label, and the task trained on this row's samples under every strategy."""
    spec = task.spec
    measured = measure(stages, task, samples, ctx)
    labels = measured if spec.relabel else None
    head = reid.privacy.head if reid is not None else "pred"
    real_train = task.latents["train"]
    first = next((s for s in spec.strategies if s != "real-learned-subset"), None)  # the table's columns
    utility: dict[str, Any] = {}
    predictions = None
    for strategy in spec.strategies:
        try:
            if strategy == "real-learned-subset":
                selection = Selection(real_train, learned_real_videos(per_sample, reid.reference.train_ids, head))
            else:
                indices = select(strategy, per_sample, len(samples.value), len(real_train.value), head,
                                 spec.per_learned_video, ctx.rng("downstream", strategy))
                selection = Selection(samples, indices, labels)
            metrics, path = train_and_test(stages, task, selection, ctx)
            if strategy == first:
                predictions = path
            utility[strategy] = {**metrics, "error": None}
        except (Ineligible, UserError) as exc:
            log.info("downstream %s: %s", strategy, exc)
            utility[strategy] = {"n_train": 0, "error": str(exc)}
    requested = samples.value.provenance["requested_ef"].to_numpy(dtype=float)
    out = {"utility": utility, "adherence": adherence(requested, measured.value, boot)}
    if first is not None and utility[first]["error"] is None:
        out.update({f"ef_{k}{end}": utility[first][f"{k}{end}"]
                    for k in ("r2", "mae") for end in ("", "_low", "_high")})
    out.update({f"adherence_{k}": v for k, v in out["adherence"].items() if k != "n"})
    return out, measured.value, predictions


def filmstrip(stages: Stages, encoded: Encoded, samples: Stored[SampleSet], ctx: RunContext, n: int = 4) -> Path:
    """Decoded frames of a row's first samples, for the filmstrip figure."""
    artifact = stages.run("filmstrip", _filmstrip, encoder=encoded.encoder, samples=samples, n=n, ctx=ctx)
    return artifact.path / "frames.npy"


def _fit(generator: Generator, data: dict[str, Stored[LatentSet]], ctx: RunContext) -> None:
    generator.fit({split: stored.value for split, stored in data.items()}, ctx)


def _sample(folder: Path, generator, conditions: list[Condition], ctx: RunContext, clip_shape: list[int] | None = None,
            clip: ClipSpec | None = None, privacy: ReidModel | None = None) -> dict[str, float]:
    model = generator.get()
    if privacy is not None:
        privacy.reid.get()  # ready on every rank before the ranks sample apart

    def shard(block: range):  # a rank's share of the conditions, never cutting one of the generator's batches
        part = model.sample([conditions[i] for i in block], ctx)
        if clip is not None:
            return check_pixels(part, len(block), clip)
        check_samples(part, len(block), tuple(clip_shape))
        return part

    start = time.perf_counter()
    samples = concat(ctx.group.map(shard, len(conditions), model.sample_batch_size))
    seconds = time.perf_counter() - start
    samples.save(folder)
    return {"sample_seconds_per_video": seconds / max(len(conditions), 1)}


def check_samples(samples: SampleSet, n: int, clip_shape: tuple[int, ...]) -> None:
    """Reject unusable generator output with one sentence; nothing of it reaches the cache."""
    if not isinstance(samples, SampleSet):
        raise GeneratorOutputError(f"the generator returned {type(samples).__name__}, not a SampleSet.")
    if len(samples) != n:
        raise GeneratorOutputError(f"the generator returned {len(samples)} samples for {n} requested.")
    if samples.clip_shape != tuple(clip_shape):
        raise GeneratorOutputError(f"the generator returned clips of shape {list(samples.clip_shape)}, but the "
                                   f"encoder's space has shape {list(clip_shape)} [T, C, h, w].")
    bad = ~np.isfinite(np.asarray(samples.latents, dtype=np.float32)).reshape(len(samples), -1).all(axis=1)
    if bad.any():
        raise GeneratorOutputError(f"the generator returned NaN or infinite values in {int(bad.sum())} of "
                                   f"{n} samples.")


def check_pixels(samples: PixelSamples, n: int, clip: ClipSpec) -> PixelSamples:
    """Pixel clips as the run's clips (grayscale uint8 of its length, size and fps), or one sentence why not."""
    if not isinstance(samples, PixelSamples):
        raise GeneratorOutputError(f"the pixel-space generator returned {type(samples).__name__}, not PixelSamples.")
    if len(samples) != n:
        raise GeneratorOutputError(f"the generator returned {len(samples)} samples for {n} requested.")
    frames = samples.frames
    wanted = f"uint8 [N, {clip.frames}, {clip.height}, {clip.width}] or [N, {clip.frames}, {clip.height}, " \
             f"{clip.width}, 3]"
    rgb = frames.ndim == 5 and frames.shape[-1] == 3
    if frames.dtype != np.uint8 or not (frames.ndim == 4 or rgb):
        raise GeneratorOutputError(f"the generator returned {frames.dtype} pixels of shape {list(frames.shape)}; "
                                   f"the run needs {wanted}.")
    if tuple(frames.shape[1:4]) != (clip.frames, clip.height, clip.width):
        raise GeneratorOutputError(f"the generator returned clips of {frames.shape[1]} frames of {frames.shape[2]}x"
                                   f"{frames.shape[3]} pixels; the run's clips are {clip.frames} frames of "
                                   f"{clip.height}x{clip.width} (ctx.clip).")
    fps = samples.table["fps"].to_numpy(dtype=float)
    if not np.allclose(fps, clip.fps):
        raise GeneratorOutputError(f"the generator returned clips at {fps[~np.isclose(fps, clip.fps)][0]:g} fps; "
                                   f"the run's clips are at {clip.fps:g} fps (ctx.clip).")
    return samples.grayscale()


def _encode_samples(folder: Path, encoder, pixels: Stored[PixelSamples], ctx: RunContext) -> None:
    model, videos = encoder.get(), pixels.value.videos()
    latents = concat(ctx.group.map(lambda block: model.encode(videos.subset(block), ctx), len(videos)))
    SampleSet(latents.latents, latents.table, pixels.value.provenance).save(folder)


def _row_metrics(folder: Path, features: Stored[Features], replicates: list[Stored[Features]],
                 content: list[Stored[torch.Tensor]], reid: ReidModel, samples: Stored[SampleSet], row: str,
                 full: bool, copy: Stored[dict[str, np.ndarray]] | None, ctx: RunContext) -> dict[str, Any]:
    first = features.value
    metrics, per_sample, arrays = row_metrics(first.first, first.frames, reid.reference, reid.stats,
                                              samples.value.provenance["sample_id"].tolist(),
                                              tuple(r.value.first for r in replicates),
                                              tuple(c.value for c in content), fidelity=full,
                                              copy=copy.value if copy is not None else None)
    per_sample.to_csv(folder / "per_sample.csv", index=False)
    features = arrays.pop("features")
    if full:
        arrays["tsne"] = tsne_coordinates(reid.reference.train_first.cpu().numpy(), features,
                                          ctx.seed_for("tsne", row))
    np.savez(folder / "arrays.npz", **arrays)
    return {"metrics": metrics}


def _filmstrip(folder: Path, encoder, samples: Stored[SampleSet], n: int, ctx: RunContext) -> None:
    subset = samples.value.subset(np.arange(min(n, len(samples.value))))
    np.save(folder / "frames.npy", encoder.get().decode(subset, ctx).frames)
