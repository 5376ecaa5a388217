"""Fidelity in a feature space: Frechet distance and k-NN precision / recall / density / coverage.

Precision, recall, density and coverage follow Naeem et al. 2020 (the `prdc` package) exactly, strict `<`
included, but are computed in row blocks so memory stays bounded for large sets.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

from harness.metrics.columns import Column
from harness.metrics.intervals import Bootstrap, frechet_interval
from harness.metrics.neighbours import blocks, nearest


def kth_neighbour_distance(x: torch.Tensor, k: int, block_bytes: int = 64 * 2**20) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row of the same set (the row itself counted as its 0th)."""
    return nearest(x, x, k + 1, block_bytes=block_bytes)[0][:, k]


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5, block_bytes: int = 64 * 2**20) -> dict[str, float]:
    r_real = kth_neighbour_distance(real, k, block_bytes)
    r_fake = kth_neighbour_distance(fake, k, block_bytes)
    inside_real = torch.zeros(len(fake), dtype=torch.long, device=fake.device)  # real balls containing fake j
    recalled = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for s in blocks(len(real), len(fake), block_bytes, real.element_size()):
        d = torch.cdist(real[s], fake)  # [block of real, M]
        inside_real += (d < r_real[s, None]).sum(dim=0)
        recalled[s] = (d < r_fake[None, :]).any(dim=1)
        covered[s] = d.min(dim=1).values < r_real[s]
    return {
        "precision": float((inside_real > 0).double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(inside_real.double().mean() / k),
        "coverage": float(covered.double().mean()),
    }


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of Gaussians fitted to the two feature sets."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    with warnings.catch_warnings():  # singular covariances (fewer videos than feature dimensions) are expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s_r @ s_f)
    if not np.isfinite(covmean).all():  # near-singular product: regularise, as the FID reference code does
        eps = 1e-6 * np.eye(len(s_r))
        covmean = linalg.sqrtm((s_r + eps) @ (s_f + eps))
    covmean = covmean.real
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(s_r) + np.trace(s_f) - 2.0 * np.trace(covmean))


#: the keys `fidelity_metrics` returns, as a results row holds them
FIDELITY_KEYS = ("fd", "fd_low", "fd_high", "precision", "knn_recall", "density", "coverage")


def fidelity_columns(prefix: str, group: str, suffix: str, space: str) -> list[Column]:
    """The five fidelity columns of one feature space: keys `<prefix><key>`, labels ending in `suffix`, the space
    named in their definitions as `space` (the training videos' features it compares with)."""
    return [
        Column(f"{prefix}fd", f"Fréchet distance{suffix}", "↓", interval=True, group=group,
               definition=f"Fréchet distance between the samples' features and {space}"),
        Column(f"{prefix}precision", f"precision{suffix}", "↑", group=group,
               definition=f"samples inside the k-NN balls of {space} (realism; prdc definitions)"),
        Column(f"{prefix}knn_recall", f"k-NN recall{suffix}", "↑", group=group,
               definition=f"{space} inside the k-NN balls of the samples' (diversity; prdc)"),
        Column(f"{prefix}density", f"density{suffix}", "↑", group=group,
               definition=f"how many k-NN balls of {space} a sample falls in, over k (prdc)"),
        Column(f"{prefix}coverage", f"coverage{suffix}", "↑", group=group,
               definition=f"{space} whose k-NN ball holds a sample (prdc)"),
    ]


def fidelity_metrics(real: torch.Tensor, fake: torch.Tensor, k: int, boot: Bootstrap) -> dict[str, float | None]:
    """The fidelity columns of `fake` against `real` features: Fréchet distance with its interval, precision,
    k-NN recall, density and coverage; None where a set is too small (two videos for the distance, k + 1 for the
    k-NN numbers)."""
    small = min(len(real), len(fake))
    knn = prdc(real.double(), fake.double(), k=k) if small > k else dict.fromkeys(("precision", "recall", "density",
                                                                                     "coverage"))
    real_np, fake_np = real.double().cpu().numpy(), fake.double().cpu().numpy()
    fd = frechet_distance(real_np, fake_np) if small > 1 else None
    fd_low, fd_high = frechet_interval(real_np, fake_np, fd, boot) if fd is not None else (None, None)
    return dict(zip(FIDELITY_KEYS, (fd, fd_low, fd_high, knn["precision"], knn["recall"], knn["density"],
                                    knn["coverage"]), strict=True))
