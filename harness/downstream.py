"""Which videos train the downstream task under each strategy (paper Table 5), and how well samples honour EF.

Synthetic strategies draw from the privacy-compliant samples (P_max <= tau) when the run has a re-ID model, as the
paper's notebooks do, and from every sample otherwise:

- `random`: as many samples as there are real training videos (all of them when there are fewer);
- `recall-small`: one sample per learned training video (the first, in sample order);
- `recall-large`: up to `per_learned_video` samples per learned training video;
- `full`: every compliant sample;
- `real-learned-subset` (a reference): the REAL training videos those compliant samples learned, with real labels.

Selections are sorted indices, so two strategies that pick the same videos share one cached training run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.errors import Ineligible
from harness.metrics.columns import Column
from harness.metrics.intervals import Bootstrap

#: The first synthetic strategy listed gives the table's EF columns.
COLUMNS = [
    Column("ef_r2", "EF R²", "↑", interval=True, group="utility",
           definition="the task trained on the row's samples (first strategy), tested on the real test split"),
    Column("ef_mae", "EF MAE", "↓", 2, interval=True, group="utility",
           definition="its mean absolute error in EF points on the real test split"),
    Column("adherence_mae", "EF adherence MAE", "↓", 2, interval=True, group="utility",
           definition="requested EF against the EF a regressor trained on real videos measures in the sample"),
    Column("adherence_corr", "EF adherence r", "↑", interval=True, group="utility",
           definition="correlation of requested and measured EF: does the generator follow its condition"),
]


def compliant(per_sample: pd.DataFrame | None, n: int) -> np.ndarray:
    """Indices of the samples the privacy filter keeps (all samples without a re-ID model)."""
    if per_sample is None:
        return np.arange(n)
    return np.flatnonzero(~per_sample["memorised"].to_numpy(dtype=bool))


def _first_per_video(nearest: np.ndarray, candidates: np.ndarray, per_video: int) -> np.ndarray:
    """The first `per_video` candidates (in sample order) for each nearest training video."""
    order = pd.Series(nearest[candidates]).groupby(nearest[candidates]).cumcount().to_numpy()
    return candidates[order < per_video]


def select(strategy: str, per_sample: pd.DataFrame | None, n_samples: int, n_real_train: int, head: str,
           per_learned_video: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the samples a synthetic strategy trains on; raises Ineligible when there are none."""
    if n_samples == 0:
        raise Ineligible(f"{strategy}: the generator returned no samples, so nothing was trained.")
    kept = compliant(per_sample, n_samples)
    if len(kept) == 0:
        raise Ineligible(f"{strategy}: every sample is memorised (P_max above τ), so the privacy filter "
                               "leaves nothing to train on.")
    if strategy == "full":
        return kept
    if strategy == "random":
        return np.sort(rng.choice(kept, size=min(n_real_train, len(kept)), replace=False))
    nearest = per_sample[f"nearest_{head}"].astype(str).to_numpy()
    return _first_per_video(nearest, kept, 1 if strategy == "recall-small" else per_learned_video)


def learned_real_videos(per_sample: pd.DataFrame, train_ids: list[str], head: str) -> np.ndarray:
    """Sorted indices of the real training videos learned by at least one compliant sample."""
    kept = compliant(per_sample, len(per_sample))
    learned = set(per_sample[f"nearest_{head}"].astype(str).to_numpy()[kept])
    indices = np.array([i for i, video in enumerate(train_ids) if video in learned], dtype=np.int64)
    if len(indices) == 0:
        raise Ineligible("real-learned-subset: no training video is learned by a sample the privacy filter "
                               "keeps, so there is no real subset to train on.")
    return indices


def adherence(requested: np.ndarray, measured: np.ndarray, boot: Bootstrap) -> dict[str, float | int | None]:
    """Requested vs measured label: mean absolute error and Pearson correlation (None when undefined), each with
    a bootstrap interval over the samples."""
    requested, measured = np.asarray(requested, dtype=float), np.asarray(measured, dtype=float)
    ok = np.isfinite(requested) & np.isfinite(measured)
    requested, measured = requested[ok], measured[ok]
    n = len(requested)
    if n == 0:
        return {"mae": None, "corr": None, "n": 0}
    rng, maes, corrs = boot.rng(4), [], []
    for size in boot.chunks(n):
        idx = rng.integers(0, n, (size, n))
        maes.append(np.abs(requested[idx] - measured[idx]).mean(axis=1))
        corrs.append(_pearson(requested[idx], measured[idx]))
    out: dict[str, float | int | None] = {"mae": float(np.mean(np.abs(requested - measured))), "n": int(n)}
    out["mae_low"], out["mae_high"] = boot.interval(np.concatenate(maes))
    corr = float(_pearson(requested[None], measured[None])[0])
    out["corr"] = corr if corr == corr else None
    if out["corr"] is not None:
        out["corr_low"], out["corr_high"] = boot.interval(np.concatenate(corrs))
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair (NaN where a row is constant)."""
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
