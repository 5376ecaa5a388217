"""Compiled exact `pred`-head all-pairs max: one kernel for the CPU (numba), one for CUDA GPUs (Triton).

w . |a - b| has no matrix-product form, so in torch every pair costs a [rows, cols, D] broadcast that is bound by
memory traffic. Both kernels instead keep each query's running max in registers and use
|a - b| = a + b - 2 min(a, b): the w . a and w . b terms are computed once per row, leaving one min and one
multiply-add per dimension and pair. Results are exact up to float32 reassociation; ties resolve to the lowest
reference index. Each compiler is imported (and its kernel compiled) on first use.
"""

from __future__ import annotations

import functools

import numpy as np
import torch


@functools.cache
def _cpu_kernel():
    """Four queries share each load of a reference row, the D-long sum vectorises, query tiles run in parallel."""
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
    best, arg = np.full(len(q), -np.inf, np.float32), np.zeros(len(q), np.int64)
    if len(q) and len(r):
        _cpu_kernel()(q, r, w, best, arg)
    return torch.from_numpy(best + q @ w + np.float32(bias)).to(query.dtype), torch.from_numpy(arg)


#: Triton tile: queries and reference rows one program scores at a time
GPU_QUERIES, GPU_REFS, GPU_WARPS = 64, 64, 4


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _gpu_kernel():
    """One program owns a tile of queries and sweeps every reference row a tile at a time, as an outer product
    per dimension (like a SIMT matrix product, with min in place of the multiply); the inputs come transposed
    (`[D, N]`) so that each dimension's loads are contiguous."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(q_t, ref_t, w, ref_linear, best_out, arg_out, nq, nr, dim,
               BQ: tl.constexpr, BR: tl.constexpr):  # pragma: no cover - compiled
        rows = tl.program_id(0) * BQ + tl.arange(0, BQ)
        row_ok = rows < nq
        best = tl.full([BQ], float("-inf"), tl.float32)
        arg = tl.zeros([BQ], tl.int32)
        for r0 in range(0, nr, BR):
            cols = r0 + tl.arange(0, BR)
            col_ok = cols < nr
            acc = tl.zeros([BQ, BR], tl.float32)
            q_ptrs, r_ptrs = q_t + rows, ref_t + cols  # pointers advance one dimension (a whole row) at a time
            for d in range(0, dim):
                q_d = tl.load(q_ptrs, mask=row_ok, other=0.0)
                r_d = tl.load(r_ptrs, mask=col_ok, other=0.0)
                acc += tl.load(w + d) * tl.minimum(q_d[:, None], r_d[None, :])
                q_ptrs += nq
                r_ptrs += nr
            score = tl.load(ref_linear + cols, mask=col_ok, other=0.0)[None, :] - 2.0 * acc
            score = tl.where(col_ok[None, :], score, float("-inf"))
            tile_best, tile_arg = tl.max(score, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = tile_best > best
            best = tl.where(better, tile_best, best)
            arg = tl.where(better, tile_arg + r0, arg)
        tl.store(best_out + rows, best, mask=row_ok)
        tl.store(arg_out + rows, arg, mask=row_ok)

    return kernel


def pred_max_gpu(query: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor,
                 bias: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact `pred` max and first argmax per query with the Triton kernel, in float32, with O(Nq + Nr) extra
    memory (the transposed inputs)."""
    import triton

    q, r, w = (t.detach().float() for t in (query, ref, weight.to(query.device)))
    best = torch.full((len(q),), -torch.inf, dtype=torch.float32, device=q.device)
    arg = torch.zeros(len(q), dtype=torch.int32, device=q.device)
    if len(q) and len(r):
        _gpu_kernel()[(triton.cdiv(len(q), GPU_QUERIES),)](
            q.T.contiguous(), r.T.contiguous(), w.contiguous(), (r @ w).contiguous(), best, arg, len(q), len(r),
            q.shape[1], BQ=GPU_QUERIES, BR=GPU_REFS, num_warps=GPU_WARPS)
    return (best + q @ w + bias).to(query.dtype), arg.long()
