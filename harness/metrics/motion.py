"""Motion memorisation (Chen et al. 2024): does a video move like a training video, whatever it looks like?

A clip's motion profile comes from dense optical flow (OpenCV's Farnebäck) between frames i and i + gap, computed
on frames resized to `size` pixels a side: per flow, the mean displacement (dx, dy) of the whole image (how the
anatomy moves in the sector) and the mean flow magnitude (how much moves inside it, e.g. the beating); per step
also the mean absolute change of the grey levels (the motion's energy, which follows the beat where the flow
estimate is coarse). The motion descriptor centres each of the three parts over time and scales it to unit norm, so
where the heart sits, its size, texture and brightness do not matter, only how the motion unfolds. (Adding the grey
change raised `motion-copy` on the phantom from 80.7 to 87.7 % motion-memorised, holdout 3.7 to 3.3 %.) Two
clips' motion score is the cosine of their descriptors, at best over a few time bases (`time_bases`): a sample may
replay a training video's beat at another speed or from a later step, and the descriptors are then compared on the
steps the two share, the reference read at the sample's time base. Where every frame is decoded, the steps start at
every frame (`frame_steps`), so a lag may be any number of frames, not only of steps.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import cv2
import numpy as np
import torch

#: Farnebäck's parameters: a 3-level pyramid (halving), a 9-pixel window, 3 iterations, polynomial of 5 pixels
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=9, iterations=3, poly_n=5, poly_sigma=1.1, flags=0)
#: the percentile of the real test videos' flow steps (mean flow magnitude) a step must exceed to count as moving
DYNAMIC_PERCENTILE = 10.0
#: a clip whose frames change by less than this (mean grey levels: 1 % of the pixels by one level) at every step is
#: frozen; its flow would be only the estimator's noise floor
FROZEN_GREY = 0.01


def clip_profile(frames: np.ndarray, size: int) -> np.ndarray:
    """`[F - 1, 4]` per step between consecutive frames of `uint8 [F, H, W]`: the flow's mean dx, mean dy and mean
    magnitude, in pixels of the clip, and the mean absolute change of the grey levels."""
    small = [cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA) for frame in frames]
    scale = frames.shape[-1] / size
    steps = []
    for i in range(len(frames) - 1):
        flow = cv2.calcOpticalFlowFarneback(small[i], small[i + 1], None, **FARNEBACK) * scale
        change = np.abs(frames[i + 1].astype(np.int16) - frames[i]).mean()
        steps.append((flow[..., 0].mean(), flow[..., 1].mean(), np.hypot(flow[..., 0], flow[..., 1]).mean(), change))
    return np.asarray(steps, dtype=np.float64).reshape(-1, 4)


def motion_profiles(clips: np.ndarray, size: int, threads: int = 2) -> np.ndarray:
    """`[N, F - 1, 4]` profiles of `uint8 [N, F, H, W]` clips; OpenCV releases the GIL, so threads run in parallel."""
    inner = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one thread per clip: OpenCV's own threads would oversubscribe the cores
    try:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            profiles = list(pool.map(partial(clip_profile, size=size), clips))
    finally:
        cv2.setNumThreads(inner)
    return np.stack(profiles) if profiles else np.zeros((0, max(clips.shape[1] - 1, 0), 4))


def positions(profiles: np.ndarray) -> np.ndarray:
    """`[N, S + 1, 4]` where each part of step profiles `[N, S, 4]` has got to by every frame: their running sum from
    0. A video resampled to another frame rate by nearest frames jitters the length of its steps, 1 to 4 source frames
    where the original's were 2, but samples the same smooth path of positions, so positions still compare."""
    start = np.zeros_like(profiles[:, :1])
    return np.concatenate([start, profiles], axis=1).cumsum(axis=1)


def smoothed(positions: np.ndarray) -> np.ndarray:
    """`[N, T, 4]` positions averaged over each frame and its neighbours (weights 1, 2, 1; the end frames repeated):
    a video resampled to another frame rate by nearest frames sits up to half a frame off its path at many frames,
    and the average takes most of that off while a path as smooth as a beat barely changes (on the phantom default,
    near-copies drawn at 30 fps and read at 30 went from 73 to 100 % motion-memorised, at 32 read as 30 from 88)."""
    padded = np.concatenate([positions[:, :1], positions, positions[:, -1:]], axis=1)
    return (padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]) / 4


def frame_steps(positions: np.ndarray, gap: int) -> np.ndarray:
    """`[N, T - gap, 4]` the motion over every window of `gap` frames, one window starting at each frame (where the
    motion has got to `gap` frames later, from `positions`): the steps of every phase at once, so a clip started an
    odd number of frames late still lines up with a training video's steps (on the phantom default, near-copies
    started one clip frame late went from 28 to 100 % motion-memorised)."""
    return positions[:, gap:] - positions[:, :-gap]


def frame_lags(lags: tuple[int, ...], gap: int) -> tuple[int, ...]:
    """Lags of `lags` steps of `gap` frames as lags of frames, with every frame between them."""
    return tuple(range(min(lags) * gap, max(lags) * gap + 1))


def dynamic_degree(profiles: np.ndarray, threshold: float) -> np.ndarray:
    """Per clip, the share of its flow steps whose mean flow magnitude exceeds `threshold` (VBench's dynamic degree,
    counted per step): consistency alone rewards a video that does not move, this says how much it moves; a frozen
    clip scores 0, the real videos whose low percentile set the threshold about 1 minus that percentile."""
    return (np.asarray(profiles)[..., 2] > threshold).mean(axis=1)


def frozen(profiles: np.ndarray) -> np.ndarray:
    """Which clips do not move at all (a frozen video: its frames do not change)."""
    return profiles[..., 3].max(axis=1) < FROZEN_GREY


def descriptors(profiles: np.ndarray) -> np.ndarray:
    """`[N, 4 (F - 1)]` unit-norm motion descriptors: displacement, flow magnitude and grey change, equally
    weighted."""
    return _descriptors(torch.from_numpy(np.asarray(profiles, dtype=np.float64))).numpy().astype(np.float32)


def _descriptors(profiles: torch.Tensor) -> torch.Tensor:
    """`descriptors` of `[N, S, 4]` profiles on their own device: each part centred over the steps and scaled to
    unit norm, the three parts then weighted equally."""
    parts = []
    for part in (profiles[..., :2], profiles[..., 2:3], profiles[..., 3:4]):
        centred = part - part.mean(dim=1, keepdim=True)
        norm = centred.reshape(len(part), -1).norm(dim=1)[:, None, None]
        parts.append(torch.where(norm > 1e-12, centred / norm.clamp_min(1e-12), torch.zeros_like(centred)))
    return torch.cat(parts, dim=2).reshape(len(profiles), -1) / np.sqrt(len(parts))


def time_bases(steps: int, speeds: tuple[float, ...] = (1.0,), lags: tuple[int, ...] = (0,), overlap: float = 0.6
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The alignments a query's motion is compared on: for every speed s (the query replays the reference s times
    as fast, e.g. a video resampled to another frame rate and read at the wrong one) and lag l (it starts l steps
    later), the query's steps j whose reference position s j + l lies inside the reference, and those positions.
    Alignments that cover fewer than `overlap` of the steps (and fewer than 3) are left out."""
    out = []
    need = max(min(3, steps), int(np.ceil(overlap * steps)))  # the aligned base always qualifies
    for speed in speeds:
        for lag in lags:
            positions = speed * np.arange(steps) + lag
            inside = (positions >= 0) & (positions <= steps - 1 + 1e-9)
            if inside.sum() >= need:
                out.append((np.flatnonzero(inside), np.minimum(positions[inside], steps - 1)))
    return out


def _at(profiles: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """`[N, len(positions), 4]` profiles read at fractional step positions (linear interpolation)."""
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, profiles.shape[1] - 1)
    weight = torch.as_tensor(positions - low, dtype=profiles.dtype, device=profiles.device)[None, :, None]
    return profiles[:, low] * (1 - weight) + profiles[:, high] * weight


def best_motion_match(query: torch.Tensor, ref: torch.Tensor, bases: list[tuple[np.ndarray, np.ndarray]] | None = None,
                      chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For every query profile `[Nq, S, 4]` its best motion score (cosine of descriptors) over the reference
    profiles `[Nr, S, 4]` and every time base (`time_bases`; default: aligned, same speed), and which reference
    scores it; chunked over the queries so memory stays bounded, on whatever device the tensors are on."""
    bases = bases or time_bases(query.shape[1])
    if len(query) == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    best = torch.full((len(query),), -torch.inf, device=query.device, dtype=query.dtype)
    index = torch.zeros(len(query), dtype=torch.long, device=query.device)
    for steps, positions in bases:
        reference = _descriptors(_at(ref, positions))
        for start in range(0, len(query), chunk):
            found = (_descriptors(query[start:start + chunk, steps]) @ reference.T).max(dim=1)
            better = found.values > best[start:start + chunk]
            best[start:start + chunk] = torch.where(better, found.values, best[start:start + chunk])
            index[start:start + chunk] = torch.where(better, found.indices, index[start:start + chunk])
    return best.float().cpu().numpy(), index.cpu().numpy()
