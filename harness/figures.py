"""The seed paper's figures for a run: P_max histograms with tau (Fig. 4), t-SNE of re-ID features with learned
training videos marked (Fig. 5), temporal-consistency curves with the swap control (Fig. 6), appearances per
training video; the headline numbers of every row with their intervals; and EF predicted vs true on the real test
split, and filmstrips of generated videos.
Drawn from cached arrays named by their keys, so a warm run does not redraw them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import atomic_write_bytes, atomic_write_text
from harness.hashing import stable_hash
from harness.privacy_spec import UNPERTURBED

FIGURES_VERSION = 3  # bump when a figure's drawing changes (2: τ's interval, the headline figure; 3: its FD on clips)
#: Every figure this module draws, by label (each in `<label>.png`): aggregates, and frames of generated rows only
#: (the filmstrip leaves out rows that show real frames). Only these are ever published next to a table.
PUBLISHABLE = ("pmax_histograms", "tsne", "consistency", "appearances", "motion_histograms", "headline",
               "ef_scatter", "filmstrip", "robustness")


def tsne_coordinates(train: np.ndarray, synthetic: np.ndarray, seed: int, limit: int = 1500) -> np.ndarray:
    """2-D t-SNE of training then synthetic features (each capped at `limit` rows), `[n_train + n_syn, 2]`."""
    from sklearn.manifold import TSNE

    both = np.concatenate([train[:limit], synthetic[:limit]]).astype(np.float64)
    if len(both) < 5:
        return np.zeros((len(both), 2))
    perplexity = float(min(30.0, (len(both) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(both)


def _grid(n: int, size: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> str:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path.name


def _unchanged(done: Path, stamp: str) -> dict[str, str] | None:
    """The figures recorded in `done` when they were drawn from the same inputs and still exist."""
    if not done.is_file():
        return None
    previous = json.loads(done.read_text())
    if previous.get("stamp") == stamp and all((done.parent / name).is_file() for name in previous["figures"].values()):
        return previous["figures"]
    return None


def render_figures(folder: Path, stats: dict[str, Any], row_arrays: dict[str, Path], head: str,
                   n_train_limit: int = 1500) -> dict[str, str]:
    """Write the four privacy figures into `folder`; returns {figure: file name} for the results and leaderboard."""
    if not row_arrays:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    stamp = stable_hash({"rows": {row: str(path) for row, path in row_arrays.items()}, "head": head,
                         "tau": [stats["tau"], stats.get("tau_low"), stats.get("tau_high")],
                         "version": FIGURES_VERSION})
    done = folder / "figures.json"
    previous = _unchanged(done, stamp)
    if previous is not None:
        return previous
    arrays = {row: dict(np.load(path)) for row, path in row_arrays.items()}
    out = {}

    fig, axes = _grid(len(arrays))
    real = stats["heads"][head]["pmax_test"]
    for ax, (row, a) in zip(axes, arrays.items(), strict=True):
        bins = np.histogram_bin_edges(np.concatenate([real, a["pmax"]]), bins=30)
        ax.hist(real, bins=bins, alpha=0.6, density=True, label="real test")
        ax.hist(a["pmax"], bins=bins, alpha=0.6, density=True, label=row)
        ax.axvline(stats["tau"], color="k", linestyle="--", label="τ")
        if stats.get("tau_low") is not None:
            ax.axvspan(stats["tau_low"], stats["tau_high"], color="k", alpha=0.12, label="τ interval")
        ax.set_title(row)
        ax.set_xlabel(f"P_max ({head})")
        ax.legend(fontsize=7)
    out["pmax_histograms"] = _save(fig, folder / "pmax_histograms.png")

    fig, axes = _grid(len(arrays))
    for ax, (row, a) in zip(axes, arrays.items(), strict=True):
        xy, learned = a["tsne"], a["appearances"][:n_train_limit] > 0
        n_train = min(len(a["appearances"]), n_train_limit)
        ax.scatter(*xy[:n_train][~learned].T, s=6, c="lightgray", label="training, not learned")
        ax.scatter(*xy[:n_train][learned].T, s=8, c="tab:blue", label="training, learned")
        ax.scatter(*xy[n_train:].T, s=6, c="tab:orange", alpha=0.6, label="synthetic")
        ax.set_title(row)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6)
    out["tsne"] = _save(fig, folder / "tsne.png")

    curves = {row: a for row, a in arrays.items() if "curve_corr" in a}
    if curves:
        fig, axes = _grid(1, size=5.0)
        ax = axes[0]
        real_curve = np.asarray(stats["consistency_real"]["corr"])
        ax.plot(np.arange(1, len(real_curve) + 1), real_curve, color="k", linewidth=2, label="real test")
        if stats.get("consistency_real_swap"):
            swap = np.asarray(stats["consistency_real_swap"]["corr"])
            ax.plot(np.arange(1, len(swap) + 1), swap, color="k", linestyle=":", label="real, frame 0 swapped")
        for row, a in curves.items():
            line = ax.plot(np.arange(1, len(a["curve_corr"]) + 1), a["curve_corr"], label=row)[0]
            if "swap_corr" in a:
                ax.plot(np.arange(1, len(a["swap_corr"]) + 1), a["swap_corr"], color=line.get_color(),
                        linestyle=":", linewidth=1)
        ax.set_xlabel("frame t")
        ax.set_ylabel("corr(f_0, f_t)")
        ax.set_title("temporal consistency (dotted: frame-0 swap)")
        ax.legend(fontsize=7)
        out["consistency"] = _save(fig, folder / "consistency.png")

    fig, axes = _grid(len(arrays))
    for ax, (row, a) in zip(axes, arrays.items(), strict=True):
        counts = np.sort(a["appearances"])[::-1]
        ax.bar(np.arange(len(counts)), counts, width=1.0)
        ax.set_title(f"{row}: {int((counts > 0).sum())} learned")
        ax.set_xlabel("training video (sorted)")
        ax.set_ylabel("appearances")
    out["appearances"] = _save(fig, folder / "appearances.png")
    atomic_write_text(done, json.dumps({"stamp": stamp, "figures": out}))
    return out


#: The headline panels: (row key, label, the real reference drawn beside each row).
def render_motion_figure(folder: Path, test_scores: np.ndarray, tau: float, rows: dict[str, np.ndarray]
                         ) -> dict[str, str]:
    """Motion-score histograms: the real test videos against each row, with τ_motion (frozen samples left out)."""
    rows = {row: scores[np.isfinite(scores)] for row, scores in rows.items()}
    rows = {row: scores for row, scores in rows.items() if len(scores)}
    if not rows:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    stamp = stable_hash({"test": test_scores.tolist(), "tau": tau, "version": FIGURES_VERSION,
                         "rows": {row: scores.tolist() for row, scores in rows.items()}})
    done = folder / "motion-figure.json"
    previous = _unchanged(done, stamp)
    if previous is not None:
        return previous
    fig, axes = _grid(len(rows))
    for ax, (row, scores) in zip(axes, rows.items(), strict=True):
        bins = np.histogram_bin_edges(np.concatenate([test_scores, scores]), bins=30)
        ax.hist(test_scores, bins=bins, alpha=0.6, density=True, label="real test")
        ax.hist(scores, bins=bins, alpha=0.6, density=True, label=row)
        ax.axvline(tau, color="k", linestyle="--", label="τ_motion")
        ax.set_title(row)
        ax.set_xlabel("best motion score")
        ax.legend(fontsize=7)
    figures = {"motion_histograms": _save(fig, folder / "motion_histograms.png")}
    atomic_write_text(done, json.dumps({"stamp": stamp, "figures": figures}))
    return figures


HEADLINE = (("memorised_pct", "memorised %", None), ("recall", "recall", "reference_recall"),
            ("video_fd", "Fréchet distance (clip features)", None),
            ("ef_r2", "EF R² (train on samples, test on real)", None))


def render_headline_figure(folder: Path, rows: list[dict[str, Any]], nominal_pct: float) -> dict[str, str]:
    """Each row's headline numbers as points with their interval bars; the real reference beside recall, and the
    nominal share of real videos above τ as a line beside memorised %."""
    rows = [r for r in rows if r.get("memorised_pct") is not None]
    if not rows:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    keys = [f"{k}{end}" for key, _, ref in HEADLINE for k in (key, ref) if k for end in ("", "_low", "_high")]
    stamp = stable_hash({"rows": [{k: r.get(k) for k in ["generator", *keys]} for r in rows],
                         "nominal": nominal_pct, "version": FIGURES_VERSION})
    done = folder / "headline-figure.json"
    previous = _unchanged(done, stamp)
    if previous is not None:
        return previous
    panels = [(key, label, ref) for key, label, ref in HEADLINE if any(r.get(key) is not None for r in rows)]
    fig, axes = _grid(len(panels), size=3.6)
    y = np.arange(len(rows))
    for ax, (key, label, ref) in zip(axes, panels, strict=True):
        for offset, name, colour in ((0.0, key, "tab:blue"), (0.22, ref, "gray")):
            shown = [i for i, r in enumerate(rows) if name is not None and r.get(name) is not None]
            if not shown:
                continue
            values = np.array([rows[i][name] for i in shown], dtype=float)
            low = np.array([rows[i].get(f"{name}_low", rows[i][name]) for i in shown], dtype=float)
            high = np.array([rows[i].get(f"{name}_high", rows[i][name]) for i in shown], dtype=float)
            # a stored interval may miss its value by a rounding error
            spread = np.clip([values - low, high - values], 0, None)
            ax.errorbar(values, y[shown] + offset, xerr=spread, fmt="o", color=colour,
                        capsize=3, markersize=4, label="real test, same count" if name == ref else None)
        if key == "memorised_pct":
            ax.axvline(nominal_pct, color="k", linestyle="--", linewidth=1, label=f"{nominal_pct:g} % (real, nominal)")
        ax.set_yticks(y, [r["generator"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(label, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    out = {"headline": _save(fig, folder / "headline.png")}
    atomic_write_text(done, json.dumps({"stamp": stamp, "figures": out}))
    return out


#: the Robustness figure's measures: key, label, colour
DETECTION = (("memorised_pct", "first frame", "tab:blue"), ("content_memorised_pct", "content", "tab:orange"),
             ("motion_memorised_pct", "motion", "tab:green"))


def render_robustness_figure(folder: Path, robustness: dict[str, Any]) -> dict[str, str]:
    """Detection rate against strength, one panel per perturbation: each memorised % of the near-copies (solid)
    and of the perturbed held-out videos (dashed), with interval bars, strengths in the spec's order; thin
    horizontal lines: the same videos unperturbed (the paired reference)."""
    measured = [line for line in robustness["rows"] if line.get("memorised_pct") is not None]
    lines = [line for line in measured if line["perturbation"] != UNPERTURBED]
    if not lines:
        return {}
    references = [line for line in measured if line["perturbation"] == UNPERTURBED]
    folder.mkdir(parents=True, exist_ok=True)
    stamp = stable_hash({"rows": measured, "version": FIGURES_VERSION})
    done = folder / "robustness-figure.json"
    previous = _unchanged(done, stamp)
    if previous is not None:
        return previous
    names = list(dict.fromkeys(line["perturbation"] for line in lines))
    fig, axes = _grid(len(names), size=3.0)
    for ax, name in zip(axes, names, strict=True):
        strengths = list(dict.fromkeys(line["strength"] for line in lines if line["perturbation"] == name))
        x = np.arange(len(strengths))
        for source, style in (("train", "-"), ("holdout", "--")):
            for key, label, colour in DETECTION:
                found = {line["strength"]: line for line in lines if line["perturbation"] == name
                         and line["source"] == source and line.get(key) is not None}
                shown = [i for i, s in enumerate(strengths) if s in found]
                if not shown:
                    continue
                values = np.array([found[strengths[i]][key] for i in shown], dtype=float)
                low = np.array([found[strengths[i]].get(f"{key}_low", np.nan) for i in shown], dtype=float)
                high = np.array([found[strengths[i]].get(f"{key}_high", np.nan) for i in shown], dtype=float)
                spread = np.clip(np.nan_to_num([values - low, high - values]), 0, None)
                ax.errorbar(x[shown], values, yerr=spread, fmt="o" + style, color=colour, capsize=2, markersize=3,
                            label=f"{label} ({'near-copy' if source == 'train' else 'held-out'})")
        for line in references:
            for key, _, colour in DETECTION:
                if line.get(key) is not None:
                    ax.axhline(line[key], color=colour, linewidth=0.6, alpha=0.6,
                               linestyle="-" if line["source"] == "train" else "--")
        ax.axhline(5, color="k", linewidth=0.8, linestyle=":")
        ax.set_xticks(x, strengths, fontsize=8)
        ax.set_ylim(-3, 103)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("memorised %", fontsize=8)
    axes[0].legend(fontsize=6)
    out = {"robustness": _save(fig, folder / "robustness.png")}
    atomic_write_text(done, json.dumps({"stamp": stamp, "figures": out}))
    return out


def render_downstream_figures(folder: Path, truth: np.ndarray, predictions: dict[str, Path],
                              filmstrips: dict[str, Path], frames_shown: int = 8) -> dict[str, str]:
    """EF predicted vs true on the real test split (one panel per training set), and a filmstrip grid of the
    generated videos. `filmstrips` must only hold generated rows: these frames may be published."""
    if not predictions and not filmstrips:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    stamp = stable_hash({"predictions": {k: str(v) for k, v in predictions.items()},
                         "filmstrips": {k: str(v) for k, v in filmstrips.items()}, "version": FIGURES_VERSION})
    done = folder / "downstream-figures.json"
    previous = _unchanged(done, stamp)
    if previous is not None:
        return previous
    out = {}
    if predictions:
        fig, axes = _grid(len(predictions))
        low, high = float(truth.min()) - 5, float(truth.max()) + 5
        for ax, (name, path) in zip(axes, predictions.items(), strict=True):
            predicted = np.load(path)
            ax.scatter(truth, predicted, s=8, alpha=0.7)
            ax.plot([low, high], [low, high], color="k", linewidth=1)
            r2 = 1 - np.sum((truth - predicted) ** 2) / np.sum((truth - truth.mean()) ** 2)
            ax.set_title(f"{name}: R² {r2:.2f}")
            ax.set_xlim(low, high)
            ax.set_ylim(low, high)
            ax.set_xlabel("true EF (real test)")
            ax.set_ylabel("predicted EF")
        out["ef_scatter"] = _save(fig, folder / "ef_scatter.png")
    if filmstrips:
        import matplotlib.pyplot as plt

        strips = {row: np.load(path) for row, path in filmstrips.items()}
        n_rows = sum(len(v) for v in strips.values())
        fig, axes = plt.subplots(n_rows, 1, figsize=(1.2 * frames_shown, 1.3 * n_rows), squeeze=False)
        axes = iter(axes[:, 0])
        for row, videos in strips.items():
            for i, video in enumerate(videos):
                shown = video[np.linspace(0, len(video) - 1, min(frames_shown, len(video))).astype(int)]
                ax = next(axes)
                ax.imshow(np.concatenate(list(shown), axis=1), cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(row, loc="left", fontsize=8)
        out["filmstrip"] = _save(fig, folder / "filmstrip.png")
    atomic_write_text(done, json.dumps({"stamp": stamp, "figures": out}))
    return out
