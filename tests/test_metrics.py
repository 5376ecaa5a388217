import os
import subprocess
import sys

import numpy as np
import prdc as prdc_reference
import pytest
import torch

from harness.metrics.fidelity import frechet_distance, prdc
from harness.metrics.pairs import HEADS, max_scores, score_block
from harness.metrics.privacy import appearances, generative_recall, memorised_fraction, privacy_threshold
from tests.conftest import ROOT


def features(n, d=16, seed=0):
    return torch.sigmoid(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


@pytest.mark.parametrize("head", HEADS)
def test_chunked_max_equals_a_per_query_loop(head):
    q, r = features(37, seed=1), features(53, seed=2)
    w = torch.randn(16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    best, arg = max_scores(q, r, head, w, bias=0.25, block_bytes=2_000)  # forces blocks along both axes
    for i in range(len(q)):
        row = score_block(q[i:i + 1], r, head, w, 0.25)[0]
        assert best[i].item() == pytest.approx(row.max().item(), abs=1e-12)
        assert arg[i].item() == int(torch.argmax(row))


def test_reference_formulas_of_each_head():
    a, b = features(1, seed=4), features(1, seed=5)
    diff = (a - b)[0]
    assert score_block(a, b, "l1")[0, 0].item() == pytest.approx(-diff.abs().mean().item())
    assert score_block(a, b, "l2")[0, 0].item() == pytest.approx(-(diff**2).mean().item())
    expected = np.corrcoef(a[0].numpy(), b[0].numpy())[0, 1]
    assert score_block(a, b, "corr")[0, 0].item() == pytest.approx(expected)


def test_an_exact_copy_is_its_own_nearest_neighbour_with_pmax_equal_to_bias():
    train = features(20, seed=6)
    best, arg = max_scores(train[[3, 11]], train, "pred", -torch.ones(16, dtype=torch.float64), bias=1.5)
    assert arg.tolist() == [3, 11] and torch.allclose(best, torch.tensor([1.5, 1.5], dtype=torch.float64))


def test_threshold_memorised_and_recall():
    pmax = np.random.default_rng(0).normal(size=101)
    tau = privacy_threshold(pmax, 95)
    assert tau == np.percentile(pmax, 95)
    assert memorised_fraction(pmax, tau) == pytest.approx(5 / 101)
    assert generative_recall(np.array([0, 0, 2]), n_train=10) == pytest.approx(2 / 3)
    assert generative_recall(np.array([0, 1, 2, 3, 3]), n_train=4) == pytest.approx(4 / 4)
    assert appearances(np.array([0, 0, 2]), 4).tolist() == [2, 0, 1, 0]


@pytest.mark.parametrize("n_real, n_fake, k", [(200, 150, 5), (120, 300, 3)])
def test_prdc_equals_the_reference_package(n_real, n_fake, k):
    rng = np.random.default_rng(n_real)
    real = rng.normal(size=(n_real, 32))
    fake = rng.normal(0.3, 1.1, size=(n_fake, 32))
    ours = prdc(torch.from_numpy(real), torch.from_numpy(fake), k, block_bytes=40_000)
    ref = prdc_reference.compute_prdc(real, fake, k)
    for name in ("precision", "recall", "density", "coverage"):
        assert ours[name] == pytest.approx(float(ref[name]), abs=1e-6)


def test_frechet_distance_of_a_shift():
    x = np.random.default_rng(1).normal(size=(500, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, x + 2.0) == pytest.approx(8 * 4.0, rel=1e-6)


# ---------------------------------------------------------------------------------------------- re-ID quality

def test_auc_equals_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    from harness.metrics.classification import roc_auc

    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding makes many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(roc_auc(labels[labels], scores[labels])) and np.isnan(roc_auc(labels[:0], scores[:0]))


def test_bootstrap_interval_brackets_the_auc_and_matches_a_loop():
    from sklearn.metrics import roc_auc_score

    from harness.metrics.classification import _weighted_auc, bootstrap_auc, roc_auc

    rng = np.random.default_rng(1)
    labels = rng.random(120) < 0.5
    scores = rng.normal(labels * 1.0, 1.0)
    low, high = bootstrap_auc(labels, scores, resamples=2000, seed=0)
    assert low < roc_auc(labels, scores) < high
    draws = [rng.integers(0, 120, 120) for _ in range(5)]
    counts = np.stack([np.bincount(d, minlength=120) for d in draws]).astype(float)
    expected = [roc_auc_score(labels[d], scores[d]) for d in draws]
    np.testing.assert_allclose(_weighted_auc(labels, scores, counts), expected, atol=1e-12)


def test_decision_metrics_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    from harness.metrics.classification import decision_metrics

    rng = np.random.default_rng(2)
    labels = rng.random(200) < 0.5
    logits = rng.normal(labels * 1.5 - 0.5, 1.0)
    said = logits > 0
    got = decision_metrics(labels, logits)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, said))
    assert got["f1"] == pytest.approx(f1_score(labels, said))
    assert got["precision"] == pytest.approx(precision_score(labels, said))
    assert got["recall"] == pytest.approx(recall_score(labels, said))


def test_evaluation_pairs_are_half_positive_and_use_two_frames():
    from harness.metrics.reid import sample_pairs

    pairs = sample_pairs(2000, 16, np.random.default_rng(0))
    same = pairs[:, 4] == 1
    assert 0.45 < same.mean() < 0.55
    assert (pairs[same, 0] == pairs[same, 2]).all() and (pairs[same, 1] != pairs[same, 3]).all()
    assert (pairs[~same, 0] != pairs[~same, 2]).all()
    assert sorted(pairs[:, 0]) == list(range(2000))  # one pair per video


# ---------------------------------------------------------------------------------------------- recall, IRS, tau

def test_recall_on_hand_built_nearest_lists():
    assert generative_recall(np.array([0, 0, 2]), n_train=10) == pytest.approx(2 / 3)
    assert generative_recall(np.array([0, 0, 2]), n_train=2) == pytest.approx(1.0)
    assert generative_recall(np.array([4, 4, 4, 4]), n_train=10) == pytest.approx(1 / 4)
    assert appearances(np.array([0, 0, 2]), 4).tolist() == [2, 0, 1, 0]


@pytest.mark.parametrize("support,draws", [(50, 60), (300, 400), (1000, 3000)])
def test_irs_recovers_a_known_support_size_within_its_interval(support, draws):
    from harness.metrics.privacy import support_size

    hits = 0
    for seed in range(20):
        nearest = np.random.default_rng(seed).integers(0, support, draws)
        estimate, low, high = support_size(nearest)
        assert low <= estimate <= high
        hits += low <= support <= high
    assert hits >= 17  # a 95 % interval covers the truth in most of 20 draws


def test_irs_is_capped_by_the_number_of_training_videos():
    from harness.metrics.privacy import irs_infinity

    assert irs_infinity(np.arange(10), n_train=10) == {"value": 1.0, "low": 1.0, "high": 1.0}


def test_tau_in_both_directions_on_a_toy_case():
    from harness.evaluation import Reference, reference_stats

    train = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    test = torch.tensor([[0.1, 0.0], [0.9, 1.0], [0.5, 0.5]])
    ref = Reference(train, ["a", "b", "c"], test, torch.stack([test, test], dim=1), weight=torch.tensor([-1.0, -1.0]),
                    bias=0.0, percentile=50.0)
    stats = reference_stats(ref)
    # test -> train: best scores -0.1, -0.1, -1.0 ; train -> test: -0.1, -0.1, -0.6
    assert stats["tau_test_to_train"] == pytest.approx(np.percentile([-0.1, -0.1, -1.0], 50))
    assert stats["tau_train_to_test"] == pytest.approx(np.percentile([-0.1, -0.1, -0.6], 50))
    assert stats["reference_recall"] == pytest.approx(2 / 3)  # nearest: a, b, a (a three-way tie takes the first)


# ---------------------------------------------------------------------------------------------- consistency

def test_consistency_is_one_for_constant_features_and_low_for_the_swap():
    from harness.metrics.consistency import consistency_curve

    rng = torch.Generator().manual_seed(0)
    per_video = torch.rand(6, 1, 32, generator=rng)
    constant = per_video.expand(6, 10, 32)
    curve = consistency_curve(constant, "corr")
    assert torch.allclose(curve, torch.ones(9), atol=1e-6)
    assert consistency_curve(constant, "corr", swap=True).mean() < 0.5
    noise = torch.randn(200, 5, 64, generator=rng)
    assert abs(float(consistency_curve(noise, "corr").mean())) < 0.05


def _pred_case(nq: int, nr: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, r = features(nq, d=dim, seed=6).float(), features(nr, d=dim, seed=7).float()
    return q, r, torch.randn(dim, generator=torch.Generator().manual_seed(8))


def pred_kernel_outputs(kernel, nq: int, nr: int, dim: int) -> dict[str, torch.Tensor]:
    """A compiled `pred` kernel's answers to three cases `check_pred_kernel` knows the truth of (sizes that leave
    partial tiles of queries and references: 4 on the CPU, 64 on the GPU)."""
    q, r, w = _pred_case(nq, nr, dim)
    out = dict(zip(("best", "arg"), kernel(q, r, w, bias=-0.5), strict=True))
    r[5] = r[70] = q[3]  # exact copies, the second in a later reference tile
    out.update(zip(("copy_best", "copy_arg"), kernel(q, r, -w.abs(), bias=0.25), strict=True))
    out["empty_best"] = kernel(q, r[:0], w, bias=0.0)[0]
    return out


def check_pred_kernel(out: dict[str, torch.Tensor], nq: int, nr: int, dim: int) -> None:
    q, r, w = _pred_case(nq, nr, dim)
    loop = torch.stack([(qi - r).abs() @ w - 0.5 for qi in q])
    torch.testing.assert_close(out["best"], loop.max(dim=1).values, atol=1e-5, rtol=0)
    assert torch.equal(out["arg"], loop.argmax(dim=1))
    # an exact copy is found, at the head's bias when every weight is negative; a later copy does not replace it
    assert out["copy_arg"][3] == 5 and out["copy_best"][3].item() == pytest.approx(0.25, abs=1e-5)
    assert torch.isinf(out["empty_best"]).all() and out["empty_best"].shape == (nq,)


def test_compiled_cpu_pred_kernel_equals_a_per_query_loop():
    from harness.metrics.pairs_kernels import pred_max_cpu

    check_pred_kernel(pred_kernel_outputs(pred_max_cpu, 203, 517, 128), 203, 517, 128)


def test_triton_pred_kernel_equals_a_per_query_loop(tmp_path):
    """The GPU kernel's code, run by Triton's interpreter on the CPU (it must be chosen before triton is imported,
    hence a fresh interpreter), so that machines without a GPU check it too."""
    pytest.importorskip("triton")
    script = ("import sys, torch; from tests.test_metrics import pred_kernel_outputs; "
              "from harness.metrics.pairs_kernels import pred_max_gpu; "
              "torch.save(pred_kernel_outputs(pred_max_gpu, 70, 140, 32), sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.pt")], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    check_pred_kernel(torch.load(tmp_path / "out.pt", weights_only=True), 70, 140, 32)


def test_a_triton_kernel_that_fails_falls_back_to_torch_once(monkeypatch, caplog):
    from types import SimpleNamespace

    from harness.metrics import pairs

    calls = []

    def broken(*args):
        calls.append(args)
        raise RuntimeError("no compiler here\nmore detail")

    on_gpu = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)  # what the choice reads of a query
    choose = pairs.pred_kernel
    monkeypatch.setattr(pairs, "_triton_failed", [])
    monkeypatch.setattr(pairs, "triton_available", lambda: True)
    monkeypatch.setattr(pairs, "pred_max_gpu", broken)
    monkeypatch.setattr(pairs, "pred_kernel", lambda query, n: choose(on_gpu, n))  # decide as for a GPU tensor
    assert choose(on_gpu, 10**7) == "triton"
    q, r = features(1100, d=8, seed=1).float(), features(1000, d=8, seed=2).float()
    w = torch.randn(8, generator=torch.Generator().manual_seed(3))
    best, _ = pairs.max_scores(q, r, "pred", w, 0.1)
    best_again, _ = pairs.max_scores(q, r, "pred", w, 0.1)
    assert choose(on_gpu, 10**7) == "torch" and len(calls) == 1
    assert "the Triton pred kernel failed (RuntimeError: no compiler here)" in caplog.text
    loop = torch.stack([(qi - r).abs() @ w + 0.1 for qi in q])
    torch.testing.assert_close(best, loop.max(dim=1).values)
    torch.testing.assert_close(best_again, best)


def test_regression_metrics_equal_scikit_learn_and_bracket_the_value():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    from harness.metrics.regression import regression_metrics

    rng = np.random.default_rng(3)
    y = rng.uniform(20, 80, 150)
    p = y + rng.normal(0, 6, 150)
    out = regression_metrics(y, p, resamples=2000)
    assert out["r2"] == pytest.approx(r2_score(y, p))
    assert out["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert out["rmse"] == pytest.approx(mean_squared_error(y, p) ** 0.5)
    for k in ("r2", "mae", "rmse"):
        assert out[f"{k}_low"] < out[k] < out[f"{k}_high"]
    assert out["interval"] == "5th-95th percentile of 2000 bootstrap resamples"


def test_best_frame_match_is_the_best_pair_of_frames_by_brute_force():
    """Content memorisation's score: the best head score over every frame of a query and every frame of every
    reference video, and the video that frame belongs to."""
    from harness.metrics.pairs import best_frame_match

    g = torch.Generator().manual_seed(0)
    query, ref = torch.randn(5, 3, 8, generator=g), torch.randn(7, 4, 8, generator=g)
    weight = -torch.rand(8, generator=g)
    best, video = best_frame_match(query, ref, "pred", weight, 0.3)
    for i in range(5):
        scores = torch.stack([score_block(query[i], ref[j], "pred", weight, 0.3).max() for j in range(7)])
        assert best[i] == pytest.approx(float(scores.max()), abs=1e-5)
        assert video[i] == int(scores.argmax())
