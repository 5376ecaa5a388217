"""The seed paper's privacy and coverage statistics, from P_max values and nearest-training-video indices."""

from __future__ import annotations

import numpy as np


def privacy_threshold(pmax_reference: np.ndarray, percentile: float = 95.0) -> float:
    """tau: the given percentile (linear interpolation, as numpy) of P_max over held-out real queries."""
    return float(np.percentile(np.asarray(pmax_reference, dtype=np.float64), percentile))


def memorised_fraction(pmax: np.ndarray, tau: float) -> float:
    """Share of queries whose P_max exceeds tau (strictly), i.e. that look like a training video."""
    return float(np.mean(np.asarray(pmax) > tau))


def generative_recall(nearest: np.ndarray, n_train: int) -> float:
    """Distinct nearest training videos over the queries / min(N_train, N_queries)."""
    nearest = np.asarray(nearest)
    if len(nearest) == 0:
        raise ValueError("generative recall needs at least one query")
    return len(np.unique(nearest)) / min(n_train, len(nearest))


def appearances(nearest: np.ndarray, n_train: int) -> np.ndarray:
    """How many queries have each training video as their nearest one."""
    return np.bincount(np.asarray(nearest, dtype=np.int64), minlength=n_train)
