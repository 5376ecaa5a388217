"""Phase 3c, the pixel copy test (`harness.metrics.copy`): the real videos' small decoded frames and their copy
scores, and one row's copy scores against them; `harness.evaluation` joins them with the re-ID scores.

The frames come from the decode the pixel tests share (`harness.pipeline.decoded`): every
`privacy.motion.frame_gap`-th frame, real videos included, so a sample and the real video it may copy pass through
the same decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.context import RunContext
from harness.data import LatentSet
from harness.metrics.copy import CopyScores, best_copy_match, search_grids
from harness.pipeline.decoded import Decoding, decoded
from harness.pipeline.encoding import Encoded
from harness.pipeline.stages import Stages, Stored
from harness.privacy_spec import CopySpec


@dataclass(frozen=True)
class CopyReference:
    """The training videos' small frames `[N_train, F, s, s]` on the device, which of them a first frame is compared
    with, and the real videos' own copy scores."""

    spec: CopySpec
    decoding: Decoding  # the decode every compared clip comes from
    train: Stored[torch.Tensor]
    first_only: bool  # privacy.reference_frames == first: a first frame is compared with first frames only
    scores: CopyScores | None = None  # None while they are being computed

    @property
    def cache_identity(self) -> dict[str, Any]:
        # the row's scores depend on the training frames and the settings, not on the real videos' own scores
        return {"spec": self.spec.model_dump(mode="json"), "train": self.train.key, "first_only": self.first_only}

    def match(self, query: torch.Tensor, ref: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Every query frame's best copy score against the reference frames, and which frame gives it."""
        spec = self.spec
        fine, coarse = search_grids(spec.size, spec.max_shift, spec.shift_step, tuple(spec.zooms))
        return best_copy_match(query, ref, fine, coarse, spec.candidates)

    def scores_of(self, frames: torch.Tensor) -> dict[str, np.ndarray]:
        """Copy scores of videos' frames `[N, F, s, s]` against the training videos: of the first frame (`first`)
        and of any frame (`content`), with the training video that gives each (`*_nearest`)."""
        ref = self.train.value
        scores, row = self.match(frames.reshape(-1, *frames.shape[2:]), ref.reshape(-1, *ref.shape[2:]))
        scores, video = scores.reshape(len(frames), -1), row.reshape(len(frames), -1) // ref.shape[1]
        best = scores.argmax(axis=1)
        out = {"content": scores[np.arange(len(frames)), best], "content_nearest": video[np.arange(len(frames)), best],
               "first": scores[:, 0], "first_nearest": video[:, 0]}
        if self.first_only:  # the first frame against the training videos' first frames only
            out["first"], first_row = self.match(frames[:, 0], ref[:, 0])
            out["first_nearest"] = first_row
        return out

    @property
    def summary(self) -> dict[str, Any]:
        """What results.json reports about the copy test."""
        return {**self.spec.model_dump(mode="json"), "frame_gap": self.decoding.gap,
                "test_median": float(np.median(self.scores.first_test)),
                "test_p95": float(np.percentile(self.scores.first_test, 95))}


def fit_copy(stages: Stages, encoded: Encoded, decoding: Decoding, spec: CopySpec, first_only: bool, ctx: RunContext
             ) -> CopyReference:
    """The training and test videos' small frames and their copy scores in both directions (test against training,
    which sets the threshold by default, and training against test)."""
    train, test = (frames_of(stages, f"decoded-{split}", decoding, encoded.latents[split], ctx)
                   for split in ("train", "test"))
    reference = CopyReference(spec, decoding, train, first_only)
    artifact = stages.run("copy-calibration", _calibration, reference=reference, test=test)
    scores = CopyScores(**{k: np.load(artifact.path / f"{k}.npy") for k in CopyScores.__dataclass_fields__})
    return replace(reference, scores=scores)


def row_copy(stages: Stages, copy: CopyReference, samples: Stored[LatentSet], ctx: RunContext
             ) -> Stored[dict[str, np.ndarray]]:
    """A row's copy scores: first frames (`first`, `first_nearest`) and any frame (`content`, `content_nearest`)."""
    frames = frames_of(stages, "decoded-samples", copy.decoding, samples, ctx)
    artifact = stages.run("copy-scores", _row_scores, reference=copy, frames=frames)
    with np.load(artifact.path / "scores.npz") as scores:
        return Stored(artifact.key, dict(scores))


def frames_of(stages: Stages, name: str, decoding: Decoding, latents: Stored[LatentSet], ctx: RunContext
              ) -> Stored[torch.Tensor]:
    """The cached small decoded frames `[N, F, size, size]` of a latent set, on the run's device."""
    clips = decoded(stages, name, decoding, latents, ctx)
    return Stored(clips.key, torch.from_numpy(np.array(clips.value.frames)).to(ctx.device))


def _calibration(folder: Path, reference: CopyReference, test: Stored[torch.Tensor]) -> None:
    train, frames = reference.train.value, test.value
    own = reference.scores_of(frames)
    scores = {"first_test": own["first"], "first_train": reference.match(train[:, 0], frames[:, 0])[0],
              "content_test": own["content"], "content_train": _best_per_video(reference, train, frames)}
    for key, value in scores.items():
        np.save(folder / f"{key}.npy", value)


def _best_per_video(reference: CopyReference, query: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """Best copy score of any frame of each query video `[N, F, s, s]` against any frame of `ref` `[M, F', s, s]`."""
    scores, _ = reference.match(query.reshape(-1, *query.shape[2:]), ref.reshape(-1, *ref.shape[2:]))
    return scores.reshape(len(query), -1).max(axis=1)


def _row_scores(folder: Path, reference: CopyReference, frames: Stored[torch.Tensor]) -> None:
    np.savez(folder / "scores.npz", **reference.scores_of(frames.value))
