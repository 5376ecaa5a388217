"""The peers' privacy tests as functions of three feature sets: the samples S, the real training videos T and real
videos no model of the run saw, H (the test split). Distances are Euclidean, in bounded memory on the features'
device (`harness.metrics.neighbours`); intervals are bootstrap replicates drawn like the run's other intervals.

- Distance to closest record (synthcity, SDMetrics): d₁(s) to the nearest training video, the nearest-neighbour
  distance ratio d₁/d₂ (0/0 read as 0: a sample on a duplicated training point is as close as can be).
- Alaa et al. 2022, "How Faithful is your Synthetic Data?": authenticity, α-precision and β-recall, integrated over
  30 levels as in the authors' public code, around the training features' mean (their "naive" embedding).
- Meehan et al. 2020, "A Non-Parametric Test to Detect Data-Copying in Generative Models": C_T, the Mann-Whitney
  U of distances to the training videos within the cells of a k-means partition of T, z-scored and weighted by the
  held-out videos' share of each cell (cells holding at most `min_cell_samples` samples are left out).
- van Breugel et al. 2023, DOMIAS: membership scored by the density ratio p_S(x) / p_R(x), with R real videos the
  attacker holds; here Gaussian kernel densities in the principal components of R, whitened, Scott's bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans

from harness.errors import UserError
from harness.metrics.intervals import Bootstrap, Estimate, memorised_estimate
from harness.metrics.neighbours import blocks, nearest, nearest_both_ways, nearest_in_cell

#: the levels α and β of Alaa et al.'s curves (their public code's 30 steps from 0 to 1)
LEVELS = np.linspace(0.0, 1.0, 30)
#: a cell "copies" when its own z-score is below this (two-sided 5 %)
COPYING_Z = -1.96


def need(count: int, minimum: int, what: str, purpose: str) -> None:
    """One sentence when a set is too small for a statistic."""
    if count < minimum:
        raise UserError(f"{purpose} needs at least {minimum} {what}; there are {count}.")


def distinct(x: torch.Tensor) -> int:
    return len(torch.unique(x, dim=0))


# --- distance to closest record ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Closest:
    """Each query's distance to its nearest and second-nearest training video and the nearest one's index; and
    each training video's nearest query (distance, index)."""

    d1: np.ndarray
    d2: np.ndarray
    index: np.ndarray
    back: torch.Tensor
    back_index: torch.Tensor


def closest_records(query: torch.Tensor, train: torch.Tensor) -> Closest:
    """Nearest neighbours both ways between the queries and the training videos, in one pass over the pairs."""
    need(len(train), 2, "training videos", "the distance ratio to the two closest records")
    dist, index, back, back_index = nearest_both_ways(query, train, 2)
    dist = dist.double().cpu().numpy()
    return Closest(dist[:, 0], dist[:, 1], index[:, 0].cpu().numpy(), back, back_index)


def own_neighbour(train: torch.Tensor) -> torch.Tensor:
    """Each training video's distance to its nearest other training video."""
    need(len(train), 2, "training videos", "a training video's nearest-neighbour distance")
    return nearest(train, train, 1, skip_self=True)[0][:, 0]


def ratio(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """d₁ / d₂, with 0 / 0 read as 0."""
    return np.divide(d1, d2, out=np.zeros_like(d1), where=d2 > 0)


def below_held_out(values: np.ndarray, held_out: np.ndarray, percentile: float, boot: Bootstrap) -> Estimate:
    """The share (%) of `values` below the `percentile`-th percentile of the held-out videos' values, resampling
    both together (the threshold's own uncertainty included, as τ's is)."""
    return memorised_estimate(-np.asarray(values, np.float64), -np.asarray(held_out, np.float64),
                              100.0 - percentile, boot)


def resampled(values: np.ndarray, boot: Bootstrap, statistic, salt: int) -> Estimate:
    """`statistic(values, axis=1)` over resamples of `values` (its value on all of them first)."""
    values = np.asarray(values, np.float64)
    rng, draws = boot.rng(salt), []
    for size in boot.chunks(len(values)):
        draws.append(statistic(values[rng.integers(0, len(values), (size, len(values)))], axis=1))
    return Estimate(float(statistic(values[None], axis=1)[0]), np.concatenate(draws))


# --- Alaa et al. 2022 -------------------------------------------------------------------------------------------

def authentic(closest: Closest, own: torch.Tensor) -> np.ndarray:
    """Whether each sample is farther from its nearest training video than that video is from its own nearest
    other training video (`own`; an exact copy never is)."""
    return closest.d1 > own.double().cpu().numpy()[closest.index]


def _weights(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of `n` items is drawn in each of `size` resamples `[size, n]`."""
    drawn = rng.integers(0, n, (size, n)) + n * np.arange(size)[:, None]
    return np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n).astype(np.float64) / n


def _integrated(curves: np.ndarray) -> np.ndarray:
    """Alaa et al.'s Δ score of each curve `[..., levels]`: 1 - 2 x the area between the curve and the diagonal."""
    return 1.0 - 2.0 * np.abs(curves - LEVELS).sum(axis=-1) * (LEVELS[1] - LEVELS[0])


def _curve_estimate(inside: np.ndarray, boot: Bootstrap, salt: int) -> Estimate:
    """Δ of the curve whose points are the shares of rows of `inside` `[N, levels]` that are true, resampling the
    rows."""
    inside = inside.astype(np.float64)
    rng, draws = boot.rng(salt), []
    for size in boot.chunks(len(inside)):
        draws.append(_integrated(_weights(len(inside), size, rng) @ inside))
    return Estimate(float(_integrated(inside.mean(axis=0))), np.concatenate(draws))


def alpha_precision(samples: torch.Tensor, train: torch.Tensor, boot: Bootstrap) -> Estimate:
    """Δ α-precision: how far the share of samples inside the α-quantile ball of the training videos around their
    mean departs from α, over α; resampling the samples."""
    centre = train.double().mean(dim=0)
    radii = np.quantile((train.double() - centre).norm(dim=1).cpu().numpy(), LEVELS)
    to_centre = (samples.double() - centre).norm(dim=1).cpu().numpy()
    return _curve_estimate(to_centre[:, None] <= radii[None, :], boot, 11)


def beta_recall(samples: torch.Tensor, closest: Closest, own: torch.Tensor, boot: Bootstrap) -> Estimate:
    """Δ β-recall: the share of training videos whose nearest sample lies within their nearest-neighbour distance
    (`own`) and inside the β-quantile ball of those nearest samples around the samples' mean, against β;
    resampling the training videos (the levels' radii held at their measured values)."""
    nearest_sample = samples[closest.back_index].double()
    from_centre = (nearest_sample - samples.double().mean(dim=0)).norm(dim=1).cpu().numpy()
    radii = np.quantile(from_centre, LEVELS)
    near = (closest.back <= own).cpu().numpy()
    return _curve_estimate(near[:, None] & (from_centre[:, None] <= radii[None, :]), boot, 12)


# --- Meehan et al. 2020 -----------------------------------------------------------------------------------------

def u_statistic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mann-Whitney U of `x` against `y` for each row of a batch `[B, m]`, `[B, n]`: pairs with x > y, ties half."""
    ys = torch.sort(y, dim=1).values
    below = torch.searchsorted(ys, x.contiguous(), right=False)
    at_most = torch.searchsorted(ys, x.contiguous(), right=True)
    return below.double().sum(dim=1) + 0.5 * (at_most - below).double().sum(dim=1)


def z_score(u: torch.Tensor, m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """U z-scored under the null as Meehan et al.'s code does (mean mn/2 - 1/2, with its continuity correction)."""
    return (u - (m * n / 2 - 0.5)) / torch.sqrt(m * n * (m + n + 1) / 12)


@dataclass(frozen=True)
class DataCopying:
    """C_T with its replicates, and how many of its cells copy."""

    ct: Estimate
    cells_copying: int


def data_copying(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor, cells: int, min_cell_samples: int,
                 boot: Bootstrap, seed: int = 0) -> DataCopying:
    """Meehan et al.'s C_T of the samples, with the held-out videos `test` as the reference the samples' distances
    to the training videos are compared with, cell by cell; resampling the samples and the held-out videos."""
    need(distinct(train), cells, "distinct training videos in this feature space",
         f"the data-copying test's partition into {cells} cells")
    centres = KMeans(n_clusters=cells, n_init=10, random_state=seed).fit(train.double().cpu().numpy()).cluster_centers_
    centres = torch.as_tensor(centres, dtype=train.dtype, device=train.device)
    cell_of = {name: nearest(x, centres, 1)[1][:, 0] for name, x in (("train", train), ("test", test),
                                                                        ("samples", samples))}
    dist_test = nearest_in_cell(test, cell_of["test"], train, cell_of["train"]).double()
    dist_samples = nearest_in_cell(samples, cell_of["samples"], train, cell_of["train"]).double()
    counts_samples = torch.bincount(cell_of["samples"], minlength=cells)
    counts_test = torch.bincount(cell_of["test"], minlength=cells)
    used = [c for c in range(cells) if counts_samples[c] > min_cell_samples and counts_test[c] > 0]
    if not used:
        raise UserError(f"no cell of the data-copying test's {cells} holds more than {min_cell_samples} of the "
                        f"row's {len(samples)} samples and a held-out video; C_T is undefined (ask for more samples, "
                        "or fewer cells).")
    observed_z, weights = [], []
    for c in used:
        q, p = dist_samples[cell_of["samples"] == c], dist_test[cell_of["test"] == c]
        sizes = torch.tensor([len(q), len(p)], dtype=torch.float64, device=q.device)
        z = z_score(u_statistic(q[None], p[None]), sizes[0], sizes[1])
        observed_z.append(float(z[0]))
        weights.append(len(p))
    value = float(np.dot(weights, observed_z) / np.sum(weights))
    replicates = _ct_replicates(dist_samples, cell_of["samples"], dist_test, cell_of["test"], used, boot)
    copying = int(np.sum(np.asarray(observed_z) < COPYING_Z))
    return DataCopying(Estimate(value, replicates), copying)


def _ct_replicates(dist_samples: torch.Tensor, samples_cell: torch.Tensor, dist_test: torch.Tensor,
                   test_cell: torch.Tensor, used: list[int], boot: Bootstrap) -> np.ndarray:
    """C_T over resamples of the samples and the held-out videos; the cells taken part are those of the data."""
    rng, out = boot.rng(13), []
    m, n = len(dist_samples), len(dist_test)
    device = dist_samples.device
    for size in boot.chunks(m + n):
        q_draw = torch.as_tensor(rng.integers(0, m, (size, m)), device=device)
        p_draw = torch.as_tensor(rng.integers(0, n, (size, n)), device=device)
        q, p = dist_samples[q_draw], dist_test[p_draw]
        q_cell, p_cell = samples_cell[q_draw], test_cell[p_draw]
        total = torch.zeros(size, dtype=torch.float64, device=device)
        weight = torch.zeros(size, dtype=torch.float64, device=device)
        for c in used:
            # values outside the cell are pushed away: samples to +inf (each above all n held-out values) and
            # held-out values to -inf (below each in-cell sample); both counts are taken off U
            q_in, p_in = q_cell == c, p_cell == c
            mc, nc = q_in.sum(dim=1).double(), p_in.sum(dim=1).double()
            u = u_statistic(torch.where(q_in, q, torch.inf), torch.where(p_in, p, -torch.inf))
            u = u - (m - mc) * n - mc * (n - nc)
            ok = (mc > 0) & (nc > 0)
            z = torch.where(ok, z_score(u, mc, nc), torch.zeros_like(u))
            total += torch.where(ok, nc * z, torch.zeros_like(z))
            weight += torch.where(ok, nc, torch.zeros_like(nc))
        out.append(torch.where(weight > 0, total / weight, torch.nan).cpu().numpy())
    return np.concatenate(out)


# --- DOMIAS (van Breugel et al. 2023) ---------------------------------------------------------------------------

def _log_density(x: torch.Tensor, points: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """log of the Gaussian kernel density estimate with centres `points` at each row of `x`, in blocks."""
    d = x.shape[1]
    out = torch.empty(len(x), dtype=torch.float64, device=x.device)
    for s in blocks(len(x), len(points), 64 * 2**20, 8):
        sq = torch.cdist(x[s].double(), points.double()) ** 2
        out[s] = torch.logsumexp(-sq / (2 * bandwidth**2), dim=1)
    return out - math.log(len(points)) - d * math.log(bandwidth * math.sqrt(2 * math.pi))


def scott_bandwidth(points: torch.Tensor) -> float:
    """Scott's rule for an isotropic kernel: the points' mean per-dimension spread times n^(-1/(d+4))."""
    n, d = points.shape
    spread = float(points.double().std(dim=0, unbiased=True).mean()) if n > 1 else 0.0
    return spread * n ** (-1.0 / (d + 4))


def whitening(reference: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and the projection onto the first `dims` principal components of `reference`, each scaled to unit
    variance (components with no variance dropped)."""
    mean = reference.double().mean(dim=0)
    _, values, vectors = torch.linalg.svd(reference.double() - mean, full_matrices=False)
    std = values / math.sqrt(max(len(reference) - 1, 1))
    keep = std > float(std.max()) * 1e-6
    keep[dims:] = False
    if not bool(keep.any()):
        raise UserError("the membership attack's reference videos are one point in this feature space; it cannot "
                        "fit their density")
    return mean, vectors[keep].T / std[keep]


def membership_scores(samples: torch.Tensor, reference: torch.Tensor, queries: torch.Tensor, dims: int
                      ) -> torch.Tensor:
    """DOMIAS's score of each query: log p_samples - log p_reference, kernel densities in the whitened principal
    components of the attacker's reference videos, both with the reference's bandwidth (Scott's rule), so that for
    samples drawn like the reference the ratio's expectation is 1 everywhere."""
    need(len(reference), 2, "reference videos", "the membership attack's reference density")
    mean, project = whitening(reference, dims)
    s, r, q = ((x.double() - mean) @ project for x in (samples, reference, queries))
    bandwidth = scott_bandwidth(r)
    return _log_density(q, s, bandwidth) - _log_density(q, r, bandwidth)


def auc_estimate(members: torch.Tensor, others: torch.Tensor, boot: Bootstrap) -> Estimate:
    """The AUC of scores telling members from non-members (ties half), resampling each group."""
    m, n = len(members), len(others)
    value = float(u_statistic(members[None], others[None])[0]) / (m * n)
    rng, draws = boot.rng(14), []
    for size in boot.chunks(m + n):
        a = members[torch.as_tensor(rng.integers(0, m, (size, m)), device=members.device)]
        b = others[torch.as_tensor(rng.integers(0, n, (size, n)), device=others.device)]
        draws.append((u_statistic(a, b) / (m * n)).cpu().numpy())
    return Estimate(value, np.concatenate(draws))
