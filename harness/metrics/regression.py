"""Downstream regression quality (EF): R², MAE and RMSE with bootstrap intervals, as in EchoNet-Dynamic's code.

EchoNet-Dynamic reports the 5th and 95th percentiles of 10,000 bootstrap resamples (a 90 % interval); the level is
a parameter here and the result says which percentiles it holds.
"""

from __future__ import annotations

import numpy as np


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """R², MAE, RMSE along the last axis (so resamples can be stacked in front)."""
    residual = ((y - p) ** 2).sum(axis=-1)
    total = ((y - y.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(total > 0, 1.0 - residual / total, np.nan)
    return {"r2": r2, "mae": np.abs(y - p).mean(axis=-1), "rmse": np.sqrt(((y - p) ** 2).mean(axis=-1))}


def regression_metrics(y_true, y_pred, resamples: int = 10_000, seed: int = 0, level: float = 90.0,
                       chunk: int = 1000) -> dict[str, object]:
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or len(y) < 2:
        raise ValueError("regression metrics need two 1-D arrays of the same length >= 2")
    point = {k: float(v) for k, v in _scores(y, p).items()}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {k: [] for k in point}
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, len(y), (min(chunk, resamples - start), len(y)))
        for k, v in _scores(y[idx], p[idx]).items():
            draws[k].append(v)
    tail = (100.0 - level) / 2
    out: dict[str, object] = {"n": len(y), "interval": f"{tail:g}th-{100 - tail:g}th percentile of {resamples} "
                                                       "bootstrap resamples"}
    for k, value in point.items():
        low, high = np.nanpercentile(np.concatenate(draws[k]), [tail, 100.0 - tail])
        out.update({k: value, f"{k}_low": float(low), f"{k}_high": float(high)})
    return out
