"""The seed paper's privacy, recall, consistency and fidelity analysis of one generator row, on re-ID features.

`reference_stats` computes everything that depends only on the real data (tau, the real test->train recall, the
real consistency curves); `row_metrics` compares one row's samples with it. Both work on feature tensors and run
on whatever device those tensors are on. With several re-ID models (`Reference.replicates`), the privacy and recall
numbers are their mean (`harness.metrics.intervals.pooled`); everything else comes from the first model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.distributed import SINGLE, ProcessGroup
from harness.metrics.columns import Column
from harness.metrics.consistency import consistency_curve, consistency_scores
from harness.metrics.copy import CopyScores, joint_with_copy
from harness.metrics.fidelity import FIDELITY_KEYS, fidelity_columns, fidelity_metrics
from harness.metrics.intervals import (
    Bootstrap,
    Estimate,
    agree,
    memorised_estimate,
    outside_estimate,
    pooled,
    recall_estimate,
)
from harness.metrics.pairs import HEADS, best_frame_match, identity_score, max_scores
from harness.metrics.privacy import (
    appearances,
    ceiling_level,
    generative_recall,
    irs_infinity,
    is_memorised,
    memorised_fraction,
    privacy_threshold,
)

#: the share (%) of the real test videos' consistencies a sample's must lie within, centred on their median
CONSISTENCY_CENTRAL = 95.0
COLUMNS = [
    Column("memorised_pct", "memorised %", "↓", 1, needs_reid=True, interval=True, group="privacy",
           definition="samples whose first frame re-identifies a training patient: best re-ID score against any "
                      "training video (P_max; against its first frame, as the seed paper, or any of its frames) "
                      "above τ, or, with the pixel copy test, a copy score above the same percentile of the real "
                      "test videos' (the two tests calibrated together)"),
    Column("content_memorised_pct", "content memorised %", "↓", 1, needs_reid=True, interval=True, group="privacy",
           definition="samples any of whose frames matches a frame of a training video above τ_content, set on the "
                      "real test videos like τ (Chen et al. 2024), by the re-ID model or the pixel copy test"),
    Column("tau", "τ", "", 3, needs_reid=True, interval=True, group="privacy",
           definition="the privacy threshold: a percentile of the real test videos' P_max, so a real held-out video "
                      "is memorised at the complementary rate by construction"),
    Column("recall", "recall", "↑", needs_reid=True, interval=True, group="coverage",
           definition="distinct nearest training videos over min(training videos, samples): how much of the "
                      "training set the samples cover"),
    Column("recall_after_filter", "recall after filter", "↑", needs_reid=True, interval=True, group="coverage",
           definition="recall counting only the samples below τ, i.e. after a re-ID privacy filter"),
    Column("reference_recall", "real recall", "", 3, interval=True, group="coverage",
           definition="the recall real test videos reach at the row's sample count: what a perfect generator "
                      "would score"),
    Column("irs_inf", "IRS∞", "↑", needs_reid=True, interval=True, group="coverage",
           definition="occupancy estimate of recall with infinitely many samples"),
    Column("consistency", "consistency", "↑", group="temporal",
           definition="mean correlation of a sample's frame-0 and frame-t re-ID features: does it stay one patient"),
    Column("consistency_gap_abs", "consistency gap to real", "↓",
           read=lambda row: _abs(row.get("consistency_gap")), derived_from="consistency_gap", group="temporal",
           definition="the consistency's distance to real test videos'"),
    Column("consistency_outside_pct", "consistency outside real %", "↓", 1, interval=True, group="temporal",
           definition=f"samples whose own consistency lies outside the central {CONSISTENCY_CENTRAL:g} % of the real "
                      "test videos' (two-sided: too steady, as a frozen video, or too changeable, as a flickering "
                      f"one); real videos score {100 - CONSISTENCY_CENTRAL:g} % by construction"),
    *fidelity_columns("", "fidelity_reid", " (re-ID)", "the training videos' first-frame re-ID features"),
]


def _abs(value: float | None) -> float | None:
    return None if value is None or value != value else abs(value)


@dataclass
class Reference:
    """Real-data features a row is compared with (first frames of train and test; all frames of test)."""

    train_first: torch.Tensor  # [N_train, D]
    train_ids: list[str]
    test_first: torch.Tensor  # [N_test, D]
    test_frames: torch.Tensor  # [N_test, T, D]
    weight: torch.Tensor
    bias: float
    head: str = "pred"
    percentile: float = 95.0
    calibration: str = "test-to-train"
    knn: int = 5
    boot: Bootstrap = Bootstrap()
    #: the frames of every training video a first frame is compared with `[N_train, F, D]`, each embedded within
    #: its clip as a first frame is (`privacy.reference_frames: all`); None: their first frames (the seed paper's)
    train_frames: torch.Tensor | None = None
    #: more re-ID models of the run, trained from other seeds: their first-frame features and head, same settings
    replicates: tuple[Reference, ...] = ()
    #: every k-th frame (`privacy.content.frame_stride`) of the training and test videos `[N, F, D]`, each embedded
    #: on its own, for content memorisation
    content_train: torch.Tensor | None = None
    content_test: torch.Tensor | None = None
    content_percentile: float = 95.0
    #: the real videos' pixel copy scores (`privacy.copy_test`); None: the re-ID model alone decides
    copy: CopyScores | None = None
    #: the run's processes: all-pairs scoring splits the queries among them
    group: ProcessGroup = SINGLE

    def pmax(self, query: torch.Tensor, head: str, ref: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every query's best score against `ref` and the index of that row; by default against the training
        videos (their frames in `train_frames`, else their first frames), the index being the video's."""
        if ref is None and self.train_frames is not None:
            frames = self.train_frames.reshape(-1, self.train_frames.shape[-1])
            best, row = self.pmax(query, head, frames)
            return best, torch.div(row, self.train_frames.shape[1], rounding_mode="floor")
        ref = self.train_first if ref is None else ref
        parts = self.group.map(lambda b: tuple(t.cpu() for t in max_scores(query[b.start:b.stop], ref, head,
                                                                             self.weight, self.bias)), len(query))
        return tuple(torch.cat(column).to(query.device) for column in zip(*parts, strict=True))

    def best_frames(self, query: torch.Tensor, ref: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """`best_frame_match` of every query video `[Nq, F, D]` against `ref` `[Nr, F', D]`, under this model."""
        parts = self.group.map(lambda b: best_frame_match(query[b.start:b.stop], ref, self.head, self.weight,
                                                          self.bias), len(query))
        return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


@dataclass
class PrivacyFilter:
    """The paper's filter, offered to generators: which frames does the re-ID model match above tau?"""

    embed: Callable[[np.ndarray], torch.Tensor]  # frames [N, C, h, w] -> features [N, D]
    reference: Reference
    tau: float

    ceiling: float = np.inf

    def memorised(self, frames: np.ndarray) -> np.ndarray:
        features = self.embed(frames).to(self.reference.train_first.device)
        pmax, _ = self.reference.pmax(features, self.reference.head)
        return is_memorised(pmax.cpu().numpy(), self.tau, self.ceiling)


def _check_features(features: torch.Tensor, what: str) -> None:
    if features.numel() == 0:
        raise ValueError(f"{what} are empty: the metrics need at least one video")
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features.reshape(len(features), -1))).any(dim=1).sum())
        raise ValueError(f"{what} contain NaN or infinite values ({bad} of {len(features)} videos)")


def _curves(frames: torch.Tensor, ref: Reference, swap: bool = False) -> dict[str, list[float]]:
    return {head: consistency_curve(frames, head, ref.weight, ref.bias, swap=swap).cpu().tolist()
            for head in ("pred", "corr")}


def _calibrate(ref: Reference, head: str) -> dict[str, Any]:
    """P_max and nearest training video of every real test video, P_max of every training video against the test
    videos (EchoNet-Synthetic's direction), and τ under both calibrations."""
    pmax_test, nearest_test = (t.cpu().numpy() for t in ref.pmax(ref.test_first, head))
    pmax_train = ref.pmax(ref.train_first, head, ref=ref.test_first)[0].cpu().numpy()
    return {"tau_test_to_train": privacy_threshold(pmax_test, ref.percentile),
            "tau_train_to_test": privacy_threshold(pmax_train, ref.percentile),
            "pmax_test": pmax_test, "pmax_train": pmax_train, "nearest_test": nearest_test,
            "ceiling": ceiling_level(identity_score(head, ref.bias), pmax_test)}


def _calibration(ref: Reference, calibrated: dict[str, Any]) -> tuple[float, np.ndarray]:
    """τ under the reference's calibration and the P_max values that set it."""
    if ref.calibration == "test-to-train":
        return calibrated["tau_test_to_train"], calibrated["pmax_test"]
    return calibrated["tau_train_to_test"], calibrated["pmax_train"]


def _with_tau(ref: Reference, calibrated: dict[str, Any]) -> dict[str, Any]:
    return {**calibrated, "tau": _calibration(ref, calibrated)[0]}


def reference_stats(ref: Reference) -> dict[str, Any]:
    """tau under both calibrations for every head, the real test->train recall, real consistency curves."""
    _check_features(ref.train_first, "training features")
    _check_features(ref.test_frames, "test features")
    n_train = len(ref.train_first)
    heads = {head: _calibrate(ref, head) for head in HEADS}
    main = heads[ref.head]
    tau, calibration = _calibration(ref, main)
    irs = irs_infinity(main["nearest_test"], n_train)
    rng = ref.boot.rng(0)
    taus = [np.percentile(calibration[rng.integers(0, len(calibration), (size, len(calibration)))], ref.percentile,
                          axis=1) for size in ref.boot.chunks(len(calibration))]
    tau_low, tau_high = ref.boot.interval(np.concatenate(taus))
    return {
        "heads": heads,
        "tau": tau,
        "tau_low": tau_low, "tau_high": tau_high,
        "calibration_pmax": calibration,  # the P_max values that set tau (resampled for the intervals)
        "tau_test_to_train": main["tau_test_to_train"],
        "tau_train_to_test": main["tau_train_to_test"],
        "test_memorised_pct": 100 * memorised_fraction(main["pmax_test"], tau, main["ceiling"]),
        "ceiling": main["ceiling"],
        # real held-out videos reach the score of an exact copy: the model cannot tell the two apart
        "tau_at_ceiling": bool(tau >= main["ceiling"]),
        "reference_recall": generative_recall(main["nearest_test"], n_train),
        "reference_irs_inf": irs["value"],
        "consistency_real": _curves(ref.test_frames, ref),
        "consistency_real_videos": consistency_scores(ref.test_frames, "corr").mean(dim=1).cpu().numpy(),
        "consistency_real_swap": _curves(ref.test_frames, ref, swap=True) if len(ref.test_frames) > 1 else None,
        "replicates": [{**_with_tau(ref, _calibrate(replicate, ref.head)), "content": _content_calibration(replicate)}
                       for replicate in ref.replicates],
        "content": _content_calibration(ref),
    }


def _content_calibration(ref: Reference) -> dict[str, Any] | None:
    """τ_content from the real test videos' best frame match with the training videos (and the other way)."""
    if ref.content_train is None:
        return None
    pmax_test, nearest_test = ref.best_frames(ref.content_test, ref.content_train)
    pmax_train, _ = ref.best_frames(ref.content_train, ref.content_test)
    calibrated = {"tau_test_to_train": privacy_threshold(pmax_test, ref.content_percentile),
                  "tau_train_to_test": privacy_threshold(pmax_train, ref.content_percentile),
                  "pmax_test": pmax_test, "pmax_train": pmax_train, "nearest_test": nearest_test,
                  "ceiling": ceiling_level(identity_score(ref.head, ref.bias), pmax_test)}
    return _with_tau(ref, calibrated)


#: the numbers every re-ID model of the run measures, pooled over the models, with the range each lies in
#: the pooled columns whose re-ID models must agree for the row's privacy to be reliable
AGREE = ("memorised_pct", "memorised_pct_train_to_test")
POOLED = {"memorised_pct": (0.0, 100.0), "memorised_pct_train_to_test": (0.0, 100.0), "recall": (0.0, 1.0),
          "recall_after_filter": (0.0, 1.0), "reference_recall": (0.0, 1.0)}


def _privacy_estimates(pmax: np.ndarray, nearest: np.ndarray, ref: Reference, calibrated: dict[str, Any],
                       copy: np.ndarray | None = None) -> tuple[dict[str, Estimate], np.ndarray]:
    """One re-ID model's privacy and recall numbers for a row, and which samples it finds memorised (by the model,
    or by the copy test on the samples' first frames `copy` where the run has one)."""
    n_train, n, boot = len(ref.train_first), len(pmax), ref.boot
    copies = ref.copy if copy is not None else None
    scores, calibration, ceiling = joint_with_copy(pmax, _calibration(ref, calibrated)[1], calibrated["ceiling"],
                                                   copy, copies and copies.calibration("first", ref.calibration))
    reverse = joint_with_copy(pmax, calibrated["pmax_train"], calibrated["ceiling"], copy,
                              copies and copies.first_train)
    memorised = is_memorised(scores, privacy_threshold(calibration, ref.percentile), ceiling)
    return {
        "memorised_pct": memorised_estimate(scores, calibration, ref.percentile, boot, ceiling),
        "memorised_pct_train_to_test": memorised_estimate(*reverse[:2], ref.percentile, boot, reverse[2]),
        "recall": recall_estimate(nearest, n_train, boot),
        "recall_after_filter": recall_estimate(nearest[~memorised], n_train, boot, denominator=min(n_train, n)),
        # the real test videos' recall at this row's sample count, so that rows and reference compare
        "reference_recall": recall_estimate(calibrated["nearest_test"], n_train, boot, queries=n),
    }, memorised


def row_metrics(first: torch.Tensor, frames: torch.Tensor, ref: Reference, stats: dict[str, Any],
                sample_ids: list[str], replicate_first: tuple[torch.Tensor, ...] = (),
                content_frames: tuple[torch.Tensor, ...] = (), fidelity: bool = True,
                copy: dict[str, np.ndarray] | None = None
                ) -> tuple[dict[str, Any], pd.DataFrame, dict[str, np.ndarray]]:
    """Metrics of one row, its per-sample table, and the arrays its figures need (`replicate_first`: the samples'
    first-frame features under each of `ref.replicates`; `content_frames`: the same frames as `ref.content_train`'s,
    each embedded on its own, under the first model and then each replicate; `copy`: the samples' copy scores,
    `first` and `content`, with the training video each names, when `ref.copy` holds the real videos'). Without
    `fidelity`, only privacy and coverage (no consistency, Fréchet distance or k-NN numbers)."""
    _check_features(first, "the samples' re-ID features")
    n_train = len(ref.train_first)
    per_sample = pd.DataFrame({"sample_id": sample_ids})
    by_head: dict[str, Any] = {}
    for head in HEADS:
        pmax, nearest = (t.cpu().numpy() for t in ref.pmax(first, head))
        tau = _calibration(ref, stats["heads"][head])[0]
        by_head[head] = {"tau": tau, "memorised_pct": 100 * memorised_fraction(pmax, tau,
                                                                                stats["heads"][head]["ceiling"]),
                         "recall": generative_recall(nearest, n_train)}
        per_sample[f"pmax_{head}"] = pmax
        per_sample[f"nearest_{head}"] = [ref.train_ids[i] for i in nearest]
        if head == ref.head:
            main_pmax, main_nearest = pmax, nearest
    copy = copy if ref.copy is not None else None
    if copy is not None:
        per_sample["copy_score"] = copy["first"]
        per_sample["copy_nearest"] = [ref.train_ids[i] for i in copy["first_nearest"]]
    first_copy = copy["first"] if copy is not None else None
    estimates, memorised = _privacy_estimates(main_pmax, main_nearest, ref, stats["heads"][ref.head], first_copy)
    models = [(estimates, memorised)]
    for replicate, calibrated, features in zip(ref.replicates, stats["replicates"], replicate_first, strict=True):
        pmax, nearest = (t.cpu().numpy() for t in replicate.pmax(features, ref.head))
        models.append(_privacy_estimates(pmax, nearest, ref, calibrated, first_copy))
    counts = appearances(main_nearest, n_train)
    per_sample["memorised"] = memorised
    if len(models) > 1:
        per_sample["memorised_models"] = np.mean([flags for _, flags in models], axis=0)
    per_sample["appearances"] = counts[main_nearest]
    irs = irs_infinity(main_nearest, n_train)
    curves = _curves(frames, ref) if frames.shape[1] > 1 and fidelity else None
    swap = _curves(frames, ref, swap=True) if curves and len(frames) > 1 else None
    real = stats["consistency_real"]
    outside = outside_estimate(consistency_scores(frames, "corr").mean(dim=1).cpu().numpy(),
                               stats["consistency_real_videos"], CONSISTENCY_CENTRAL, ref.boot) if curves else None
    first_np = first.double().cpu().numpy()
    knn = fidelity_metrics(ref.train_first, first, ref.knn, ref.boot) if fidelity else {}
    metrics: dict[str, Any] = {"tau": stats["tau"], "tau_low": stats["tau_low"], "tau_high": stats["tau_high"]}
    for key, limits in POOLED.items():
        estimate = pooled([model[key] for model, _ in models], ref.boot, limits)
        metrics[key] = estimate.value
        metrics[f"{key}_low"], metrics[f"{key}_high"] = estimate.interval(ref.boot)
    if len(models) > 1:  # what each re-ID model measured, the first model's first
        metrics["per_model"] = {key: [model[key].value for model, _ in models] for key in POOLED}
        disagree = [key for key in AGREE if not agree([model[key] for model, _ in models], ref.boot)]
    if content_frames and stats["content"] is not None:
        content, per_model = _content_metrics(content_frames, ref, stats, per_sample,
                                              copy["content"] if copy is not None else None)
        metrics.update(content)
        if "per_model" in metrics:
            metrics["per_model"]["content_memorised_pct"] = [e.value for e in per_model]
            disagree += [] if agree(per_model, ref.boot) else ["content_memorised_pct"]
    if len(models) > 1:
        metrics["models_disagree"] = ", ".join(disagree) or None
    metrics.update({
        "irs_inf": irs["value"], "irs_inf_low": irs["low"], "irs_inf_high": irs["high"],
        "reference_irs_inf": stats["reference_irs_inf"],
        "learned_videos": int((counts > 0).sum()),
        "max_appearances": int(counts.max()),
        "consistency": float(np.mean(curves["corr"])) if curves else None,
        "consistency_gap": float(np.mean(curves["corr"]) - np.mean(real["corr"])) if curves else None,
        "consistency_head": float(np.mean(curves["pred"])) if curves else None,
        "consistency_swap": float(np.mean(swap["corr"])) if swap else None,
        **(dict(zip(("consistency_outside_pct", "consistency_outside_pct_low", "consistency_outside_pct_high"),
                    (outside.value, *outside.interval(ref.boot)), strict=True)) if outside else {}),
        **{key: knn.get(key) for key in FIDELITY_KEYS},
        "heads": by_head,
    })
    arrays = {"pmax": main_pmax, "nearest": main_nearest, "appearances": counts,
              "features": first_np.astype(np.float32)}
    if curves:
        arrays.update({f"curve_{k}": np.asarray(v) for k, v in curves.items()})
        if swap:
            arrays.update({f"swap_{k}": np.asarray(v) for k, v in swap.items()})
    return metrics, per_sample, arrays


def _content_metrics(frames: tuple[torch.Tensor, ...], ref: Reference, stats: dict[str, Any],
                     per_sample: pd.DataFrame, copy: np.ndarray | None = None
                     ) -> tuple[dict[str, Any], list[Estimate]]:
    """Content memorisation: a sample whose best frame match with any training frame exceeds τ_content (or, with
    the samples' content copy scores `copy`, whose joint level with the copy test does), pooled over the re-ID
    models like memorised %, and each model's estimate; adds the per-sample columns (the first model's)."""
    calibrations = [stats["content"], *(replicate["content"] for replicate in stats["replicates"])]
    copy_calibration = ref.copy.calibration("content", ref.calibration) if copy is not None else None
    estimates, flags = [], []
    for features, model, calibrated in zip(frames, (ref, *ref.replicates), calibrations, strict=True):
        pmax, nearest = model.best_frames(features, model.content_train)
        scores, calibration, ceiling = joint_with_copy(pmax, _calibration(model, calibrated)[1],
                                                       calibrated["ceiling"], copy, copy_calibration)
        estimates.append(memorised_estimate(scores, calibration, ref.content_percentile, ref.boot, ceiling))
        flags.append(is_memorised(scores, privacy_threshold(calibration, ref.content_percentile), ceiling))
        if model is ref:
            per_sample["content_pmax"] = pmax
            per_sample["content_nearest"] = [ref.train_ids[i] for i in nearest]
            if copy is not None:
                per_sample["content_copy_score"] = copy
            per_sample["content_memorised"] = flags[-1]
    if len(flags) > 1:
        per_sample["content_memorised_models"] = np.mean(flags, axis=0)
    estimate = pooled(estimates, ref.boot, (0.0, 100.0))
    low, high = estimate.interval(ref.boot)
    return ({"content_memorised_pct": estimate.value, "content_memorised_pct_low": low,
             "content_memorised_pct_high": high, "content_tau": stats["content"]["tau"]}, estimates)
