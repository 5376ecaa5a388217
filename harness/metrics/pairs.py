"""All-pairs scores between two feature sets, reduced to a per-query max and argmax in bounded memory.

Heads (higher = more similar):
  pred  the siamese head's logit  w . |a - b| + bias
  l1    -mean |a - b|
  l2    -mean (a - b)^2           (via matrix products, no [Na, Nb, D] tensor)
  corr  Pearson correlation of the two feature vectors
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from harness.metrics.pairs_kernels import pred_max_cpu, pred_max_gpu, triton_available

HEADS = ("pred", "l1", "l2", "corr")
#: from this many pairs on, `pred` uses the compiled kernels of `pairs_kernels` (below, compiling costs more)
FAST_MIN_PAIRS = 1_000_000
_triton_failed: list[Exception] = []  # why the Triton kernel failed in this process, if it did
log = logging.getLogger("harness")


def _standardise(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def identity_score(head: str, bias: float = 0.0) -> float:
    """What a frame scores against itself under `head`: an exact copy's score, the ceiling of a model whose score
    only falls as features differ."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
    return {"pred": float(bias), "l1": 0.0, "l2": 0.0, "corr": 1.0}[head]


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


def pred_kernel(query: torch.Tensor, pairs: int) -> str:
    """What `max_scores` computes `pred` scores of `pairs` pairs with: "numba" (CPU), "triton" (CUDA) or "torch"
    (the blocked broadcast: small problems, other devices and dtypes)."""
    if pairs < FAST_MIN_PAIRS:
        return "torch"
    if query.device.type == "cpu" and query.dtype == torch.float32:
        return "numba"
    return "triton" if query.device.type == "cuda" and triton_available() and not _triton_failed else "torch"


def max_scores(query: torch.Tensor, ref: torch.Tensor, head: str, weight: torch.Tensor | None = None,
               bias: float = 0.0, block_bytes: int = 64 * 2**20) -> tuple[torch.Tensor, torch.Tensor]:
    """For every query row: the best score over all `ref` rows and the index of that row.

    Works block by block so that no intermediate exceeds about `block_bytes`, whatever Nq and Nr are; the
    full Nq x Nr matrix is never built. Ties resolve to the lowest reference index.
    """
    if head == "l1":  # -mean |a - b| is the pred head with every weight -1/D: it takes the same kernels
        head, bias = "pred", 0.0
        weight = torch.full((query.shape[1],), -1.0 / query.shape[1], dtype=query.dtype, device=query.device)
    if head == "pred" and weight is not None:
        kernel = pred_kernel(query, len(query) * len(ref))
        if kernel == "numba":
            return pred_max_cpu(query, ref, weight, bias)
        if kernel == "triton":
            try:
                return pred_max_gpu(query, ref, weight, bias)
            except Exception as exc:  # a Triton that cannot compile here (driver, toolchain): torch still works
                _triton_failed.append(exc)
                log.warning("the Triton pred kernel failed (%s: %s); all-pairs scores fall back to the slower torch "
                            "path for the rest of this process", type(exc).__name__, str(exc).splitlines()[0])
    nq, nr, dim = len(query), len(ref), query.shape[1]
    per_pair = dim * query.element_size() if head == "pred" else query.element_size()
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
