"""Temporal consistency: how much every later frame of a video still looks like its frame 0 to the re-ID model.

For features `[N, T, D]` the curve at t is the mean over videos of score(f_0, f_t), t = 1..T-1, with the re-ID head
(`pred` logit) or the Pearson correlation of the feature vectors; a video's own consistency is the mean of its
scores. The swap control replaces each video's frame 0 with another video's frame 0: a metric that cannot tell
those apart measures nothing.
"""

from __future__ import annotations

import torch

from harness.metrics.pairs import score_pairs


def consistency_scores(features: torch.Tensor, head: str, weight: torch.Tensor | None = None, bias: float = 0.0,
                       swap: bool = False) -> torch.Tensor:
    """Score of frame 0 against frame t of every video, for t = 1..T-1 (`[N, T-1]`)."""
    if features.dim() != 3 or features.shape[1] < 2:
        raise ValueError(f"consistency needs features [N, T >= 2, D], got {list(features.shape)}")
    first = features[:, 0]
    if swap:
        if len(features) < 2:
            raise ValueError("the frame-0 swap control needs at least two videos")
        first = first.roll(1, dims=0)
    n, t, d = features.shape
    later = features[:, 1:].reshape(-1, d)
    return score_pairs(first.repeat_interleave(t - 1, dim=0), later, head, weight, bias).view(n, t - 1)


def consistency_curve(features: torch.Tensor, head: str, weight: torch.Tensor | None = None, bias: float = 0.0,
                      swap: bool = False) -> torch.Tensor:
    """Mean score of frame 0 against frame t over the videos, for t = 1..T-1 (`[T-1]`)."""
    return consistency_scores(features, head, weight, bias, swap).mean(dim=0)
