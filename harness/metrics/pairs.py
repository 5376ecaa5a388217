"""All-pairs scores between two feature sets, reduced to a per-query max and argmax in bounded memory.

Heads (higher = more similar):
  pred  the siamese head's logit  w . |a - b| + bias
  l1    -mean |a - b|
  l2    -mean (a - b)^2           (via matrix products, no [Na, Nb, D] tensor)
  corr  Pearson correlation of the two feature vectors
"""

from __future__ import annotations

import functools

import numpy as np
import torch

HEADS = ("pred", "l1", "l2", "corr")


def _standardise(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def score_block(a: torch.Tensor, b: torch.Tensor, head: str, weight: torch.Tensor | None = None,
                bias: float = 0.0) -> torch.Tensor:
    """Scores `[len(a), len(b)]` of one block; callers keep blocks small."""
    if head == "pred":
        if weight is None:
            raise ValueError("the 'pred' head needs the head's weight vector")
        return (a[:, None, :] - b[None, :, :]).abs() @ weight + bias
    if head == "l1":
        return -(a[:, None, :] - b[None, :, :]).abs().mean(dim=2)
    if head == "l2":
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return -sq.clamp_min(0) / a.shape[1]
    if head == "corr":
        return _standardise(a) @ _standardise(b).T
    raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")


def score_pairs(a: torch.Tensor, b: torch.Tensor, head: str, weight: torch.Tensor | None = None,
                bias: float = 0.0) -> torch.Tensor:
    """Scores of matched rows: `score(a[i], b[i])` for every i (`[N]`)."""
    if head == "pred":
        if weight is None:
            raise ValueError("the 'pred' head needs the head's weight vector")
        return (a - b).abs() @ weight + bias
    if head == "l1":
        return -(a - b).abs().mean(dim=1)
    if head == "l2":
        return -((a - b) ** 2).mean(dim=1)
    if head == "corr":
        return (_standardise(a) * _standardise(b)).sum(dim=1)
    raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")


def max_scores(query: torch.Tensor, ref: torch.Tensor, head: str, weight: torch.Tensor | None = None,
               bias: float = 0.0, block_bytes: int = 64 * 2**20) -> tuple[torch.Tensor, torch.Tensor]:
    """For every query row: the best score over all `ref` rows and the index of that row.

    Works block by block so that no intermediate exceeds about `block_bytes`, whatever Nq and Nr are; the
    full Nq x Nr matrix is never built. Ties resolve to the lowest reference index.
    """
    if (head == "pred" and weight is not None and query.device.type == "cpu" and query.dtype == torch.float32
            and len(query) * len(ref) >= FAST_MIN_PAIRS):
        return pred_max_cpu(query, ref, weight, bias)
    nq, nr, dim = len(query), len(ref), query.shape[1]
    per_pair = dim * query.element_size() if head in ("pred", "l1") else query.element_size()
    cols = max(1, min(nr, block_bytes // max(per_pair, 1)))
    rows = max(1, min(nq, block_bytes // max(per_pair * cols, 1)))
    best = torch.full((nq,), -torch.inf, dtype=query.dtype, device=query.device)
    arg = torch.zeros(nq, dtype=torch.long, device=query.device)
    for r0 in range(0, nq, rows):
        q = query[r0:r0 + rows]
        for c0 in range(0, nr, cols):
            values, idx = score_block(q, ref[c0:c0 + cols], head, weight, bias).max(dim=1)
            better = values > best[r0:r0 + rows]
            best[r0:r0 + rows] = torch.where(better, values, best[r0:r0 + rows])
            arg[r0:r0 + rows] = torch.where(better, idx + c0, arg[r0:r0 + rows])
    return best, arg


# ---------------------------------------------------------------------------------------------- fast exact `pred`
#
# w . |a - b| has no matrix-product form, so in torch every pair costs a [rows, cols, D] broadcast that is bound by
# memory traffic. On the CPU a compiled kernel keeps the running max in registers instead. It uses
# |a - b| = a + b - 2 min(a, b): the w . a and w . b terms are computed once per row, leaving one min and one
# multiply-add per dimension and pair; four queries share each load of a reference row, the D-long sum
# vectorises, and query tiles run in parallel. The result is exact up to float32 reassociation. GPUs keep the
# blocked torch path.

FAST_MIN_PAIRS = 1_000_000


@functools.cache
def _pred_max_kernel():
    """The compiled kernel; numba is imported (and the kernel compiled or loaded from its cache) on first use."""
    import numba

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def kernel(q, ref, w, best, arg):  # pragma: no cover - compiled
        nq, dim = q.shape
        ref_linear = ref @ w
        for tile in numba.prange((nq + 3) // 4):
            i0 = tile * 4
            i1, i2, i3 = min(i0 + 1, nq - 1), min(i0 + 2, nq - 1), min(i0 + 3, nq - 1)
            b0 = b1 = b2 = b3 = np.float32(-np.inf)
            a0 = a1 = a2 = a3 = 0
            for j in range(ref.shape[0]):
                s0 = s1 = s2 = s3 = np.float32(0.0)
                for k in range(dim):
                    r, wk = ref[j, k], w[k]
                    s0 += wk * min(q[i0, k], r)
                    s1 += wk * min(q[i1, k], r)
                    s2 += wk * min(q[i2, k], r)
                    s3 += wk * min(q[i3, k], r)
                c = ref_linear[j]
                s0, s1, s2, s3 = c - 2 * s0, c - 2 * s1, c - 2 * s2, c - 2 * s3
                if s0 > b0:
                    b0, a0 = s0, j
                if s1 > b1:
                    b1, a1 = s1, j
                if s2 > b2:
                    b2, a2 = s2, j
                if s3 > b3:
                    b3, a3 = s3, j
            best[i0], arg[i0] = b0, a0
            if i0 + 1 < nq:
                best[i1], arg[i1] = b1, a1
            if i0 + 2 < nq:
                best[i2], arg[i2] = b2, a2
            if i0 + 3 < nq:
                best[i3], arg[i3] = b3, a3

    return kernel


def pred_max_cpu(query: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor,
                 bias: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact `pred` max and first argmax per query on the CPU, in float32, with O(Nq) extra memory."""
    q = np.ascontiguousarray(query.detach().cpu().numpy(), dtype=np.float32)
    r = np.ascontiguousarray(ref.detach().cpu().numpy(), dtype=np.float32)
    w = np.ascontiguousarray(weight.detach().cpu().numpy(), dtype=np.float32)
    best, arg = np.empty(len(q), np.float32), np.empty(len(q), np.int64)
    if len(q) and len(r):
        _pred_max_kernel()(q, r, w, best, arg)
    return torch.from_numpy(best + q @ w + np.float32(bias)).to(query.dtype), torch.from_numpy(arg)


def best_frame_match(query: torch.Tensor, ref: torch.Tensor, head: str, weight: torch.Tensor, bias: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """For every query video `[Nq, F, D]`: its best head score over any pair of its frames and any frame of any
    reference video `[Nr, F', D]`, and which reference video that frame belongs to (content memorisation)."""
    nq, frames = query.shape[:2]
    best, index = max_scores(query.reshape(nq * frames, -1), ref.reshape(-1, ref.shape[-1]), head, weight, bias)
    best, index = best.view(nq, frames), index.view(nq, frames)
    which = best.argmax(dim=1)
    rows = torch.arange(nq, device=best.device)
    return best[rows, which].cpu().numpy(), (index[rows, which] // ref.shape[1]).cpu().numpy()
