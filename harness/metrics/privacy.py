"""The seed paper's privacy and coverage statistics, from P_max values and nearest-training-video indices."""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln


def privacy_threshold(pmax_reference: np.ndarray, percentile: float = 95.0) -> float:
    """tau: the given percentile (linear interpolation, as numpy) of P_max over held-out real queries."""
    return float(np.percentile(np.asarray(pmax_reference, dtype=np.float64), percentile))


#: how close a score must come to the score of a frame with itself to be a copy, whatever τ says: this share of the
#: way from the real held-out videos' median best score to that ceiling
CEILING_TOLERANCE = 1e-3


def ceiling_level(identity: float, calibration: np.ndarray) -> float:
    """The score from which a query is a copy: `identity` (what a frame scores against itself) less a tolerance for
    the floating-point noise of embedding the same frame in another batch (`CEILING_TOLERANCE`)."""
    typical = float(np.median(np.asarray(calibration, dtype=np.float64)))
    return identity - CEILING_TOLERANCE * max(identity - typical, 0.0)


def is_memorised(pmax: np.ndarray, tau: float, ceiling: float = np.inf) -> np.ndarray:
    """Queries whose P_max exceeds tau (strictly), i.e. that look like a training video, or reaches the ceiling (a
    copy is memorised even when real held-out videos, and so tau, reach the ceiling too)."""
    pmax = np.asarray(pmax)
    return (pmax > tau) | (pmax >= ceiling)


def memorised_fraction(pmax: np.ndarray, tau: float, ceiling: float = np.inf) -> float:
    """Share of queries `is_memorised`."""
    return float(np.mean(is_memorised(pmax, tau, ceiling)))


def joint_levels(scores: list[np.ndarray], calibrations: list[np.ndarray], ceilings: list[float]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Several memorisation tests of the same queries as one score, so that one percentile of the real calibration
    videos still sets the threshold: a query's level in a test is the share of the calibration videos' scores of
    that test it exceeds, its joint level the highest over the tests (+inf where a test's score reaches that test's
    ceiling: a copy). Returns the queries' joint levels and the calibration videos' own (the i-th calibration score
    of every test belongs to the same real video)."""
    def level(values: np.ndarray, calibration: np.ndarray, ceiling: float) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        share = np.searchsorted(np.sort(np.asarray(calibration, dtype=np.float64)), values, side="left")
        return np.where(values >= ceiling, np.inf, share / len(calibration))

    queries = np.max([level(s, c, top) for s, c, top in zip(scores, calibrations, ceilings, strict=True)], axis=0)
    reference = np.max([level(c, c, top) for c, top in zip(calibrations, ceilings, strict=True)], axis=0)
    return queries, reference


def generative_recall(nearest: np.ndarray, n_train: int) -> float:
    """Distinct nearest training videos over the queries / min(N_train, N_queries)."""
    nearest = np.asarray(nearest)
    if len(nearest) == 0:
        raise ValueError("generative recall needs at least one query")
    return len(np.unique(nearest)) / min(n_train, len(nearest))


def expected_distinct(nearest: np.ndarray, queries: int) -> float:
    """Distinct nearest videos expected among `queries` queries like these, so that sets of different sizes compare.

    Fewer queries than given: rarefaction (Hurlbert 1971), the exact mean over subsets drawn without replacement.
    More: Chao et al. (2014)'s extrapolation from the singletons and doubletons (Chao1 for the unseen videos).
    """
    counts = np.bincount(np.asarray(nearest, dtype=np.int64))
    counts = counts[counts > 0].astype(np.float64)
    n, seen = int(counts.sum()), len(counts)
    if queries == n:
        return float(seen)
    if queries < n:
        rest = n - counts
        log_missed = np.where(rest >= queries, gammaln(rest + 1) - gammaln(np.maximum(rest - queries, 0) + 1)
                              - gammaln(n + 1) + gammaln(n - queries + 1), -np.inf)
        return float((1.0 - np.exp(log_missed)).sum())
    f1, f2 = float((counts == 1).sum()), float((counts == 2).sum())
    unseen = (n - 1) / n * (f1 * (f1 - 1) / 2 if f2 == 0 else f1 * f1 / (2 * f2))
    if unseen == 0:
        return float(seen)
    return float(seen + unseen * (1.0 - (1.0 - f1 / (n * unseen + f1)) ** (queries - n)))


def appearances(nearest: np.ndarray, n_train: int) -> np.ndarray:
    """How many queries have each training video as their nearest one."""
    return np.bincount(np.asarray(nearest, dtype=np.int64), minlength=n_train)


def _log_ratio_step(s: np.ndarray, k: int, n: int) -> np.ndarray:
    """l(s+1) - l(s) for the occupancy log-likelihood l(s) = log s!/(s-k)! - n log s (k distinct in n draws)."""
    return np.log(s + 1) - np.log(s + 1 - k) - n * np.log1p(1.0 / s)


def _occupancy_moments(s: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the number of distinct values in n uniform draws from s values."""
    miss = (1.0 - 1.0 / s) ** n
    mean = s * (1.0 - miss)
    var = s * miss + s * (s - 1.0) * (1.0 - 2.0 / s) ** n - (s * miss) ** 2
    return mean, np.maximum(var, 0.0)


def support_size(nearest: np.ndarray, limit: int | None = None, z: float = 1.959964) -> tuple[float, float, float]:
    """IRS-infinity's core: the number of distinct values s the draws come from, with a ~95 % interval.

    The point estimate maximises P(k distinct | s, n) = S(n,k) s!/(s-k)! / s^n over s (occupancy model, Dombrowski
    et al.); the interval holds every s whose expected distinct count lies within z standard deviations of k.
    All draws distinct means the data cannot bound s: the estimate and upper end are infinite, or `limit` (the
    number of values there are to draw from, e.g. N_train) when given; every value is capped at `limit`.
    """
    nearest = np.asarray(nearest)
    n, k = len(nearest), len(np.unique(nearest))
    if n == 0:
        raise ValueError("the support estimate needs at least one draw")
    cap = float("inf") if limit is None else float(limit)
    if k == n:
        return cap, float(k), cap
    low, high = float(k), float(2 * k)
    while _log_ratio_step(np.array(high), k, n) > 0:
        high *= 2
    while high - low > 0.5:  # first s with a non-positive step is the maximiser
        mid = (low + high) / 2
        low, high = (mid, high) if _log_ratio_step(np.array(mid), k, n) > 0 else (low, mid)
    estimate = float(np.ceil(low))
    grid = np.unique(np.concatenate([np.arange(k, 4 * k + 1), np.geomspace(k, 1e4 * k, 4000).round()]))
    grid = grid[grid >= max(k, 1)]
    mean, var = _occupancy_moments(grid.astype(np.float64), n)
    inside = grid[np.abs(mean - k) <= z * np.sqrt(var) + 0.5]
    low_end, high_end = float(inside.min(initial=k)), float(inside.max(initial=estimate))
    return min(estimate, cap), min(low_end, cap), min(high_end, cap)


def irs_infinity(nearest: np.ndarray, n_train: int) -> dict[str, float]:
    """Estimated generative recall at infinitely many samples: support size / N_train, with its interval."""
    estimate, low, high = support_size(nearest, limit=n_train)
    return {"value": estimate / n_train, "low": low / n_train, "high": high / n_train}
