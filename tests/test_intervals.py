"""Intervals cover at their nominal level on simulated draws whose true value is known."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from harness.metrics.fidelity import frechet_distance
from harness.metrics.intervals import (
    Bootstrap,
    Estimate,
    _batched_frechet,
    agree,
    frechet_interval,
    memorised_estimate,
    outside_estimate,
    pooled,
    recall_estimate,
)
from harness.metrics.privacy import expected_distinct

TAU_TRUE = stats.norm.ppf(0.95)  # real P_max ~ N(0, 1): the 95th percentile of the population


def _memorised_draw(rng, n_calibration: int, n_samples: int, copied: float):
    """Real test P_max, and samples of which a share `copied` are copies scoring far above any real video."""
    calibration = rng.standard_normal(n_calibration)
    copies = rng.random(n_samples) < copied
    samples = np.where(copies, rng.normal(4.0, 0.3, n_samples), rng.standard_normal(n_samples))
    truth = 100 * (copied * stats.norm.sf(TAU_TRUE, 4.0, 0.3) + (1 - copied) * 0.05)
    return calibration, samples, truth


@pytest.mark.parametrize(("n_calibration", "copied"), [(60, 0.0), (60, 0.5), (300, 0.05)])
def test_memorised_interval_covers_the_known_share(n_calibration, copied):
    rng, hits = np.random.default_rng(7), 0
    for rep in range(200):
        calibration, samples, truth = _memorised_draw(rng, n_calibration, 200, copied)
        boot = Bootstrap(resamples=400, seed=rep)
        low, high = memorised_estimate(samples, calibration, 95.0, boot).interval(boot)
        hits += low <= truth <= high
    assert hits / 200 >= 0.87  # nominal 0.95 (0.90-0.955 on these draws); 200 simulated runs


def test_memorised_interval_needs_the_uncertainty_of_tau():
    """With 60 calibration videos, an interval that holds τ fixed covers far too rarely: τ's own spread matters."""
    rng, joint, fixed = np.random.default_rng(3), 0, 0
    for rep in range(200):
        boot = Bootstrap(resamples=400, seed=rep)
        calibration, samples, truth = _memorised_draw(rng, 60, 200, 0.0)
        low, high = memorised_estimate(samples, calibration, 95.0, boot).interval(boot)
        joint += low <= truth <= high
        tau = np.percentile(calibration, 95.0)
        draws = (samples[boot.rng(9).integers(0, 200, (400, 200))] > tau).mean(axis=1)
        low, high = boot.interval(100 * draws)
        fixed += low <= truth <= high
    assert joint / 200 >= 0.87 and fixed / 200 < 0.8


@pytest.mark.parametrize(("n_train", "n", "alpha"), [(200, 200, 1.0), (200, 200, 0.2), (200, 60, 1.0),
                                                      (1000, 300, 0.5)])
def test_recall_interval_covers_the_expected_recall(n_train, n, alpha):
    """A generator drawing nearest training videos from a Dirichlet distribution: the interval covers the recall
    expected at this sample count, 1 - sum (1 - p_i)^n over min(N_train, n)."""
    rng, hits = np.random.default_rng(11), 0
    p = rng.dirichlet(np.full(n_train, alpha))
    expected = (1 - (1 - p) ** n).sum() / min(n_train, n)
    for rep in range(150):
        boot = Bootstrap(resamples=400, seed=rep)
        low, high = recall_estimate(rng.choice(n_train, n, p=p), n_train, boot).interval(boot)
        hits += low <= expected <= high
    assert hits / 150 >= 0.86  # nominal 0.95 (0.91-0.96 on these draws)


def test_expected_distinct_rarefies_exactly_and_extrapolates():
    nearest = np.array([0, 0, 1])
    # subsets of two: {0, 0} -> 1, {0, 1} -> 2 (twice)
    assert expected_distinct(nearest, 2) == pytest.approx(5 / 3)
    assert expected_distinct(nearest, 3) == 2
    rng = np.random.default_rng(0)
    many = rng.integers(0, 30, 12)
    subsets = [len(set(c)) for c in itertools.combinations(many.tolist(), 4)]
    assert expected_distinct(many, 4) == pytest.approx(np.mean(subsets))
    p = rng.dirichlet(np.ones(200))
    drawn = rng.choice(200, 150, p=p)
    assert expected_distinct(drawn, 300) > len(np.unique(drawn))  # more queries find more videos
    assert expected_distinct(drawn, 300) == pytest.approx((1 - (1 - p) ** 300).sum(), rel=0.15)


def test_frechet_interval_covers_the_estimate_expected_at_this_size():
    """The interval is the sampling spread of the estimate at these sizes (its bias is the estimator's own)."""
    rng, dim, n = np.random.default_rng(5), 8, 150
    shift = np.full(dim, 0.15)

    def draw():
        return rng.standard_normal((n, dim)), rng.standard_normal((n, dim)) + shift

    expected = np.mean([frechet_distance(*draw()) for _ in range(400)])
    hits = 0
    for rep in range(100):
        real, fake = draw()
        observed = frechet_distance(real, fake)
        low, high = frechet_interval(real, fake, observed, Bootstrap(resamples=300, seed=rep))
        assert low <= observed <= high
        hits += low <= expected <= high
    assert hits / 100 >= 0.88


@pytest.mark.parametrize("n_real, n_fake, distinct", [(30, 30, 30), (200, 60, 60), (300, 250, 250), (300, 250, 5)])
def test_batched_frechet_equals_scipy_at_every_shape(n_real, n_fake, distinct):
    """The resamples' Fréchet distance (in float32 inputs) equals scipy's sqrtm in float64: with fewer videos than
    dimensions, with more, and with a generator's set of a few repeated videos (a singular covariance)."""
    rng = np.random.default_rng(n_real + distinct)
    real = rng.standard_normal((2, n_real, 40))
    fake = rng.standard_normal((2, distinct, 40))[:, rng.integers(0, distinct, n_fake)] * 1.2 + 0.1
    ours = _batched_frechet(torch.from_numpy(real).float(), torch.from_numpy(fake).float()).numpy()
    assert ours == pytest.approx([frechet_distance(r, f) for r, f in zip(real, fake, strict=True)], rel=1e-4, abs=1e-4)


def test_chunks_bound_memory_and_cover_every_resample():
    boot = Bootstrap(resamples=1000, chunk_entries=30_000)
    sizes = list(boot.chunks(200))
    assert sum(sizes) == 1000 and max(sizes) * 200 <= 30_000
    calibration, samples = np.random.default_rng(0).standard_normal(60), np.random.default_rng(1).standard_normal(80)
    small = memorised_estimate(samples, calibration, 95.0, boot).interval(boot)
    assert small == memorised_estimate(samples, calibration, 95.0, boot).interval(boot)  # seeded: reproducible


def test_pooling_re_id_models_covers_what_training_another_model_would_change():
    """Models that differ in how strongly they score copies (as models trained on other machines do): one model's
    interval misses the share expected over models far too often; the mean of five, with their spread, covers it."""
    big = np.random.default_rng(123)
    noise = 0.3 * big.standard_normal(2_000_000)
    tau = np.percentile(big.standard_normal(2_000_000) + noise, 95)
    strength = big.normal(1.0, 0.35, 2_000_000) * big.normal(1.8, 0.5, 2_000_000)
    truth = 100 * (0.85 * 0.05 + 0.15 * np.mean(strength + noise[::-1] > tau))
    single = pooled_hits = 0
    for rep in range(200):
        rng, boot = np.random.default_rng(rep), Bootstrap(resamples=400, seed=rep)
        real, fresh, copies = rng.standard_normal(400), rng.standard_normal(170), rng.normal(1.8, 0.5, 30)
        models = [memorised_estimate(np.concatenate([fresh, rng.normal(1.0, 0.35) * copies])
                                     + 0.3 * rng.standard_normal(200),
                                     real + 0.3 * rng.standard_normal(400), 95.0, boot) for _ in range(5)]
        low, high = models[0].interval(boot)
        single += low <= truth <= high
        low, high = pooled(models, boot, (0.0, 100.0)).interval(boot)
        pooled_hits += low <= truth <= high
    assert pooled_hits / 200 >= 0.88 and single / 200 < 0.85  # nominal 0.95: measured 0.97 and 0.71


def test_one_model_pools_to_itself_and_several_to_their_mean():
    boot = Bootstrap(resamples=300)
    rng = np.random.default_rng(2)
    models = [memorised_estimate(rng.standard_normal(100) + shift, rng.standard_normal(200), 95.0, boot)
              for shift in (0.0, 0.5, 1.0)]
    assert pooled(models[:1], boot, (0.0, 100.0)) is models[0]
    mean = pooled(models, boot, (0.0, 100.0))
    assert mean.value == pytest.approx(np.mean([m.value for m in models]))
    assert np.all((mean.replicates >= 0) & (mean.replicates <= 100))
    assert np.all(recall_estimate(np.array([], dtype=int), 10, boot).replicates == 0)


def test_re_id_models_agree_when_their_intervals_share_a_point():
    boot = Bootstrap(resamples=200)
    rng = np.random.default_rng(0)
    around = [Estimate(v, v + rng.normal(0, 1, 200)) for v in (2.0, 3.0, 4.5)]
    assert agree(around, boot)
    apart = [*around, Estimate(19.0, 19.0 + rng.normal(0, 1, 200))]  # one model flags far more samples
    assert not agree(apart, boot)


def test_outside_share_is_two_sided_and_about_the_complement_for_the_reference_itself():
    boot = Bootstrap(resamples=500)
    reference = np.random.default_rng(1).normal(0.95, 0.01, 2000)
    assert outside_estimate(reference, reference, 95.0, boot).value == pytest.approx(5.0, abs=0.1)
    frozen, flickering = np.full(50, 1.0), np.full(50, 0.5)
    for values in (frozen, flickering):
        estimate = outside_estimate(values, reference, 95.0, boot)
        assert estimate.value == 100.0 and estimate.interval(boot)[0] == 100.0
