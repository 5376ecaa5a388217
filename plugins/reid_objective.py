"""The `siamese` model's training objectives: `batch` (every anchor of a batch of videos scored against every
partner: its own video's other frame or perturbed copy, the other videos', a few off-manifold frames; ranked and
thresholded) and the hard negatives of `pairs` (negatives redrawn among the videos the model finds nearest)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from harness.context import mixed_precision


def latent_moments(latents: np.ndarray, videos: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and spread `[C, 1, 1]` of the first `videos` training latents, for `off_manifold`."""
    sample = np.asarray(latents[:videos], dtype=np.float32)
    return sample.mean(axis=(0, 1, 3, 4))[:, None, None], sample.std(axis=(0, 1, 3, 4))[:, None, None]


def off_manifold(moments: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...], count: int, normalise,
                 rng: np.random.Generator) -> torch.Tensor:
    """`count` frames of shape `(C, h, w)` of Gaussian latents with the training latents' per-channel `moments`,
    normalised as the model normalises a clip: negatives of every anchor. A model shown only real frames maps such a
    frame to an arbitrary point, which may sit among the training frames (the `noise` control was 100 % memorised
    by one tiny model trained over two processes)."""
    mean, std = moments
    noise = mean + std * rng.standard_normal((count, 1, *shape)).astype(np.float32)
    return normalise(torch.from_numpy(noise))[:, 0]


def positive_pairs(n_videos: int, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Every video once, in random order, with two different frames: rows `[video, frame_a, video, frame_b, 1]`."""
    videos = rng.permutation(n_videos)
    first = rng.integers(0, n_frames, n_videos)
    second = (first + rng.integers(1, n_frames, n_videos)) % n_frames
    return np.stack([videos, first, videos, second, np.ones(n_videos, dtype=np.int64)], axis=1)


def in_batch_loss(logits: torch.Tensor) -> torch.Tensor:
    """Loss of `[B, B + k]` logits of every anchor against every partner, the diagonal being the same video and the
    last k columns off-manifold frames: InfoNCE both ways (an anchor must rank its own video's partner above the
    batch's other videos, as P_max ranks the training videos) plus BCE balanced between the B positives and the
    other pairs (a score must also clear one absolute bar: τ is one threshold for every query)."""
    n = len(logits)
    target = torch.arange(n, device=logits.device)
    ranking = 0.5 * (nn.functional.cross_entropy(logits, target) +
                     nn.functional.cross_entropy(logits[:, :n].T, target))
    same = torch.eye(n, logits.shape[1], device=logits.device)
    weight = same * max(logits.shape[1] - 1, 1) + (1 - same)
    bar = nn.functional.binary_cross_entropy_with_logits(logits, same, weight=weight, reduction="sum") / weight.sum()
    return ranking + bar


def hard_negatives(net: nn.Module, x: torch.Tensor, pairs: np.ndarray, share: float, pool: int,
                    rng: np.random.Generator, device: torch.device) -> np.ndarray:
    """`pairs` with `share` of the negatives' second video redrawn among the `pool` videos whose random frame the
    model finds nearest to the first video's (the head's distance: L1 on features scaled by its weights' sizes)."""
    frames = rng.integers(0, x.shape[1], len(x))
    redraw = np.flatnonzero((pairs[:, 4] == 0) & (rng.random(len(pairs)) < share))
    choice = rng.integers(0, min(pool, len(x) - 1), len(redraw))
    picked = x[torch.arange(len(x)), torch.from_numpy(frames)]  # one frame per video [N, C, H, W]
    was_training = net.training
    net.eval()
    with torch.no_grad(), mixed_precision(device):
        features = torch.cat([net.embed(picked[start:start + 256].to(device))
                              for start in range(0, len(picked), 256)]).float()
    net.train(was_training)
    nearest = nearest_videos(features * net.head.weight.detach().abs()[0], min(pool, len(x) - 1))
    out = pairs.copy()
    out[redraw, 2] = nearest[out[redraw, 0], choice]
    return out


def nearest_videos(features: torch.Tensor, k: int, budget: int = 1 << 22) -> np.ndarray:
    """`[N, k]` indices of every row's `k` nearest other rows by L1 distance, in chunks of about `budget` distances."""
    rows = max(1, budget // len(features))
    nearest = []
    for start in range(0, len(features), rows):
        dist = torch.cdist(features[start:start + rows], features, p=1)
        rows_here = torch.arange(len(dist), device=dist.device)
        dist[rows_here, rows_here + start] = float("inf")  # a video is not its own negative
        nearest.append(dist.topk(k, dim=1, largest=False).indices.cpu())
    return torch.cat(nearest).numpy()
