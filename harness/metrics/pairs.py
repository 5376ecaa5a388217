"""All-pairs scores between two feature sets, reduced to a per-query max and argmax in bounded memory.

Heads (higher = more similar):
  pred  the siamese head's logit  w . |a - b| + bias
  l1    -mean |a - b|
  l2    -mean (a - b)^2           (via matrix products, no [Na, Nb, D] tensor)
  corr  Pearson correlation of the two feature vectors
"""

from __future__ import annotations

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


def max_scores(query: torch.Tensor, ref: torch.Tensor, head: str, weight: torch.Tensor | None = None,
               bias: float = 0.0, block_bytes: int = 64 * 2**20) -> tuple[torch.Tensor, torch.Tensor]:
    """For every query row: the best score over all `ref` rows and the index of that row.

    Works block by block so that no intermediate exceeds about `block_bytes`, whatever Nq and Nr are; the
    full Nq x Nr matrix is never built. Ties resolve to the lowest reference index.
    """
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
