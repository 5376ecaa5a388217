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


def off_manifold(moments: tuple[np.ndarray, np.ndarray], frames: torch.Tensor, count: int, normalise,
                 rng: np.random.Generator) -> torch.Tensor:
    """`count` frames `[count, C, h, w]` no video looks like, normalised as the model normalises a clip: half
    Gaussian latents with the training latents' per-channel `moments`, half a batch frame's (`frames`, normalised)
    latent pixels in random places (its values, none of its structure). They are negatives of every anchor and of
    each other (`in_batch_loss`): a model shown only real frames maps such a frame to an arbitrary, nearly constant
    point, which may sit among the training frames (the `noise` control was 100 % memorised by one tiny model
    trained over two processes) and makes two independent noise frames look like one video."""
    mean, std = moments
    gaussian = count - count // 2
    noise = normalise(torch.from_numpy(mean + std * rng.standard_normal((gaussian, 1, *frames.shape[1:]))
                                       .astype(np.float32)))[:, 0]
    picked = frames[torch.from_numpy(rng.integers(0, len(frames), count // 2))].flatten(2)  # [n, C, h * w]
    places = torch.from_numpy(np.argsort(rng.random(picked.shape), axis=-1))
    scrambled = picked.gather(-1, places).view(-1, *frames.shape[1:])
    return torch.cat([noise, scrambled.to(noise.dtype)])


def positive_pairs(n_videos: int, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Every video once, in random order, with two different frames: rows `[video, frame_a, video, frame_b, 1]`."""
    videos = rng.permutation(n_videos)
    first = rng.integers(0, n_frames, n_videos)
    second = (first + rng.integers(1, n_frames, n_videos)) % n_frames
    return np.stack([videos, first, videos, second, np.ones(n_videos, dtype=np.int64)], axis=1)


def in_batch_loss(logits: torch.Tensor, videos: int) -> torch.Tensor:
    """Loss of `[B + k, B + k]` logits of every anchor against every partner, the first `videos` (B) rows and
    columns the batch's videos (the diagonal: the same video), the last k off-manifold frames: InfoNCE both ways
    over the videos (an anchor must rank its own video's partner above the batch's other videos and the
    off-manifold frames, as P_max ranks the training videos) plus BCE balanced between the B positives and every
    other pair, off-manifold frames against each other included (a score must also clear one absolute bar: τ is one
    threshold for every query; a frame is not compared with itself)."""
    n = videos
    target = torch.arange(n, device=logits.device)
    ranking = 0.5 * (nn.functional.cross_entropy(logits[:n], target) +
                     nn.functional.cross_entropy(logits[:n, :n].T, target))
    same = torch.zeros_like(logits)
    same[:n, :n] = torch.eye(n, device=logits.device)
    counted = 1 - torch.eye(len(logits), device=logits.device)
    counted[:n, :n] = 1
    negatives = float(counted.sum()) - n
    weight = same * max(negatives / n, 1.0) + (1 - same) * counted
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
