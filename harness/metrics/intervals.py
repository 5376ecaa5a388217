"""Bootstrap intervals for the headline numbers of a row, each built so that it covers at its nominal level.

- Memorised % resamples the real videos that set τ and the samples together, and recomputes τ every time, so the
  interval holds τ's own uncertainty (with 60 test videos the 95th percentile rests on the top three).
- Counts of distinct nearest training videos (recall, recall after the filter, the real reference) cannot be
  bootstrapped by resampling the queries: a resample repeats queries, so it always finds fewer distinct videos.
  They are resampled from the estimated population the queries came from instead, including the training videos
  not yet seen (Chao et al. 2014, Ecological Monographs 84: the "bootstrap assemblage"), at most N_train of them.
- The Fréchet distance resamples both feature sets; its resamples are biased upwards (repeated rows shrink the
  covariance), so the interval is the spread of the resamples around their mean, placed at the observed value.
  Each resample costs one decomposition (`_batched_frechet`), exact where a covariance is singular.
- A number measured with several re-ID models trained from different seeds (`pooled`) is their mean; its interval
  adds the spread between the models to the resampling, since another machine would train other models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from harness.metrics.privacy import expected_distinct, is_memorised


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: resamples, level (percent, two-sided) and the seed of the draws."""

    resamples: int = 2000
    level: float = 95.0
    seed: int = 0
    #: Bound on the index matrix of one chunk of resamples (entries), so memory stays flat at any size.
    chunk_entries: int = 4_000_000

    @property
    def percentiles(self) -> tuple[float, float]:
        tail = (100.0 - self.level) / 2
        return tail, 100.0 - tail

    def describe(self) -> str:
        low, high = self.percentiles
        return f"{low:g}th-{high:g}th percentile of {self.resamples} bootstrap resamples"

    def rng(self, *salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *salt])

    def chunks(self, per_resample: int):
        """Sizes of successive chunks of resamples, each holding at most `chunk_entries` drawn indices."""
        step = max(1, self.chunk_entries // max(per_resample, 1))
        for start in range(0, self.resamples, step):
            yield min(step, self.resamples - start)

    def interval(self, replicates: np.ndarray) -> tuple[float, float]:
        low, high = np.nanpercentile(np.asarray(replicates, dtype=np.float64), self.percentiles)
        return float(low), float(high)

    def centred(self, observed: float, replicates: np.ndarray) -> tuple[float, float]:
        """The replicates' spread around their own mean, placed at the observed value (for biased resamples)."""
        replicates = np.asarray(replicates, dtype=np.float64)
        low, high = self.interval(replicates - np.nanmean(replicates))
        return observed + low, observed + high


@dataclass(frozen=True)
class Estimate:
    """One number and its bootstrap replicates (read with `Bootstrap.interval`), paired by resample: two estimates
    drawn with the same `Bootstrap` from data of the same sizes resampled the same videos."""

    value: float
    replicates: np.ndarray

    def interval(self, boot: Bootstrap) -> tuple[float, float]:
        """The replicates' percentile interval, widened to hold the value itself (a mean of replicates can sit a
        rounding error beside it)."""
        low, high = boot.interval(self.replicates)
        return min(low, self.value), max(high, self.value)


def mean_estimate(values: np.ndarray, boot: Bootstrap) -> Estimate:
    """The mean of per-sample values and its replicates, resampling the samples."""
    values = np.asarray(values, dtype=np.float64)
    rng, draws = boot.rng(5), []
    for size in boot.chunks(len(values)):
        draws.append(values[rng.integers(0, len(values), (size, len(values)))].mean(axis=1))
    return Estimate(float(values.mean()), np.concatenate(draws))


def outside_estimate(values: np.ndarray, reference: np.ndarray, central: float, boot: Bootstrap) -> Estimate:
    """The share (in %) of `values` outside the central `central` % of `reference` (below its lower or above its
    upper percentile: two-sided), and its replicates, resampling both together."""
    values, reference = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    ends = (50 - central / 2, 50 + central / 2)
    rng, draws = boot.rng(6), []
    for size in boot.chunks(len(values) + len(reference)):
        low, high = np.percentile(reference[rng.integers(0, len(reference), (size, len(reference)))], ends, axis=1)
        drawn = values[rng.integers(0, len(values), (size, len(values)))]
        draws.append(((drawn < low[:, None]) | (drawn > high[:, None])).mean(axis=1))
    low, high = np.percentile(reference, ends)
    return Estimate(100 * float(np.mean((values < low) | (values > high))), 100 * np.concatenate(draws))


def agree(estimates: list[Estimate], boot: Bootstrap) -> bool:
    """Whether the re-ID models' estimates of one number are consistent: their intervals share a point. When they
    do not, the models see the row differently (off the data manifold, typically) and no pooled number stands
    for them."""
    bounds = np.array([e.interval(boot) for e in estimates])
    return bool(bounds[:, 0].max() <= bounds[:, 1].min())


def memorised_estimate(pmax: np.ndarray, pmax_calibration: np.ndarray, percentile: float,
                       boot: Bootstrap, ceiling: float = np.inf) -> Estimate:
    """The memorised share (in %) and its replicates, resampling the samples and the videos that set τ together;
    a score at the `ceiling` counts whatever τ is (`harness.metrics.privacy.is_memorised`)."""
    pmax = np.asarray(pmax, dtype=np.float64)
    calibration = np.asarray(pmax_calibration, dtype=np.float64)
    rng, draws = boot.rng(1), []
    for size in boot.chunks(len(pmax) + len(calibration)):
        tau = np.percentile(calibration[rng.integers(0, len(calibration), (size, len(calibration)))], percentile,
                            axis=1)
        drawn = pmax[rng.integers(0, len(pmax), (size, len(pmax)))]
        draws.append(((drawn > tau[:, None]) | (drawn >= ceiling)).mean(axis=1))
    observed = float(np.mean(is_memorised(pmax, np.percentile(calibration, percentile), ceiling)))
    return Estimate(100 * observed, 100 * np.concatenate(draws))


def _assemblage(counts: np.ndarray, limit: int) -> np.ndarray:
    """Probabilities of the population the queries were drawn from: the seen videos, shrunk by the estimated
    coverage, and the unseen ones (Chao1 estimate, at most `limit` videos in all) sharing what is left."""
    counts = counts[counts > 0].astype(np.float64)
    n, seen = counts.sum(), len(counts)
    f1, f2 = float((counts == 1).sum()), float((counts == 2).sum())
    if n < 2 or f1 == 0:
        return counts / n
    unseen = (n - 1) / n * (f1 * (f1 - 1) / 2 if f2 == 0 else f1 * f1 / (2 * f2))
    unseen = min(math.ceil(unseen), max(limit - seen, 0))
    # sample coverage (Chao & Jost 2012): the probability mass of the videos that were seen
    ratio = (n - 1) * f1 / ((n - 1) * f1 + 2 * f2) if f2 > 0 else (n - 1) * (f1 - 1) / ((n - 1) * (f1 - 1) + 2)
    coverage = 1.0 - f1 / n * ratio
    if unseen == 0 or coverage >= 1.0:
        return counts / n
    p = counts / n
    shrink = (1.0 - coverage) / float((p * np.exp(-n * p)).sum())
    seen_p = np.maximum(p * (1.0 - shrink * np.exp(-n * p)), 0.0)
    return np.concatenate([seen_p, np.full(unseen, (1.0 - coverage) / unseen)]) / (seen_p.sum() + 1.0 - coverage)


def recall_estimate(nearest: np.ndarray, n_train: int, boot: Bootstrap, queries: int | None = None,
                    denominator: int | None = None) -> Estimate:
    """A recall and its replicates: distinct nearest training videos among `queries` draws like these (default: as
    many as given; see `expected_distinct`) over `denominator` (default min(N_train, queries)). No queries: 0."""
    nearest = np.asarray(nearest, dtype=np.int64)
    if len(nearest) == 0:
        return Estimate(0.0, np.zeros(boot.resamples))
    queries = len(nearest) if queries is None else queries
    denominator = min(n_train, queries) if denominator is None else denominator
    p = _assemblage(np.bincount(nearest), n_train)
    rng, draws = boot.rng(2), []
    for size in boot.chunks(len(p)):
        draws.append((rng.multinomial(queries, p, size=size) > 0).sum(axis=1))
    observed = expected_distinct(nearest, queries)
    draws = np.concatenate(draws).astype(np.float64)
    centred = np.clip(draws - draws.mean() + observed, 1.0, min(n_train, queries))
    return Estimate(observed / denominator, centred / denominator)


def pooled(estimates: list[Estimate], boot: Bootstrap, limits: tuple[float, float]) -> Estimate:
    """One number measured with K re-ID models trained from different seeds: the mean of their values, with the
    mean of their paired replicates plus the spread between the models (normal, variance s²/K), kept in `limits`.

    One model gives back its own estimate. The models differ as models trained on another machine would, so with
    K > 1 the interval also covers that variation, and the mean varies K times less between machines.
    """
    values = np.array([e.value for e in estimates])
    if len(estimates) == 1:
        return estimates[0]
    replicates = np.mean([e.replicates for e in estimates], axis=0)
    spread = values.std(ddof=1) / np.sqrt(len(values))
    replicates = replicates + boot.rng(4).normal(0.0, 1.0, len(replicates)) * spread
    return Estimate(float(values.mean()), np.clip(replicates, *limits))


def _root_factor(gram: torch.Tensor) -> torch.Tensor:
    """A factor `L` with `L Lᵀ = gram` for each of a batch of Gram matrices: Cholesky's, or where a matrix is
    singular (duplicate features, as a collapsed generator gives), one from its eigen-decomposition."""
    factor, info = torch.linalg.cholesky_ex(gram)
    if bool(info.any()):
        vals, vecs = torch.linalg.eigh(gram)
        factor = vecs * vals.clamp_min(0).sqrt()[:, None]
    return factor


def _batched_frechet(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Fréchet distance of each pair of feature sets `[B, N, D]`.

    Tr (S_r S_f)^½ is the nuclear norm of X_r X_fᵀ over √((n - 1)(m - 1)) for the centred features X: the square
    roots of the eigenvalues of S_r S_f are the singular values of that product. With fewer videos than dimensions
    it is taken directly (small); otherwise of L_rᵀ L_f, `D x D`, for factors with L Lᵀ = Xᵀ X (the same singular
    values), from the eigenvalues of its square. Either way one decomposition replaces two symmetric square roots,
    and it stays exact where a covariance is rank-deficient (a collapsed generator's), where float32 roots are not."""
    mu_r, mu_f = real.mean(1), fake.mean(1)
    xr, xf = real - mu_r[:, None], fake - mu_f[:, None]
    n, m, dims = real.shape[1], fake.shape[1], real.shape[2]
    if min(n, m) < dims:
        singular = torch.linalg.svdvals(xr @ xf.transpose(1, 2))
    else:  # in float64: a singular Gram matrix's zero eigenvalues must stay near zero under the square root
        gram_r, gram_f = (x.double().transpose(1, 2) @ x.double() for x in (xr, xf))
        product = _root_factor(gram_r).transpose(1, 2) @ _root_factor(gram_f)
        # the singular values as roots of PᵀP's eigenvalues: a symmetric solver, faster than an SVD
        singular = torch.linalg.eigvalsh(product.transpose(1, 2) @ product).clamp_min(0).sqrt()
    cross = singular.sum(1).to(real.dtype) / math.sqrt((n - 1) * (m - 1))
    trace = (xr ** 2).sum((1, 2)) / (n - 1) + (xf ** 2).sum((1, 2)) / (m - 1)
    return ((mu_r - mu_f) ** 2).sum(1) + trace - 2 * cross


def frechet_interval(real: np.ndarray, fake: np.ndarray, observed: float, boot: Bootstrap) -> tuple[float, float]:
    """Interval of the Fréchet distance, resampling the real and the generated features together."""
    real_t = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    fake_t = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    per_resample = (len(real_t) + len(fake_t)) * real_t.shape[1]
    rng, draws = boot.rng(3), []
    for size in boot.chunks(per_resample):
        ir = torch.from_numpy(rng.integers(0, len(real_t), (size, len(real_t))))
        jf = torch.from_numpy(rng.integers(0, len(fake_t), (size, len(fake_t))))
        draws.append(_batched_frechet(real_t[ir], fake_t[jf]).numpy())
    low, high = boot.centred(observed, np.concatenate(draws))
    return max(low, 0.0), high
