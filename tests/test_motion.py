"""Motion memorisation on clips whose motion is known: a texture moved along a path."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import gaussian_filter, shift

from harness.metrics.intervals import Bootstrap
from harness.metrics.motion import (
    best_motion_match,
    clip_profile,
    descriptors,
    dynamic_degree,
    frame_lags,
    frame_steps,
    frozen,
    motion_profiles,
    positions,
    smoothed,
    time_bases,
)
from harness.pipeline.decoded import _distinct
from harness.pipeline.motion import MotionReference, decode_precision, motion_metrics
from harness.spec import MotionSpec
from tests.conftest import run_cli, tiny_spec


def texture(seed: int, size: int = 96) -> np.ndarray:
    return gaussian_filter(np.random.default_rng(seed).standard_normal((size, size)), 2.0)


def moving_clip(path: np.ndarray, seed: int, offset=(0.0, 0.0), gain: float = 1.0) -> np.ndarray:
    """`uint8 [T, 64, 64]`: a texture (its look: `seed`, `offset`, `gain`) displaced by `path[t]` (dx, dy) px."""
    base = texture(seed)
    frames = [shift(base, (dy + offset[1], dx + offset[0]), order=3, mode="wrap")[16:80, 16:80] for dx, dy in path]
    return np.clip(128 + 200 * gain * np.stack(frames), 0, 255).astype(np.uint8)


def random_path(seed: int, steps: int = 9) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).uniform(-1.5, 1.5, (steps, 2)), axis=0)


def test_the_profile_measures_the_displacement():
    """A texture translated by (1, -0.5) px per frame: the flow's mean displacement is that translation."""
    path = np.stack([np.arange(6) * 1.0, np.arange(6) * -0.5], axis=1)
    profile = clip_profile(moving_clip(path, seed=1), size=64)
    assert profile.shape == (5, 4)
    assert np.allclose(profile[:, 0], 1.0, atol=0.15) and np.allclose(profile[:, 1], -0.5, atol=0.15)
    assert np.allclose(profile[:, 2], np.hypot(1.0, 0.5), atol=0.2)


def test_the_same_motion_matches_whatever_the_look():
    """Other texture, position and brightness, the same path: the best match among other paths is the source."""
    paths = [random_path(s) for s in range(6)]
    sources = np.stack([moving_clip(p, seed=10 + i) for i, p in enumerate(paths)])
    copies = np.stack([moving_clip(p, seed=50 + i, offset=(3.0, -2.0), gain=0.6) for i, p in enumerate(paths)])
    ref = torch.from_numpy(motion_profiles(sources, size=64))
    scores, nearest = best_motion_match(torch.from_numpy(motion_profiles(copies, size=64)), ref)
    assert (nearest == np.arange(6)).all() and (scores > 0.9).all()
    described = torch.from_numpy(descriptors(ref.numpy()))
    other = (described @ described.T).numpy()[~np.eye(6, dtype=bool)]
    assert scores.min() > other.max()  # a copied motion scores above any two different motions


def test_positions_survive_the_jitter_of_another_frame_rate():
    """A beat drawn at 50 fps, resampled to 32 fps by nearest frames and read as 30 fps at the clip's 25 fps (EchoNet-
    Synthetic's FileList against its containers): its frames sit 1 to 4 source frames apart where the original's sit
    2 apart. Its positions, compared as a replay at another speed, still name the source and score near 1; the step
    profiles of the same clip score lower."""
    t = np.arange(40)
    paths = [np.stack([3 * np.sin(2 * np.pi * t / period + phase), 2 * np.cos(2 * np.pi * t / period)], axis=1)
             for period, phase in [(30, 0.0), (24, 1.0), (36, 2.0), (28, 0.5)]]
    original = np.arange(0, 32, 2)  # the clip's 16 frames: every 2nd frame at 50 fps
    resampled = np.round(np.round(np.arange(16) * 30 / 25) * 50 / 32).astype(int)
    assert set(np.diff(resampled)) >= {1, 3}  # jittered steps
    sources = np.stack([moving_clip(path[original], seed=20 + i) for i, path in enumerate(paths)])
    copy = moving_clip(paths[0][resampled], seed=60, offset=(2.0, 1.0))[None]
    moved, real = positions(motion_profiles(copy, size=64)), positions(motion_profiles(sources, size=64))
    bases = time_bases(16, (0.94, 1.0, 1.07))
    placed, nearest = best_motion_match(torch.from_numpy(moved), torch.from_numpy(real), bases)
    stepped, _ = best_motion_match(torch.from_numpy(motion_profiles(copy[:, ::2], size=64)),
                                   torch.from_numpy(motion_profiles(sources[:, ::2], size=64)))
    assert nearest[0] == 0 and placed[0] > 0.99 and placed[0] > stepped[0]
    # averaged over neighbouring frames, the jitter's half-frame misplacements mostly cancel
    level, nearest = best_motion_match(torch.from_numpy(smoothed(moved)), torch.from_numpy(smoothed(real)), bases)
    assert nearest[0] == 0 and 1 - level[0] < (1 - placed[0]) / 2
    line = positions(np.ones((1, 5, 4)))
    np.testing.assert_allclose(smoothed(line)[0, 1:-1], line[0, 1:-1])  # a steady motion stays where it is
    by_hand = positions(np.array([[[1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 0.5, 0.0]]]))
    np.testing.assert_allclose(by_hand[0], [[0, 0, 0, 0], [1, 2, 3, 4], [2, 1, 3.5, 4]])


def test_steps_starting_at_every_frame_line_up_a_clip_started_one_frame_late():
    """A clip that starts one frame late is half a step of 2 frames out of phase with its source: its steps of 2
    frames match none of the source's at any lag of whole steps, but with a step starting at every frame (from the
    positions of every frame) a lag of one frame lines them up exactly."""
    path = random_path(3, steps=18)
    sources = np.stack([moving_clip(path[:16], seed=30), moving_clip(random_path(4, steps=16), seed=31)])
    late = moving_clip(path[1:17], seed=30)[None]
    stepped, _ = best_motion_match(torch.from_numpy(motion_profiles(late[:, ::2], size=64)),
                                   torch.from_numpy(motion_profiles(sources[:, ::2], size=64)),
                                   time_bases(7, lags=(-1, 0, 1)))
    assert frame_lags((-1, 0, 1), 2) == (-2, -1, 0, 1, 2)
    by_frame = [torch.from_numpy(frame_steps(positions(motion_profiles(clips, size=64)), 2))
                for clips in (late, sources)]
    matched, nearest = best_motion_match(*by_frame, time_bases(14, lags=frame_lags((-1, 0, 1), 2)))
    assert nearest[0] == 0 and matched[0] > 0.999 and matched[0] > stepped[0] + 0.01


def test_a_frozen_clip_has_no_motion_and_is_never_memorised():
    still = np.repeat(moving_clip(np.zeros((1, 2)), seed=3), 5, axis=0)[None]
    moving = moving_clip(random_path(7, steps=5), seed=4)[None]
    profiles = motion_profiles(np.concatenate([still, moving]), size=64)
    assert frozen(profiles).tolist() == [True, False]
    reference = MotionReference(MotionSpec(), "test-to-train", None, stats={  # motion_metrics decodes nothing
        "tau": 0.5, "calibration_scores": np.linspace(0, 0.6, 40), "ceiling": 0.9996,
        "dynamic_threshold": 0.05, "dynamic_degree_real": 0.9})
    reference = MotionReference(reference.spec, reference.calibration, None, torch.from_numpy(profiles[1:]),
                                ("train-0",), reference.stats)
    boot = Bootstrap(200, 95.0, 0)
    metrics, table, scores = motion_metrics(profiles, reference, boot, torch.device("cpu"))
    assert np.isnan(scores[0]) and scores[1] == pytest.approx(1.0, abs=1e-5)
    assert table["motion_memorised"].tolist() == [False, True] and pd.isna(table["motion_nearest"][0])
    assert metrics["motion_memorised_pct"] == 50.0 and "1 of 2 samples are frozen" in metrics["motion_error"]
    assert table["dynamic_degree"].tolist() == [0.0, 1.0]  # the frozen clip never moves, the moving one always
    assert metrics["dynamic_degree"] == 0.5 and metrics["dynamic_degree_gap"] == pytest.approx(0.4)
    assert metrics["dynamic_degree_low"] <= 0.5 <= metrics["dynamic_degree_high"]
    metrics, _, _ = motion_metrics(profiles[:1], reference, boot, torch.device("cpu"))
    assert "motion_memorised_pct" not in metrics and "every sample is frozen" in metrics["motion_error"]


def test_dynamic_degree_is_the_share_of_steps_that_move_more_than_the_threshold():
    magnitudes = np.array([[0.0, 0.1, 0.3, 0.5], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    profiles = np.zeros((3, 4, 4))
    profiles[..., 2] = magnitudes
    assert dynamic_degree(profiles, 0.2).tolist() == [0.5, 1.0, 0.0]


def test_repeated_clips_are_measured_once():
    clips = np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float16)[[0, 1, 0, 2, 1, 3]]
    first, inverse = _distinct(clips)
    assert first.tolist() == [0, 1, 3, 5] and np.array_equal(clips[first][inverse], clips)


def test_clips_too_short_for_the_gap_are_one_sentence_and_the_rest_completes(tiny_run, tmp_path):
    spec = tiny_spec(tmp_path, privacy={"bootstrap_resamples": 1000, "motion": {"frame_gap": 5}}, downstream=None,
                     generators=[{"plugin": "copy"}, {"plugin": "holdout"}])
    out = tmp_path / "run"
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    sentence = results["motion"]["error"]
    assert "clips of 8 frames are too short for privacy.motion.frame_gap 5" in sentence
    for row in results["rows"]:
        assert row["motion_error"] == sentence and row.get("motion_memorised_pct") is None
        assert row["error"] is None and row["memorised_pct"] is not None and row["content_memorised_pct"] is not None
    assert sentence in (out / "leaderboard.md").read_text()


def test_the_decode_precision_is_resolved_before_it_keys_the_stage():
    """An explicit precision is kept; auto becomes the precision this device computes natively, never 'auto'."""
    cpu = torch.device("cpu")
    assert decode_precision(MotionSpec(decode_precision="float32"), cpu) == "float32"
    assert decode_precision(MotionSpec(decode_precision="bfloat16"), cpu) == "bfloat16"
    assert decode_precision(MotionSpec(), cpu) in ("float32", "bfloat16")
