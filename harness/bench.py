"""`harness bench`: throughput figures measured on this machine (never asserted in tests).

`pairs` times all-pairs `pred`-head scoring (the privacy hot path) through the harness against a per-query loop
like the seed paper's notebook, which scores one synthetic feature against all training features with the model's
head per iteration. Both see the same random sigmoid features; the loop is timed on a subset of queries, since its
cost per query is constant. `content` times content memorisation's frame-level scoring: every (strided) frame of
every sample against every such frame of every training video, through the same chunked all-pairs scoring.
`metrics` times the spec's row metrics (the peers' privacy tests, say) one after the other on random features of
the given sizes, sharing what a run shares between them (`RowFeatures.once`), so each line is what that metric adds.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from harness.components import RowFeatures, RowMetric
from harness.metrics.intervals import Bootstrap
from harness.metrics.pairs import best_frame_match, max_scores, pred_kernel
from harness.monitor import StageMonitor, _rss_bytes


def _features(n: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.sigmoid(torch.randn(n, dim, generator=g)).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _measured(run, device: torch.device) -> tuple[float, int]:
    """Seconds `run()` takes and the peak memory (bytes) it adds: process RSS on a CPU, allocated on a GPU."""
    baseline = _rss_bytes()
    with StageMonitor(interval=0.01) as monitor:
        run()
        _sync(device)
    return monitor.seconds, max(0, monitor.peak - baseline) if device.type == "cpu" else monitor.cuda_peak


@torch.no_grad()
def bench_pairs(n_query: int, n_ref: int, dim: int, device: torch.device, loop_queries: int = 300,
                memory_queries: int = 100_000) -> dict[str, Any]:
    head = torch.nn.Linear(dim, 1).to(device)
    weight, bias = head.weight[0].detach(), float(head.bias[0])
    ref = _features(n_ref, dim, 1, device)
    query = _features(n_query, dim, 2, device)
    max_scores(query[:64], ref, "pred", weight, bias)  # warm-up (compiles the kernel once)
    max_scores(query[: max(1, 1_000_000 // n_ref + 1)], ref, "pred", weight, bias)
    _sync(device)
    start = time.perf_counter()
    best, arg = max_scores(query, ref, "pred", weight, bias)
    _sync(device)
    harness_seconds = time.perf_counter() - start

    start = time.perf_counter()
    loop_best = torch.empty(loop_queries, device=device)
    loop_arg = torch.empty(loop_queries, dtype=torch.long, device=device)
    for i in range(loop_queries):
        scores = head((query[i] - ref).abs())[:, 0]
        loop_best[i], loop_arg[i] = scores.max(), scores.argmax()
    _sync(device)
    loop_seconds = time.perf_counter() - start
    agree = float((loop_arg == arg[:loop_queries]).float().mean())
    max_diff = float((loop_best - best[:loop_queries]).abs().max())

    big = _features(memory_queries, dim, 3, device)
    memory_seconds, extra = _measured(lambda: max_scores(big, ref, "pred", weight, bias), device)
    harness_rate = n_query * n_ref / harness_seconds
    loop_rate = loop_queries * n_ref / loop_seconds
    return {"device": str(device), "kernel": pred_kernel(query, n_query * n_ref), "queries": n_query,
            "references": n_ref, "dim": dim,
            "harness_pairs_per_s": harness_rate, "harness_seconds": harness_seconds,
            "loop_pairs_per_s": loop_rate, "loop_queries_timed": loop_queries, "speedup": harness_rate / loop_rate,
            "loop_agreement": agree, "loop_max_abs_diff": max_diff,
            "memory_queries": memory_queries, "peak_extra_memory_mib": extra / 2**20,
            "memory_seconds": memory_seconds, "threads": torch.get_num_threads()}


@torch.no_grad()
def bench_content(samples: int, references: int, frames: int, stride: int, dim: int, device: torch.device
                  ) -> dict[str, Any]:
    """Frame-level content scoring of `samples` clips against `references` clips of `frames` frames, every
    `stride`-th frame; pairs/s counts frame pairs."""
    kept = len(range(0, frames, stride))
    weight = -torch.rand(dim, generator=torch.Generator().manual_seed(0)).to(device)
    query = _features(samples * kept, dim, 2, device).view(samples, kept, dim)
    ref = _features(references * kept, dim, 1, device).view(references, kept, dim)
    # warm-up on enough pairs to take (and compile once) the CPU kernel
    best_frame_match(query[:1_000_000 // (references * kept**2) + 1], ref, "pred", weight, 0.5)
    _sync(device)
    seconds, extra = _measured(lambda: best_frame_match(query, ref, "pred", weight, 0.5), device)
    pairs = samples * references * kept**2
    return {"device": str(device), "samples": samples, "references": references, "frames": frames,
            "stride": stride, "frames_compared": kept, "dim": dim, "pairs": pairs, "seconds": seconds,
            "pairs_per_s": pairs / seconds, "peak_extra_memory_mib": extra / 2**20,
            "threads": torch.get_num_threads()}


def pairs_report(result: dict[str, Any]) -> str:
    """`bench_pairs`'s result as the lines `harness bench pairs` prints."""
    return "\n".join([
        f"pred-head all-pairs max, {result['queries']} x {result['references']} x {result['dim']} on "
        f"{result['device']} ({result['threads']} threads)",
        f"  harness        {result['harness_pairs_per_s']:.3e} pairs/s ({result['harness_seconds']:.2f} s, "
        f"{result['kernel']} kernel)",
        f"  per-query loop {result['loop_pairs_per_s']:.3e} pairs/s (timed on {result['loop_queries_timed']} "
        f"queries; same max on those: {result['loop_agreement']:.0%}, max |diff| {result['loop_max_abs_diff']:.1e})",
        f"  speed-up       {result['speedup']:.1f}x",
        f"  peak extra memory at {result['memory_queries']} x {result['references']}: "
        f"{result['peak_extra_memory_mib']:.1f} MiB ({result['memory_seconds']:.1f} s)"])


def content_report(result: dict[str, Any]) -> str:
    """`bench_content`'s result as the lines `harness bench content` prints."""
    return (f"content memorisation, {result['samples']} x {result['frames_compared']} frames against "
            f"{result['references']} x {result['frames_compared']} frames (stride {result['stride']} over "
            f"{result['frames']}), dim {result['dim']}, on {result['device']} ({result['threads']} threads)\n"
            f"  {result['pairs_per_s']:.3e} frame pairs/s: {result['pairs']:.3e} pairs in {result['seconds']:.1f} s, "
            f"peak extra memory {result['peak_extra_memory_mib']:.1f} MiB")


@torch.no_grad()
def bench_metrics(metrics: dict[str, type[RowMetric]], samples: int, references: int, test: int, dim: int,
                  device: torch.device, resamples: int = 2000) -> dict[str, Any]:
    """Each row metric computed on `samples` random features against `references` training and `test` held-out
    ones, in the order given, with one shared `RowFeatures` (as in a run: what one metric computed for the space
    the next reuses); seconds and peak extra memory per metric, the value as a sanity check."""
    features = RowFeatures(_features(samples, dim, 2, device), _features(references, dim, 1, device),
                           _features(test, dim, 3, device), space="clip", boot=Bootstrap(resamples))
    lines = []
    for name, factory in metrics.items():
        out: list[Any] = []
        seconds, extra = _measured(lambda f=factory, o=out: o.append(f().compute(features)), device)
        value = out[0]
        lines.append({"metric": name, "seconds": seconds, "peak_extra_memory_mib": extra / 2**20,
                      "value": getattr(value, "value", value), "reason": getattr(value, "reason", None)})
    return {"device": str(device), "samples": samples, "references": references, "test": test, "dim": dim,
            "resamples": resamples, "metrics": lines, "seconds": sum(line["seconds"] for line in lines),
            "threads": torch.get_num_threads()}


def metrics_report(result: dict[str, Any]) -> str:
    """`bench_metrics`'s result as the lines `harness bench metrics` prints."""
    head = (f"row metrics, {result['samples']:,} samples x {result['references']:,} training x {result['test']:,} "
            f"held-out features of dim {result['dim']}, {result['resamples']} resamples, on {result['device']} "
            f"({result['threads']} threads)")
    lines = [f"  {m['metric']:<22} {m['seconds']:8.2f} s  peak extra {m['peak_extra_memory_mib']:8.1f} MiB  "
             + (f"value {m['value']:.4g}" if m["value"] is not None else f"({m['reason']})")
             for m in result["metrics"]]
    return "\n".join([head, *lines, f"  {'all':<22} {result['seconds']:8.2f} s"])
