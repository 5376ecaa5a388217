"""Euclidean nearest neighbours between feature sets in bounded memory: the all-pairs distances behind the k-NN
metrics (fidelity's k-NN balls, the peers' distance-to-closest-record family), on the features' device.

Blocks of query rows are compared with every reference row at once (`torch.cdist`), so no intermediate exceeds
about `block_bytes` whatever the sizes; the full distance matrix is never built.
"""

from __future__ import annotations

import torch


def blocks(n: int, other: int, block_bytes: int, itemsize: int):
    """Slices of `n` rows such that a block of their distances to `other` rows holds about `block_bytes`."""
    rows = max(1, block_bytes // max(other * itemsize, 1))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def nearest(query: torch.Tensor, ref: torch.Tensor, k: int = 1, skip_self: bool = False,
            block_bytes: int = 64 * 2**20) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` nearest `ref` rows of every query row: distances `[Nq, k]` (ascending) and indices. With
    `skip_self`, `query` is `ref` and a row is not its own neighbour (a duplicate of it still is)."""
    if skip_self and query is not ref:
        raise ValueError("skip_self compares a set with itself; pass the same tensor twice")
    dist = torch.empty(len(query), k, dtype=query.dtype, device=query.device)
    index = torch.empty(len(query), k, dtype=torch.long, device=query.device)
    for s in blocks(len(query), len(ref), block_bytes, query.element_size()):
        d = torch.cdist(query[s], ref)
        if skip_self:
            d[torch.arange(d.shape[0], device=d.device), torch.arange(s.start, s.stop, device=d.device)] = torch.inf
        dist[s], index[s] = d.topk(k, dim=1, largest=False)
    return dist, index


def nearest_both_ways(query: torch.Tensor, ref: torch.Tensor, k: int = 1, block_bytes: int = 64 * 2**20
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`nearest(query, ref, k)` and, from the same distances, the nearest query row of every `ref` row (distance
    `[Nr]`, index): one pass over the pairs serves both directions."""
    dist = torch.empty(len(query), k, dtype=query.dtype, device=query.device)
    index = torch.empty(len(query), k, dtype=torch.long, device=query.device)
    back = torch.full((len(ref),), torch.inf, dtype=query.dtype, device=query.device)
    back_index = torch.zeros(len(ref), dtype=torch.long, device=query.device)
    for s in blocks(len(query), len(ref), block_bytes, query.element_size()):
        d = torch.cdist(query[s], ref)
        dist[s], index[s] = d.topk(k, dim=1, largest=False)
        values, rows = d.min(dim=0)
        better = values < back
        back = torch.where(better, values, back)
        back_index = torch.where(better, rows + s.start, back_index)
    return dist, index, back, back_index


def nearest_in_cell(query: torch.Tensor, query_cells: torch.Tensor, ref: torch.Tensor, ref_cells: torch.Tensor,
                    block_bytes: int = 64 * 2**20) -> torch.Tensor:
    """Distance from every query row to the nearest `ref` row of its own cell (`inf` where its cell has none)."""
    out = torch.full((len(query),), torch.inf, dtype=query.dtype, device=query.device)
    for cell in torch.unique(query_cells).tolist():
        rows, refs = query_cells == cell, ref[ref_cells == cell]
        if len(refs):
            out[rows] = nearest(query[rows], refs, 1, block_bytes=block_bytes)[0][:, 0]
    return out
