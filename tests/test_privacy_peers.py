"""The peers' privacy tests: hand-computed toy cases, parity with independent reimplementations on random data
(scikit-learn's nearest neighbours, k-means, kernel density and ROC AUC; scipy's Mann-Whitney U), and bad input
answered with one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu
from sklearn.cluster import KMeans
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KernelDensity, NearestNeighbors

from harness.components import RowFeatures
from harness.metrics.intervals import Bootstrap
from harness.metrics.neighbours import nearest, nearest_both_ways, nearest_in_cell
from harness.pipeline.row_metrics import measure
from harness.pipeline.stages import Chosen
from harness_plugins import privacy_peers as peers
from harness_plugins import privacy_peers_stats as stats

BOOT = Bootstrap(resamples=300)
PLUGINS = {"dcr": peers.CloserThanHeldOut, "nndr": peers.RatioBelowHeldOut, "dcr-median": peers.MedianDistance,
           "authenticity": peers.Authenticity, "alpha-precision": peers.AlphaPrecision,
           "beta-recall": peers.BetaRecall, "data-copying": peers.DataCopying,
           "data-copying-cells": peers.CopyingCells, "membership-inference": peers.MembershipInference}


def cloud(n: int, dim: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n, dim)) * scale)


def chosen(name: str, **config) -> Chosen:
    factory = PLUGINS[name]
    return Chosen(name, factory, "1", factory.Config(**config))


def cells_of(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor, **config) -> dict[str, dict]:
    every = [chosen(name, **(config if name.startswith("data-copying") else {})) for name in PLUGINS]
    return measure(every, RowFeatures(samples, train, test, space="reid", boot=BOOT))


# --- hand-computed toy cases ------------------------------------------------------------------------------------

def test_a_toy_line_by_hand():
    """Training videos at 0, 1 and 3 on a line; samples at 0.2, 2.5 and 10. Nearest distances 0.2, 0.5, 7 and
    second-nearest 0.8, 1.5, 9; the training videos' own nearest distances are 1, 1 and 2, so only the sample at
    10 (7 > 2) is authentic."""
    train = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    samples = torch.tensor([[0.2], [2.5], [10.0]], dtype=torch.float64)
    closest = stats.closest_records(samples, train)
    np.testing.assert_allclose(closest.d1, [0.2, 0.5, 7.0])
    np.testing.assert_allclose(closest.d2, [0.8, 1.5, 9.0])
    np.testing.assert_allclose(stats.ratio(closest.d1, closest.d2), [0.25, 1 / 3, 7 / 9])
    assert stats.authentic(closest, stats.own_neighbour(train)).tolist() == [False, False, True]
    # each training video's nearest sample: 0 -> 0.2, 1 -> 0.2, 3 -> 2.5
    assert closest.back_index.tolist() == [0, 0, 1]


def test_a_toy_mann_whitney_z_by_hand():
    """Held-out distances 1 and 2, sample distances 0.5, 1.5 and 3: U = 0 + 1 + 2 = 3 pairs where the sample is
    farther; under the null U has mean 3 * 2 / 2 - 0.5 = 2.5 and variance 3 * 2 * 6 / 12 = 3."""
    u = stats.u_statistic(torch.tensor([[0.5, 1.5, 3.0]]), torch.tensor([[1.0, 2.0]]))
    assert float(u[0]) == 3.0
    z = stats.z_score(u, torch.tensor(3.0), torch.tensor(2.0))
    assert float(z[0]) == pytest.approx(0.5 / np.sqrt(3.0))


def test_ties_count_half():
    assert float(stats.u_statistic(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0]]))[0]) == 1 + 2


def test_integrated_curves_of_the_diagonal_and_of_nothing():
    """Alaa et al.'s Δ: a curve on the diagonal scores 1; a curve at 0 scores 1 - 2 x the diagonal's area as
    their code sums it over 30 levels (1 - 2 x 15 / 29)."""
    assert stats._integrated(stats.LEVELS) == pytest.approx(1.0)
    assert stats._integrated(np.zeros(30)) == pytest.approx(1 - 30 / 29)


# --- parity with independent reimplementations ------------------------------------------------------------------

def test_nearest_neighbours_match_scikit_learn():
    query, ref = cloud(300, 7, 0), cloud(120, 7, 1)
    dist, index = nearest(query, ref, 3, block_bytes=4096)
    want_dist, want_index = NearestNeighbors(n_neighbors=3).fit(ref.numpy()).kneighbors(query.numpy())
    np.testing.assert_allclose(dist.numpy(), want_dist, rtol=1e-10)
    assert (index.numpy() == want_index).all()
    _, _, back, back_index = nearest_both_ways(query, ref, 2, block_bytes=4096)
    want_back, want_back_index = NearestNeighbors(n_neighbors=1).fit(query.numpy()).kneighbors(ref.numpy())
    np.testing.assert_allclose(back.numpy(), want_back[:, 0], rtol=1e-10)
    assert (back_index.numpy() == want_back_index[:, 0]).all()
    own, _ = nearest(ref, ref, 1, skip_self=True)
    np.testing.assert_allclose(own[:, 0].numpy(), NearestNeighbors(n_neighbors=2).fit(ref.numpy()).kneighbors(
        ref.numpy())[0][:, 1], rtol=1e-10)


def test_distance_to_closest_record_matches_a_direct_computation():
    train, test, samples = cloud(150, 5, 0), cloud(200, 5, 1), cloud(180, 5, 2, 0.9)
    nn = NearestNeighbors(n_neighbors=2).fit(train.numpy())
    (d, _), (t, _) = nn.kneighbors(samples.numpy()), nn.kneighbors(test.numpy())
    cells = cells_of(samples, train, test)
    assert cells["dcr"]["value"] == pytest.approx(100 * np.mean(d[:, 0] < np.percentile(t[:, 0], 5)))
    assert cells["nndr"]["value"] == pytest.approx(
        100 * np.mean(d[:, 0] / d[:, 1] < np.percentile(t[:, 0] / t[:, 1], 5)))
    assert cells["dcr-median"]["value"] == pytest.approx(np.median(d[:, 0]))
    for key in ("dcr", "nndr", "dcr-median"):
        assert cells[key]["low"] <= cells[key]["value"] <= cells[key]["high"]


def _alaa(real: np.ndarray, synthetic: np.ndarray) -> tuple[float, float, float]:
    """α-precision, β-recall and authenticity written out from the paper's definitions, level by level."""
    alphas = np.linspace(0, 1, 30)
    centre = real.mean(axis=0)
    radii = np.quantile(np.linalg.norm(real - centre, axis=1), alphas)
    precision = [np.mean(np.linalg.norm(synthetic - centre, axis=1) <= r) for r in radii]
    real_nn = NearestNeighbors(n_neighbors=2).fit(real)
    own = real_nn.kneighbors(real)[0][:, 1]
    to_synth, which = NearestNeighbors(n_neighbors=1).fit(synthetic).kneighbors(real)
    closest = np.linalg.norm(synthetic[which[:, 0]] - synthetic.mean(axis=0), axis=1)
    beta_radii = np.quantile(closest, alphas)
    recall = [np.mean((to_synth[:, 0] <= own) & (closest <= r)) for r in beta_radii]
    step = alphas[1] - alphas[0]
    d, i = real_nn.kneighbors(synthetic, n_neighbors=1)
    return (1 - 2 * np.sum(np.abs(np.array(precision) - alphas)) * step,
            1 - 2 * np.sum(np.abs(np.array(recall) - alphas)) * step,
            float(np.mean(own[i[:, 0]] < d[:, 0])))


@pytest.mark.parametrize("scale", [0.8, 1.0, 1.5])
def test_alpha_precision_beta_recall_and_authenticity_match_the_papers_definitions(scale):
    train, samples = cloud(160, 6, 3), cloud(140, 6, 4, scale)
    cells = cells_of(samples, train, cloud(50, 6, 5))
    want = _alaa(train.numpy(), samples.numpy())
    for key, value in zip(("alpha-precision", "beta-recall", "authenticity"), want, strict=True):
        assert cells[key]["value"] == pytest.approx(value, abs=1e-12), key


def _meehan(train: np.ndarray, test: np.ndarray, samples: np.ndarray, k: int, minimum: int) -> tuple[float, list]:
    """C_T written out from the paper: k-means cells of the training set, per cell scipy's Mann-Whitney U of the
    distances to the cell's training points, z-scored, weighted by the test share."""
    km = KMeans(n_clusters=k, n_init=10, random_state=0).fit(train)
    cells = [km.predict(x) for x in (train, test, samples)]
    zs, weights = [], []
    for c in range(k):
        t, p, q = (x[labels == c] for x, labels in zip((train, test, samples), cells, strict=True))
        if len(q) <= minimum or len(p) == 0:
            continue
        nn = NearestNeighbors(n_neighbors=1).fit(t)
        lq, lp = nn.kneighbors(q)[0][:, 0], nn.kneighbors(p)[0][:, 0]
        u = mannwhitneyu(lq, lp).statistic
        m, n = len(q), len(p)
        zs.append((u - (m * n / 2 - 0.5)) / np.sqrt(m * n * (m + n + 1) / 12))
        weights.append(n / len(test))
    return float(np.dot(weights, zs) / np.sum(weights)), zs


@pytest.mark.parametrize("shrink", [0.3, 1.0, 2.0])
def test_data_copying_matches_scipys_mann_whitney_in_scikit_learns_cells(shrink):
    """Samples pulled towards training points (shrink < 1) copy; others do not."""
    train, test = cloud(200, 4, 6), cloud(220, 4, 7)
    samples = train[torch.as_tensor(np.random.default_rng(8).integers(0, 200, 240))] + cloud(240, 4, 9, 0.3 * shrink)
    result = stats.data_copying(samples, train, test, 4, 10, BOOT)
    want, zs = _meehan(train.numpy(), test.numpy(), samples.numpy(), 4, 10)
    assert result.ct.value == pytest.approx(want, abs=1e-9)
    assert result.cells_copying == sum(z < stats.COPYING_Z for z in zs)
    low, high = result.ct.interval(BOOT)
    assert low <= result.ct.value <= high


def test_data_copying_replicates_are_the_statistic_of_resampled_sets():
    """The vectorised resampling (values outside a cell pushed to ±inf) gives, for the first resample, what the
    direct computation gives on the same resampled distances."""
    rng = np.random.default_rng(0)
    dist_samples, dist_test = torch.as_tensor(rng.random(60)), torch.as_tensor(rng.random(50) + 0.1)
    cell_samples, cell_test = torch.as_tensor(rng.integers(0, 3, 60)), torch.as_tensor(rng.integers(0, 3, 50))
    boot = Bootstrap(resamples=5)
    replicates = stats._ct_replicates(dist_samples, cell_samples, dist_test, cell_test, [0, 1, 2], boot)
    draw = boot.rng(13)
    q, p = draw.integers(0, 60, (5, 60))[0], draw.integers(0, 50, (5, 50))[0]
    zs, weights = [], []
    for c in range(3):
        lq = dist_samples[q][cell_samples[q] == c].numpy()
        lp = dist_test[p][cell_test[p] == c].numpy()
        m, n = len(lq), len(lp)
        zs.append((mannwhitneyu(lq, lp).statistic - (m * n / 2 - 0.5)) / np.sqrt(m * n * (m + n + 1) / 12))
        weights.append(n)
    assert replicates[0] == pytest.approx(np.dot(weights, zs) / np.sum(weights), abs=1e-9)


def test_nearest_in_cell_matches_a_per_cell_search():
    query, ref = cloud(80, 3, 0), cloud(60, 3, 1)
    qc, rc = torch.as_tensor(np.arange(80) % 3), torch.as_tensor(np.arange(60) % 3)
    got = nearest_in_cell(query, qc, ref, rc)
    for c in range(3):
        want = NearestNeighbors(n_neighbors=1).fit(ref[rc == c].numpy()).kneighbors(query[qc == c].numpy())[0][:, 0]
        np.testing.assert_allclose(got[qc == c].numpy(), want, rtol=1e-10)


def test_kernel_densities_match_scikit_learn():
    points, queries = cloud(90, 3, 0), cloud(40, 3, 1)
    got = stats._log_density(queries, points, 0.7)
    want = KernelDensity(bandwidth=0.7).fit(points.numpy()).score_samples(queries.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)


def test_membership_auc_matches_scikit_learn():
    members, others = torch.as_tensor(np.random.default_rng(0).normal(0.3, 1, 70)), torch.zeros(0)
    others = torch.as_tensor(np.round(np.random.default_rng(1).normal(0, 1, 90), 1))  # ties included
    estimate = stats.auc_estimate(members, others, BOOT)
    labels = np.r_[np.ones(70), np.zeros(90)]
    assert estimate.value == pytest.approx(roc_auc_score(labels, np.r_[members.numpy(), others.numpy()]))
    low, high = estimate.interval(BOOT)
    assert low <= estimate.value <= high


def test_the_data_copying_papers_moons_toy():
    """Meehan et al. 2020's own toy: a kernel density generator on two moons. Its C_T rises with the bandwidth σ,
    far below zero when the generator all but copies the training points, through zero near the moons' own noise
    (0.1 here; the paper's curve crosses zero at the bandwidth that fits the data), and above zero when it blurs."""
    from sklearn.datasets import make_moons

    train = torch.as_tensor(make_moons(1000, noise=0.1, random_state=0)[0])
    test = torch.as_tensor(make_moons(1000, noise=0.1, random_state=1)[0])
    rng, ct = np.random.default_rng(2), []
    for sigma in (0.005, 0.02, 0.05, 0.1, 0.2):
        generated = train[rng.integers(0, 1000, 2000)] + torch.as_tensor(rng.normal(size=(2000, 2)) * sigma)
        ct.append(stats.data_copying(generated, train, test, 5, 20, Bootstrap(resamples=50)).ct.value)
    assert ct == sorted(ct) and ct[0] < -5 and ct[-1] > 2
    assert ct[1] < 0 < ct[3]


def test_alpha_precision_falls_as_the_samples_move_off_the_real_support():
    """Alaa et al. 2022's toy: real N(0, I), synthetic N(μ, I); Δ α-precision is near 1 at μ = 0 and falls as μ
    grows."""
    real = cloud(2000, 2, 0)
    scores = [stats.alpha_precision(cloud(2000, 2, 1) + shift, real, BOOT).value for shift in (0.0, 0.5, 1.0, 2.0)]
    assert scores[0] > 0.9 and scores == sorted(scores, reverse=True) and scores[-1] < 0.5


# --- what the metrics say about generators whose answer is known ------------------------------------------------

def test_known_generators_on_random_features():
    """Copies are the least private on every column; samples drawn like the held-out videos sit at the values a
    generator that never saw the training videos has by construction; far samples are the most private."""
    train, test = cloud(200, 8, 0), cloud(300, 8, 1)
    copy = train[torch.as_tensor(np.random.default_rng(2).integers(0, 200, 300))]
    rows = {"copy": cells_of(copy, train, test), "fresh": cells_of(cloud(300, 8, 3), train, test),
            "far": cells_of(cloud(300, 8, 4, 5.0), train, test)}
    copy, fresh, far = rows["copy"], rows["fresh"], rows["far"]
    assert copy["dcr"]["value"] == copy["nndr"]["value"] == 100.0
    assert copy["dcr-median"]["value"] == copy["authenticity"]["value"] == 0.0
    assert copy["data-copying"]["high"] < -5 and copy["data-copying-cells"]["value"] == 5
    assert copy["membership-inference"]["low"] > 0.7
    for key, null in (("dcr", 5.0), ("nndr", 5.0), ("data-copying", 0.0), ("membership-inference", 0.5)):
        assert fresh[key]["low"] <= null <= fresh[key]["high"], key
    assert far["dcr"]["value"] == 0 and far["authenticity"]["value"] == 1.0 and far["data-copying"]["low"] > 5


# --- bad input --------------------------------------------------------------------------------------------------

def test_a_row_of_one_sample_gets_a_sentence_in_every_column():
    train, test = cloud(30, 4, 0), cloud(30, 4, 1)
    cells = cells_of(train[:1], train, test)
    for key, cell in cells.items():
        assert cell["value"] is None and cell["reason"].endswith("."), key
        assert "at least 2 samples" in cell["reason"]


def test_fewer_samples_than_the_cells_need_is_one_sentence():
    train, test = cloud(30, 4, 0), cloud(30, 4, 1)
    cells = cells_of(cloud(12, 4, 2), train, test, cells=5, min_cell_samples=20)
    assert cells["data-copying"]["value"] is None and "holds more than 20" in cells["data-copying"]["reason"]
    assert cells["dcr"]["value"] is not None  # the others still run


def test_fewer_distinct_training_videos_than_cells_is_one_sentence():
    train = cloud(3, 4, 0).repeat(10, 1)  # 30 videos, 3 distinct points
    cells = cells_of(cloud(40, 4, 2), train, cloud(30, 4, 1), cells=5, min_cell_samples=2)
    assert "at least 5 distinct training videos" in cells["data-copying"]["reason"]


def test_duplicate_points_give_numbers_not_nan():
    """Duplicated training videos (NNDR's 0 / 0, a zero nearest-neighbour radius) and a collapsed row."""
    train = torch.cat([cloud(20, 4, 0)] * 2)
    collapsed = train[:2].repeat(20, 1)
    cells = cells_of(collapsed, train, cloud(30, 4, 1), cells=2, min_cell_samples=2)
    for key, cell in cells.items():
        assert cell["reason"] is not None or np.isfinite(cell["value"]), key
    assert cells["nndr"]["value"] == 100.0 and cells["authenticity"]["value"] == 0.0


def test_held_out_videos_all_alike_leave_the_attack_a_sentence():
    cells = cells_of(cloud(40, 4, 2), cloud(30, 4, 0), torch.ones(10, 4, dtype=torch.float64))
    assert "reference videos are one point" in cells["membership-inference"]["reason"]


def test_a_metric_returning_nan_without_a_reason_gets_one():
    class Broken(peers.PeerMetric):
        """Always NaN."""

        label = "broken"

        def compute(self, features):
            return float("nan")

    cells = measure([Chosen("broken", Broken, "1", Broken.Config())],
                    RowFeatures(cloud(5, 2, 0), cloud(5, 2, 1), cloud(5, 2, 2), space="reid"))
    assert cells["broken"] == {"value": None, "low": None, "high": None,
                               "reason": "metric 'broken' gave nan without saying why."}


# --- the controls of a whole run --------------------------------------------------------------------------------

PRIVACY = {"dcr": "↓", "nndr": "↓", "dcr-median": "↑", "authenticity": "↑", "data-copying": "↑",
           "data-copying-cells": "↓", "membership-inference": "↓"}


def cell(row: dict, key: str) -> dict:
    return row["extra_metrics"][key]


def value(row: dict, key: str) -> float:
    return cell(row, key)["value"]


def copy_is_the_least_private(rows: dict[str, dict], space: str, keys: dict[str, str] = PRIVACY) -> None:
    """On every privacy column, `copy` is at least as exposed as every other row or inside its interval (C_T is a
    z-score: 300 samples collapsed on 5 training videos fill fewer cells more densely than 300 copies, and reach
    the same z), and strictly more exposed than the rows that never saw the training videos."""
    prefix = "" if space == "reid" else f"{space}/"
    for name, direction in keys.items():
        key = prefix + name
        sign = 1 if direction == "↓" else -1  # larger sign * value = less private
        exposed = sign * value(rows["copy"], key)
        for other, row in rows.items():
            low, high = cell(row, key).get("low"), cell(row, key).get("high")
            tied = low is not None and low <= value(rows["copy"], key) <= high
            assert exposed >= sign * value(row, key) or tied, (key, other)
        for other in ("holdout", "phantom-fresh", "noise"):
            if name != "data-copying-cells":  # no cell copies in either: 0 = 0
                assert exposed > sign * value(rows[other], key), (key, other)


@pytest.mark.parametrize("space", ["reid", "clip"])
def test_the_tiny_runs_controls_on_the_peers_tests(tiny_run, space):
    """Copies are the least private row on every column; noise is far from the training videos (its median
    distance's interval above the held-out videos', C_T positive); held-out videos sit near the real test videos'
    own values. Only relations with a wide margin are held here: 30 samples, models trained on 16 videos (the
    re-ID space's scale varied 2x between runs of the suite on one machine)."""
    rows = {r["generator"]: r for r in tiny_run["results"]["rows"]}
    prefix = "" if space == "reid" else f"{space}/"
    keys = dict(PRIVACY)
    if space == "reid":  # 16 members: the re-ID space's membership AUC of copies sits within 0.1 of the others'
        keys.pop("membership-inference")
    copy_is_the_least_private(rows, space, keys)
    assert value(rows["copy"], prefix + "dcr") == 100.0 and value(rows["copy"], prefix + "authenticity") == 0.0
    noise, held_out = rows["noise"], rows["holdout"]  # aggregates with a wide margin, not single samples
    assert cell(noise, prefix + "dcr-median")["low"] > cell(held_out, prefix + "dcr-median")["high"]
    assert cell(noise, prefix + "data-copying")["low"] > 0
    if space == "clip":
        assert cell(rows["copy"], prefix + "membership-inference")["low"] > 0.6
        declared = {m["key"]: m for m in tiny_run["results"]["metrics"]}
        for name in ("dcr-median", "authenticity"):  # the held-out row's interval meets the real test videos'
            ref, held_out = declared[prefix + name]["reference"], cell(rows["holdout"], prefix + name)
            assert held_out["low"] <= ref["high"] and ref["low"] <= held_out["high"], name


def test_the_published_phantom_tables_controls_on_the_peers_tests():
    """The published default benchmark, as a reader sees it: copy the least private row on every column of both
    spaces; the held-out row at the value a generator that never saw the training videos has (inside its interval
    where that value holds by construction, intervals meeting where it is measured); collapse between copy and
    the held-out row on the columns that see it (README, "The peers' privacy tests")."""
    table = json.loads((Path(__file__).parents[1] / "leaderboard" / "phantom" / "leaderboard.json").read_text())
    rows = {r["generator"]: r for r in table["rows"] if r["benchmark_name"] == "phantom"}
    [run] = [r for r in table["runs"] if r["run"].startswith("phantom-") and not r["run"].startswith("phantom-paper")]
    references = run["references"]
    between = {"reid": ("dcr", "nndr", "dcr-median", "data-copying-cells"),
               "clip": ("dcr", "nndr", "data-copying", "data-copying-cells")}
    for space in ("reid", "clip"):
        prefix = "" if space == "reid" else f"{space}/"
        copy_is_the_least_private(rows, space)
        for name in PRIVACY:
            key, held_out = prefix + name, cell(rows["holdout"], prefix + name)
            ref = references[key]
            if ref["source"] == "by construction":
                assert held_out["low"] <= ref["value"] <= held_out["high"], key
            elif ref.get("low") is not None:
                assert held_out["low"] <= ref["high"] and ref["low"] <= held_out["high"], key
        for name in between[space]:
            sign = 1 if PRIVACY[name] == "↓" else -1
            low, high = sorted(sign * value(rows[r], prefix + name) for r in ("copy", "holdout"))
            assert low <= sign * value(rows["collapse"], prefix + name) <= high, prefix + name
