import numpy as np
import prdc as prdc_reference
import pytest
import torch

from harness.metrics.fidelity import frechet_distance, prdc
from harness.metrics.pairs import HEADS, max_scores, score_block
from harness.metrics.privacy import appearances, generative_recall, memorised_fraction, privacy_threshold


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
