"""Re-ID model quality on labelled pairs: ROC AUC with a bootstrap interval, and decision metrics at 0.5.

AUC is the Mann-Whitney statistic (ties count one half), the same number scikit-learn's `roc_auc_score` gives.
The bootstrap resamples pairs with replacement, as the seed code does (10,000 resamples, 2.5/97.5 percentiles),
but vectorised over resamples and without the seed code's off-by-one that never drew the last pair.
"""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        return float("nan")  # one class only (or no pairs): no AUC
    return float(_weighted_auc(labels, scores, np.ones((1, len(scores))))[0])


def _weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC for each row of `weights` [B, n] (resample counts), all at once."""
    order = np.argsort(scores, kind="stable")
    scores, labels, weights = scores[order], labels[order], weights[:, order]
    first = np.concatenate([[True], scores[1:] != scores[:-1]])
    group = np.cumsum(first) - 1  # tie group of each sorted score
    neg = np.where(labels, 0.0, weights)
    pos = np.where(labels, weights, 0.0)
    neg_per_group = np.zeros((len(weights), group[-1] + 1))
    np.add.at(neg_per_group.T, group, neg.T)
    below = np.cumsum(neg_per_group, axis=1) - neg_per_group  # negatives strictly below each group
    wins = (pos * (below[:, group] + 0.5 * neg_per_group[:, group])).sum(axis=1)
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / total, np.nan)


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, resamples: int = 10_000, seed: int = 0,
                  level: float = 95.0, chunk: int = 500) -> tuple[float, float]:
    """Percentile interval of the AUC over pair resamples (resamples lacking a class are dropped)."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n, values = len(labels), []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        values.append(_weighted_auc(labels, scores, counts))
    values = np.concatenate(values)
    tail = (100.0 - level) / 2
    low, high = np.nanpercentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def decision_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Accuracy, F1, precision and recall of `sigmoid(logit) > 0.5` (i.e. logit > 0); 0 where undefined."""
    truth, said = np.asarray(labels).astype(bool), np.asarray(logits) > 0
    tp, fp, fn = int((truth & said).sum()), int((~truth & said).sum()), int((truth & ~said).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float((truth == said).mean()), "f1": f1, "precision": precision, "recall": recall}
