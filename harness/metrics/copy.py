"""Pixel copy detection: is a frame a training frame moved, zoomed, re-encoded or re-scaled in intensity?

A re-ID model learns the invariances its training pairs show and no others, and a latent encoder is not stable under
a shift of a few pixels: a training video shifted by 4 pixels went unflagged. This test compares decoded frames
directly. Frames are area-resized to a small side, where a codec, noise or the decoder change little and the anatomy
a lot; a query frame is tried under a grid of shifts and zooms about its centre (`alignments`), and its score
against a reference frame is the normalised cross-correlation over the pixels the moved query covers (a zoomed-out
query's empty border does not count), so gain and offset do not matter either. A query's copy score is its best
over the alignments and the reference frames; an exact copy scores 1.

Trying every alignment against every reference frame costs alignments x references per query frame. So the search
has two steps: the same test at half the size, on a coarser grid of shifts, ranks the reference frames, and the full
grid tries only each query's best `candidates` of them (on the phantom default's near-copies and held-out videos,
8 candidates out of 800 training frames gave every flag and the threshold the exhaustive search gives, at a quarter
of its cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from harness.metrics.privacy import ceiling_level, joint_levels

#: query frames x alignments x reference frames scored at once: bounds the memory of a score block (floats)
BLOCK = 1 << 24
#: a frame whose grey levels vary less than this (standard deviation) over the compared pixels shows nothing
FLAT = 1e-3


def small_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """`float32 [..., size, size]` of frames `[..., H, W]` (any numeric type), area-resized."""
    lead, (height, width) = frames.shape[:-2], frames.shape[-2:]
    flat = frames.reshape(-1, 1, height, width).float()
    if (height, width) != (size, size):
        flat = F.interpolate(flat, size=(size, size), mode="area")
    return flat.reshape(*lead, size, size)


def alignments(size: int, max_shift: float, step: float, zooms: tuple[float, ...]) -> torch.Tensor:
    """`[V, 2, 3]` affine maps (as `affine_grid` takes them) of every zoom and every shift in x and y from
    -max_shift to max_shift pixels in `step`s: the query moved by each is compared with the references."""
    shifts = np.arange(-max_shift, max_shift + step / 2, step) if max_shift > 0 else np.zeros(1)
    return torch.tensor([[[1 / zoom, 0.0, 2 * dx / size], [0.0, 1 / zoom, 2 * dy / size]]
                         for zoom in zooms for dx in shifts for dy in shifts], dtype=torch.float32)


def search_grids(size: int, max_shift: float, step: float, zooms: tuple[float, ...]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The alignments of the full search at `size` and of the coarse search at half the size: the same zooms, shifts
    in steps of `step` half-size pixels (twice as coarse) out to at least `max_shift` full-size pixels."""
    coarse_shift = step * math.ceil(max_shift / 2 / step)
    return alignments(size, max_shift, step, zooms), alignments(size // 2, coarse_shift, step, zooms)


@dataclass(frozen=True)
class _Aligner:
    """A grid of alignments at one frame size: moves query frames and says how much of each a reference varies
    over the pixels every moved query covers."""

    grid: torch.Tensor  # [V, s, s, 2]
    mask: torch.Tensor  # [V, D]: the pixels each alignment's moved query covers
    count: torch.Tensor  # [V, 1]
    least: torch.Tensor  # [V, 1]: the norm of a centred frame varying by FLAT

    @classmethod
    def of(cls, maps: torch.Tensor, size: int, device: torch.device) -> _Aligner:
        grid = F.affine_grid(maps.to(device), [len(maps), 1, size, size], align_corners=False)
        covered = F.grid_sample(torch.ones(len(maps), 1, size, size, device=device), grid, mode="bilinear",
                                padding_mode="zeros", align_corners=False)[:, 0].flatten(1) > 0.999
        mask = covered.float()
        count = mask.sum(dim=1, keepdim=True).clamp_min(1)
        return cls(grid, mask, count, FLAT * count.sqrt())

    def masked(self, query: torch.Tensor) -> torch.Tensor:
        """`[n, V, D]`: each query frame `[n, s, s]` under every alignment, zero outside the pixels it covers."""
        # every alignment's grid stacked into one tall grid: the query is sampled once, never copied per alignment
        alignments, size = self.grid.shape[:2]
        tall = self.grid.reshape(1, alignments * size, size, 2).expand(len(query), -1, -1, -1)
        moved = F.grid_sample(query[:, None], tall, mode="bilinear", padding_mode="zeros", align_corners=False)
        return moved.view(len(query), alignments, -1) * self.mask

    def normalised(self, query: torch.Tensor) -> torch.Tensor:
        """`masked`, centred and scaled to unit norm over the covered pixels (zero where it shows no variation):
        its products with references are their cross-correlations times the references' spreads."""
        moved = self.masked(query)
        moved = moved - self.mask * (moved.sum(dim=2, keepdim=True) / self.count)
        norm = moved.norm(dim=2, keepdim=True)
        return moved * torch.where(norm > self.least, 1 / norm.clamp_min(1e-12), 0.0)

    def sums(self, refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[V, R]` sums of every centred reference `[R, D]` over the pixels each alignment covers, and its spread
        there (the norm once centred over them)."""
        total = self.mask @ refs.T
        return total, (self.mask @ refs.T.square() - total.square() / self.count).clamp_min(0).sqrt()

    def inverse(self, spread: torch.Tensor) -> torch.Tensor:
        """1 / spread, 0 where a frame shows no variation: a product times it is the cross-correlation (or 0)."""
        return torch.where(spread > self.least, 1 / spread.clamp_min(1e-12), 0.0)  # [V, 1] broadcasts as [.., V, 1]


def best_copy_match(query: torch.Tensor, ref: torch.Tensor, maps: torch.Tensor, coarse_maps: torch.Tensor | None = None,
                    candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For every query frame `[Nq, s, s]` its best score (masked normalised cross-correlation, at best over the
    alignments `maps`) against the reference frames `[Nr, s, s]`, and which reference frame gives it. With
    `candidates`, only the best that many reference frames of a search at half the size over `coarse_maps` are
    tried; without, every one. In blocks, so memory stays bounded, on the device the tensors are on. A frame without
    any variation inside the compared pixels scores 0 (it shows nothing that could be copied)."""
    if len(query) == 0 or len(ref) == 0:
        return np.zeros(len(query), np.float32), np.zeros(len(query), np.int64)
    size = query.shape[-1]
    if candidates is None or candidates >= len(ref):
        chosen = torch.arange(len(ref), device=query.device).expand(len(query), -1)
    else:
        half = size // 2
        chosen = _candidates(small_frames(query, half), small_frames(ref, half),
                             _Aligner.of(coarse_maps, half, query.device), candidates)
    return _refine(query, ref, _Aligner.of(maps, size, query.device), chosen)


def _centred(frames: torch.Tensor) -> torch.Tensor:
    # the scores do not change, the float error of the spreads does
    flat = frames.flatten(1)
    return flat - flat.mean(dim=1, keepdim=True)


def _candidates(query: torch.Tensor, ref: torch.Tensor, aligner: _Aligner, k: int) -> torch.Tensor:
    """`[Nq, k]`: the reference frames with the best scores under `aligner`, for every query frame."""
    refs, query = _centred(ref), _centred(query).view_as(query)
    alignments = len(aligner.grid)
    ref_block = max(1, min(len(refs), BLOCK // alignments))
    query_block = max(1, BLOCK // (alignments * ref_block))
    top_scores = torch.full((len(query), 0), -torch.inf, device=query.device)
    top = torch.zeros((len(query), 0), dtype=torch.long, device=query.device)
    for start in range(0, len(refs), ref_block):
        block = refs[start:start + ref_block]
        inverse = aligner.inverse(aligner.sums(block)[1])  # [V, B]
        best = torch.cat([(aligner.normalised(query[first:first + query_block]) @ block.T * inverse).amax(1)
                          for first in range(0, len(query), query_block)])
        scores = torch.cat([top_scores, best], dim=1)
        index = torch.cat([top, torch.arange(start, start + len(block), device=query.device).expand(len(query), -1)],
                          dim=1)
        top_scores, order = scores.topk(min(k, scores.shape[1]), dim=1)
        top = index.gather(1, order)
    return top


def _refine(query: torch.Tensor, ref: torch.Tensor, aligner: _Aligner, chosen: torch.Tensor
            ) -> tuple[np.ndarray, np.ndarray]:
    """Best score of every query frame over all alignments and its `chosen` reference frames `[Nq, k]`.

    With few references a query, centring and scaling each moved query (`_Aligner.normalised`) would cost more
    than the products: the cross-correlation is formed from the moved query's sums instead,
    (Σ a b − Σ a Σ b / n) / (spread_a spread_b) over the n covered pixels."""
    refs, query = _centred(ref), _centred(query).view_as(query)
    total, spread = aligner.sums(refs)  # [V, Nr]
    alignments, k = len(aligner.grid), chosen.shape[1]
    pixels = query.shape[-1] ** 2  # moved queries [n, V, D], their references [n, k, D], the scores [n, V, k]
    query_block = max(1, BLOCK // max(alignments * pixels, k * pixels, alignments * k))
    best, index = [], []
    for first in range(0, len(query), query_block):
        picked = chosen[first:first + query_block]  # [n, k]
        moved = aligner.masked(query[first:first + len(picked)])  # [n, V, D]
        sum_a = moved.sum(dim=2, keepdim=True)
        spread_a = (moved.square().sum(dim=2, keepdim=True) - sum_a.square() / aligner.count).clamp_min(0).sqrt()
        products = moved @ refs[picked].transpose(1, 2)  # [n, V, k]
        covariance = products - sum_a * total[:, picked].permute(1, 0, 2) / aligner.count
        scores = covariance * aligner.inverse(spread_a) * aligner.inverse(spread[:, picked].permute(1, 0, 2))
        found = scores.amax(dim=1).max(dim=1)
        best.append(found.values.clamp(-1, 1))
        index.append(picked.gather(1, found.indices[:, None])[:, 0])
    return torch.cat(best).cpu().numpy(), torch.cat(index).cpu().numpy()


@dataclass(frozen=True)
class CopyScores:
    """The real videos' pixel copy scores (this module's), the second test of the first-frame and content
    columns: test videos against the training videos and the other way, first frames and any frame."""

    first_test: np.ndarray
    first_train: np.ndarray
    content_test: np.ndarray
    content_train: np.ndarray

    def calibration(self, part: str, direction: str) -> np.ndarray:
        """The scores that calibrate `part` (first or content) in the `privacy.calibration` direction."""
        return getattr(self, f"{part}_{'test' if direction == 'test-to-train' else 'train'}")


#: what a frame scores against itself under the copy test (normalised cross-correlation)
COPY_IDENTITY = 1.0


def joint_with_copy(pmax: np.ndarray, calibration: np.ndarray, ceiling: float, copy: np.ndarray | None,
           copy_calibration: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Re-ID scores and their calibration, joined with the copy test's when there is one (`joint_levels`): the
    scores, calibration and ceiling to threshold."""
    if copy is None or copy_calibration is None:
        return pmax, calibration, ceiling
    levels, reference = joint_levels([pmax, copy], [calibration, copy_calibration],
                                     [ceiling, ceiling_level(COPY_IDENTITY, copy_calibration)])
    return levels, reference, np.inf
