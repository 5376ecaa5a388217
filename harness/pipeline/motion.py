"""Phase 3b, motion memorisation: the motion profiles of the real training and test videos and τ_motion, and one
row's motion scores against them (`harness.metrics.motion`).

The profiles come from the decode the pixel tests share (`harness.pipeline.decoded`): every `frame_gap`-th frame
(every frame with the position view on, the steps then starting at every frame), real videos included, so a sample
and the real video it may copy pass through the same decoder and their flows compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.context import RunContext
from harness.data import LatentSet
from harness.metrics.columns import Column
from harness.metrics.intervals import Bootstrap, mean_estimate, memorised_estimate
from harness.metrics.motion import (
    DYNAMIC_PERCENTILE,
    best_motion_match,
    dynamic_degree,
    frame_lags,
    frame_steps,
    frozen,
    smoothed,
    time_bases,
)
from harness.metrics.privacy import ceiling_level, is_memorised, joint_levels, privacy_threshold
from harness.pipeline.decoded import Decoding, decoded
from harness.pipeline.encoding import Encoded
from harness.pipeline.stages import Stages, Stored
from harness.spec import MotionSpec

COLUMNS = [Column("motion_memorised_pct", "motion memorised %", "↓", 1, interval=True, group="privacy",
                  definition="samples that move like a training video, whatever they look like (optical-flow "
                             "motion: its steps, or where it has got to by each frame) above τ_motion, set on the "
                             "real test videos like τ (Chen et al. 2024)"),
           Column("dynamic_degree", "dynamic degree", "", 3, interval=True, group="temporal",
                  definition=f"the share of a sample's optical-flow steps that move more than the real test "
                             f"videos' {DYNAMIC_PERCENTILE:g}th percentile step: 0 for a frozen video, about "
                             f"{1 - DYNAMIC_PERCENTILE / 100:g} for real ones"),
           Column("dynamic_degree_gap", "dynamic degree gap to real", "↓", 3, group="temporal",
                  definition="the dynamic degree's distance to the real test videos'")]

@dataclass(frozen=True)
class MotionReference:
    """The real videos' motion: training descriptors, τ_motion from the test videos, or why there is none."""

    spec: MotionSpec
    calibration: str  # privacy.calibration: which direction sets τ_motion
    decoding: Decoding  # the decode the motion profiles come from
    train: torch.Tensor | None = None  # the training videos' step view [N_train, P, 4] (`_view`), on the device
    train_ids: tuple[str, ...] = ()
    stats: dict[str, Any] | None = None  # tau, the scores that set it, the test videos' scores
    error: str | None = None  # one sentence: why motion cannot be measured in this run
    positions: torch.Tensor | None = None  # the training videos' positions [N_train, T, 4] (the position view)

    @property
    def by_frame(self) -> bool:
        """Every frame is decoded, so the step view compares steps starting at every frame (`frame_steps`)."""
        return self.decoding is not None and self.decoding.positions

    @property
    def summary(self) -> dict[str, Any]:
        """What results.json reports about the motion reference."""
        out = {"frame_gap": self.spec.frame_gap, "flow_size": self.spec.flow_size, "percentile": self.spec.percentile,
               "calibration": self.calibration, "decode_precision": self.decoding.precision, "error": self.error,
               "position_speeds": self.spec.position_speeds if self.positions is not None else []}
        if self.stats is not None:
            out.update({k: self.stats[k] for k in ("tau", "tau_test_to_train", "tau_train_to_test",
                                                   "dynamic_threshold", "dynamic_degree_real")
                        + (("position_tau",) if self.positions is not None else ())})
        return out


def fit_motion(stages: Stages, encoded: Encoded, decoding: Decoding, spec: MotionSpec, calibration: str,
               ctx: RunContext) -> MotionReference:
    """The training videos' motion and τ_motion from the test videos' best match (or why motion cannot be
    measured: clips too short for the gap, real videos that do not move)."""
    frames = encoded.latents["train"].value.clip_shape[0]
    if len(range(0, frames, spec.frame_gap)) < 3:
        return MotionReference(spec, calibration, decoding, error=(
            f"motion: clips of {frames} frames are too short for privacy.motion.frame_gap {spec.frame_gap} (it needs "
            f"at least 3 frames, i.e. {2 * spec.frame_gap + 1}); lower the gap or load longer clips."))
    train, test = (decoded(stages, f"decoded-{split}", decoding, encoded.latents[split], ctx).value
                   for split in ("train", "test"))
    if frozen(train.profiles).all() or frozen(test.profiles).all():
        return MotionReference(spec, calibration, decoding, error="motion: the real videos do not move (their frames "
                                                                  "do not change), so there is no motion to compare.")
    views = _views(spec, decoding)
    reference = {name: _tensor(_view(name, train.profiles, train.positions, spec, decoding.positions), ctx.device)
                 for name in views}
    own = {name: _tensor(_view(name, test.profiles, test.positions, spec, decoding.positions), ctx.device)
           for name in views}
    stats: dict[str, Any] = {}
    for name, bases in views.items():
        pmax_test, _ = best_motion_match(own[name], reference[name], bases(own[name].shape[1]))
        pmax_train, _ = best_motion_match(reference[name], own[name], bases(own[name].shape[1]))
        prefix = "" if name == "profiles" else "position_"
        taus = {"test-to-train": privacy_threshold(pmax_test, spec.percentile),
                "train-to-test": privacy_threshold(pmax_train, spec.percentile)}
        stats.update({f"{prefix}tau": taus[calibration], f"{prefix}ceiling": ceiling_level(1.0, pmax_test),
                      f"{prefix}calibration_scores": pmax_test if calibration == "test-to-train" else pmax_train})
        if not prefix:
            stats.update({"tau_test_to_train": taus["test-to-train"], "tau_train_to_test": taus["train-to-test"],
                          "test_scores": pmax_test})
    threshold = float(np.percentile(test.profiles[..., 2], DYNAMIC_PERCENTILE))
    stats.update({"dynamic_threshold": threshold,
                  "dynamic_degree_real": float(dynamic_degree(test.profiles, threshold).mean())})
    ids = tuple(encoded.latents["train"].value.table["video_id"].astype(str))
    return MotionReference(spec, calibration, decoding, reference["profiles"], ids, stats,
                           positions=reference.get("positions"))


def row_motion(stages: Stages, motion: MotionReference, samples: Stored[LatentSet], sample_ids: list[str],
               boot: Bootstrap, ctx: RunContext) -> tuple[dict[str, Any], pd.DataFrame | None, np.ndarray | None]:
    """A row's motion-memorised % with its interval, the per-sample columns and the samples' motion scores."""
    if motion.error is not None:
        return {"motion_error": motion.error}, None, None
    clips = decoded(stages, "decoded-samples", motion.decoding, samples, ctx).value
    metrics, table, scores = motion_metrics(clips.profiles, motion, boot, ctx.device, clips.positions)
    table.insert(0, "sample_id", sample_ids)
    return metrics, table, scores


def motion_metrics(profiles: np.ndarray, motion: MotionReference, boot: Bootstrap, device: torch.device,
                   positions: np.ndarray | None = None) -> tuple[dict[str, Any], pd.DataFrame, np.ndarray]:
    """Motion-memorised % with its interval, per-sample columns and motion scores (the step view's) of a set of
    step profiles, joined with the position view's scores of their `positions` where the reference has one."""
    still = frozen(profiles)
    query = _tensor(_view("profiles", profiles, positions, motion.spec, motion.by_frame), device)
    scores, nearest = best_motion_match(query, motion.train.to(device),
                                        time_bases_of(motion.spec, query.shape[1], motion.by_frame))
    scores = np.where(still, np.nan, scores)
    stats = motion.stats
    levels, calibration, ceiling = np.nan_to_num(scores, nan=-np.inf), stats["calibration_scores"], stats["ceiling"]
    table = pd.DataFrame({"motion_score": scores,
                          "motion_nearest": [None if s else motion.train_ids[i] for i, s in zip(nearest, still,
                                                                                                 strict=True)]})
    if motion.positions is not None and positions is not None:
        moved = _tensor(_view("positions", profiles, positions, motion.spec, motion.by_frame), device)
        placed, _ = best_motion_match(moved, motion.positions.to(device),
                                      _views(motion.spec, motion.decoding)["positions"](moved.shape[1]))
        placed = np.where(still, np.nan, placed)
        table["motion_position_score"] = placed
        levels, calibration = joint_levels([levels, np.nan_to_num(placed, nan=-np.inf)],
                                           [calibration, stats["position_calibration_scores"]],
                                           [ceiling, stats["position_ceiling"]])
        ceiling = np.inf
    table["motion_memorised"] = ~still & is_memorised(levels, privacy_threshold(calibration, motion.spec.percentile),
                                                      ceiling)
    metrics: dict[str, Any] = {"motion_tau": stats["tau"]}
    table["dynamic_degree"] = dynamic_degree(profiles, stats["dynamic_threshold"])
    moving = mean_estimate(table["dynamic_degree"].to_numpy(), boot)
    metrics["dynamic_degree"] = moving.value
    metrics["dynamic_degree_low"], metrics["dynamic_degree_high"] = moving.interval(boot)
    metrics["dynamic_degree_gap"] = abs(moving.value - stats["dynamic_degree_real"])
    if still.all():
        return {**metrics, "motion_error": "motion: every sample is frozen (its frames do not change), so its "
                                           "motion cannot be compared."}, table, scores
    # a frozen sample copies no motion: it counts as not memorised
    estimate = memorised_estimate(levels, calibration, motion.spec.percentile, boot, ceiling)
    low, high = estimate.interval(boot)
    metrics.update({"motion_memorised_pct": estimate.value, "motion_memorised_pct_low": low,
                    "motion_memorised_pct_high": high})
    if still.any():
        metrics["motion_error"] = (f"motion: {int(still.sum())} of {len(still)} samples are frozen (their frames "
                                   "do not change) and count as not motion-memorised.")
    return metrics, table, scores


def _views(spec: MotionSpec, decoding: Decoding) -> dict[str, Callable[[int], list[tuple[np.ndarray, np.ndarray]]]]:
    """The views motion is compared in (the `Decoded` field each reads) and their time bases for a length."""
    views: dict[str, Callable[[int], list[tuple[np.ndarray, np.ndarray]]]] = {
        "profiles": lambda steps: time_bases_of(spec, steps, decoding.positions)}
    if decoding.positions:
        views["positions"] = lambda frames: time_bases(frames, tuple(spec.position_speeds))
    return views


def _view(name: str, profiles: np.ndarray, positions: np.ndarray | None, spec: MotionSpec, by_frame: bool
          ) -> np.ndarray:
    """What a view compares of decoded clips, real or generated alike: the steps (starting at every frame where
    every frame is decoded) or the positions (smoothed over neighbouring frames)."""
    if name == "positions":
        return smoothed(positions)
    return frame_steps(positions, spec.frame_gap) if by_frame else profiles


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float64)).to(device)


def time_bases_of(spec: MotionSpec, steps: int, by_frame: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """The alignments the spec compares motion on, for profiles of `steps` steps (`by_frame`: one starting at every
    frame, the lags then in frames)."""
    lags = frame_lags(tuple(spec.lags), spec.frame_gap) if by_frame else tuple(spec.lags)
    return time_bases(steps, tuple(spec.speeds), lags, spec.overlap)


def decode_precision(spec: MotionSpec, device: torch.device) -> str:
    """The precision the motion clips are decoded in: `spec.decode_precision`, with auto resolved for this device
    (so the stage key names the precision actually used)."""
    if spec.decode_precision != "auto":
        return spec.decode_precision
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = device.type == "cpu" and getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bfloat16" if native else "float32"
