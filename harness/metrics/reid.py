"""Re-ID model quality (the seed paper's Tables 1 and 3): one fixed-seed pair per test video, scored by every head."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.metrics.classification import bootstrap_auc, decision_metrics, roc_auc
from harness.metrics.pairs import HEADS, score_pairs


def sample_pairs(n_videos: int, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """One pair per video: rows `[video_a, frame_a, video_b, frame_b, same]`, about half from the same video.

    A positive pair uses two different frames of one video; a negative pair a random frame of another video.
    """
    if n_videos < 2 or n_frames < 2:
        raise ValueError("pairs need at least two videos of at least two frames")
    va = rng.permutation(n_videos)
    fa = rng.integers(0, n_frames, n_videos)
    same = rng.random(n_videos) < 0.5
    vb = np.where(same, va, (va + rng.integers(1, n_videos, n_videos)) % n_videos)
    fb = np.where(same, (fa + rng.integers(1, n_frames, n_videos)) % n_frames, rng.integers(0, n_frames, n_videos))
    return np.stack([va, fa, vb, fb, same.astype(np.int64)], axis=1)


def reid_quality(frames: torch.Tensor, weight: torch.Tensor, bias: float, seed: int = 0,
                 resamples: int = 10_000) -> dict[str, Any]:
    """AUC (with bootstrap 95 % interval) per head, and accuracy/F1/precision/recall of the `pred` head at 0.5.

    `frames` are the features `[N, T, D]` of the test videos; the pairs depend only on `seed`, so every model
    evaluated on the same test split sees the same pairs.
    """
    pairs = sample_pairs(frames.shape[0], frames.shape[1], np.random.default_rng(seed))
    a, b = frames[pairs[:, 0], pairs[:, 1]], frames[pairs[:, 2], pairs[:, 3]]
    labels = pairs[:, 4].astype(bool)
    out: dict[str, Any] = {"pairs": len(pairs), "positives": int(labels.sum()), "heads": {}}
    for head in HEADS:
        scores = score_pairs(a, b, head, weight, bias).double().cpu().numpy()
        low, high = bootstrap_auc(labels, scores, resamples=resamples, seed=seed)
        out["heads"][head] = {"auc": roc_auc(labels, scores), "auc_low": low, "auc_high": high}
        if head == "pred":
            out.update(decision_metrics(labels, scores))
    out["auc"], out["auc_low"], out["auc_high"] = (out["heads"]["pred"][k] for k in ("auc", "auc_low", "auc_high"))
    return out
