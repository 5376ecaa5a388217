"""The pixel copy test: its kernel against a pair-by-pair reimplementation, what it finds, and the joint threshold."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.metrics.copy import alignments, best_copy_match, small_frames
from harness.metrics.privacy import joint_levels


def _smooth(rng: np.random.Generator, n: int, size: int = 28) -> torch.Tensor:
    """Random images with structure at a few pixels (as decoded anatomy at this size)."""
    noise = torch.from_numpy(rng.standard_normal((n, 1, size + 8, size + 8)).astype(np.float32))
    kernel = torch.ones(1, 1, 5, 5) / 25
    return F.conv2d(noise, kernel)[:, 0, 2:-2, 2:-2] * 40 + 100


def _naive(query: torch.Tensor, ref: torch.Tensor, maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Masked normalised cross-correlation, one query, alignment and reference at a time, in float64."""
    size = query.shape[-1]
    best, index = np.full(len(query), -np.inf), np.zeros(len(query), int)
    for v in range(len(maps)):
        grid = F.affine_grid(maps[v:v + 1], [1, 1, size, size], align_corners=False)
        mask = F.grid_sample(torch.ones(1, 1, size, size), grid, align_corners=False)[0, 0].numpy().ravel() > 0.999
        for i, q in enumerate(query):
            moved = F.grid_sample(q[None, None], grid, align_corners=False)[0, 0].numpy().ravel()[mask]
            for j, r in enumerate(ref):
                a, b = moved.astype(np.float64), r.numpy().ravel()[mask].astype(np.float64)
                a, b = a - a.mean(), b - b.mean()
                score = 0.0 if np.linalg.norm(b) < 1e-9 else a @ b / max(np.linalg.norm(a), 1e-6) / np.linalg.norm(b)
                if score > best[i]:
                    best[i], index[i] = score, j
    return best, index


def test_kernel_matches_pair_by_pair_reimplementation():
    rng = np.random.default_rng(0)
    query, ref = _smooth(rng, 5), _smooth(rng, 7)
    maps = alignments(28, 1.0, 0.5, (0.95, 1.0, 1.1))
    scores, index = best_copy_match(query, ref, maps)
    expected, expected_index = _naive(query, ref, maps)
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    np.testing.assert_array_equal(index, expected_index)


def test_blocks_do_not_change_the_answer(monkeypatch):
    rng = np.random.default_rng(1)
    query, ref = _smooth(rng, 9), _smooth(rng, 13)
    maps = alignments(28, 1.0, 1.0, (1.0,))
    whole = best_copy_match(query, ref, maps)
    monkeypatch.setattr("harness.metrics.copy.BLOCK", len(maps) * 2)  # 2 references and 1 query at a time
    small = best_copy_match(query, ref, maps)
    np.testing.assert_allclose(whole[0], small[0], atol=1e-5)
    np.testing.assert_array_equal(whole[1], small[1])


def test_shifted_zoomed_and_rescaled_copies_are_found():
    rng = np.random.default_rng(2)
    ref = _smooth(rng, 20, 40)[:, 6:-6, 6:-6]  # 28 px windows of larger images, so a shift brings in real content
    base = _smooth(rng, 20, 40)
    base[:4, 6:-6, 6:-6] = ref[:4]
    shifted = base[:4, 5:-7, 6:-6]  # the window one pixel up: the copy moved by one pixel
    zoomed = F.interpolate(ref[4:6, None], scale_factor=1 / 0.95, mode="bilinear", align_corners=False)[:, 0]
    zoomed = zoomed[:, 1:29, 1:29]  # zoomed by 1/0.95 about (nearly) the centre
    brighter = ref[6:8] * 1.1 + 5  # gain and offset
    query = torch.cat([shifted, zoomed, brighter, _smooth(rng, 4)])
    scores, index = best_copy_match(query, ref, alignments(28, 1.5, 0.5, (0.9, 0.95, 1.0, 1.05, 1.1)))
    assert (scores[:8] > 0.95).all()
    np.testing.assert_array_equal(index[:8], [0, 1, 2, 3, 4, 5, 6, 7])
    assert scores[8:].max() < scores[:8].min() - 0.1  # unrelated images score well below every copy


def test_a_frame_without_variation_scores_zero_and_empty_inputs_score_nothing():
    flat = torch.full((2, 28, 28), 50.0)
    rng = np.random.default_rng(3)
    scores, _ = best_copy_match(flat, _smooth(rng, 3), alignments(28, 0.0, 1.0, (1.0,)))
    np.testing.assert_allclose(scores, 0.0)
    assert best_copy_match(torch.zeros(0, 28, 28), _smooth(rng, 3), alignments(28, 0.0, 1.0, (1.0,)))[0].size == 0


def test_small_frames_area_resizes_any_leading_shape():
    frames = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    small = small_frames(frames, 2)
    assert small.shape == (2, 3, 2, 2) and small.dtype == torch.float32
    assert small[0, 0, 0, 0] == pytest.approx(frames[0, 0, :2, :2].float().mean())


def test_joint_levels_by_hand():
    calibration_a = np.array([1.0, 2.0, 3.0, 4.0])
    calibration_b = np.array([40.0, 30.0, 20.0, 10.0])  # the same four real videos under the second test
    queries, reference = joint_levels([np.array([2.5, 0.0, 9.0]), np.array([0.0, 35.0, 0.0])],
                                      [calibration_a, calibration_b], [np.inf, 100.0])
    # 2.5 exceeds 2 of the 4 first scores; 35 exceeds 3 of the 4 second scores; 9 exceeds all 4
    np.testing.assert_allclose(queries, [0.5, 0.75, 1.0])
    # video 0: levels 0 and 3/4; video 1: 1/4 and 2/4; video 2: 2/4 and 1/4; video 3: 3/4 and 0
    np.testing.assert_allclose(reference, [0.75, 0.5, 0.5, 0.75])
    at_ceiling, _ = joint_levels([np.array([0.0]), np.array([100.0])], [calibration_a, calibration_b],
                                 [np.inf, 100.0])
    assert at_ceiling[0] == np.inf  # a copy under either test is a copy whatever the threshold


def test_candidate_search_finds_what_the_exhaustive_search_finds_for_copies():
    rng = np.random.default_rng(4)
    ref = _smooth(rng, 60, 40)[:, 6:-6, 6:-6]
    big = _smooth(rng, 6, 40)
    big[:, 6:-6, 6:-6] = ref[:6]
    query = torch.cat([big[:, 5:-7, 7:-5], ref[6:12] * 0.9 + 3, _smooth(rng, 6)])  # shifted, rescaled, unrelated
    maps = alignments(28, 1.5, 0.5, (0.95, 1.0, 1.05))
    coarse = alignments(14, 1.0, 0.5, (0.95, 1.0, 1.05))
    exhaustive = best_copy_match(query, ref, maps)
    searched = best_copy_match(query, ref, maps, coarse, candidates=4)
    np.testing.assert_allclose(searched[0][:12], exhaustive[0][:12], atol=1e-5)
    np.testing.assert_array_equal(searched[1][:12], np.arange(12))
    assert (searched[0] <= exhaustive[0] + 1e-5).all()  # a search over fewer frames never scores higher
    every = best_copy_match(query, ref, maps, coarse, candidates=len(ref))
    np.testing.assert_allclose(every[0], exhaustive[0], atol=1e-6)
