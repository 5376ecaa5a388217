"""Figures quoted in issues, measured with pytest-benchmark (`tox -e perf`); nothing here asserts a timing."""

import pytest
import torch

from harness.cache import ArtifactCache
from harness.context import RunContext
from harness_plugins.datasets import EchoNetDynamic
from harness_plugins.phantom.writers import build_cohort, write_dynamic

pytestmark = pytest.mark.perf
N_VIDEOS, N_FRAMES = 40, 96


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return tmp_path_factory.mktemp("perf")


def test_phantom_write_speed(benchmark, written):
    videos = build_cohort(0, {"TRAIN": N_VIDEOS}, 0.08)
    benchmark.pedantic(write_dynamic, args=(written, videos, "a4c", N_FRAMES, 50.0, False), rounds=1, iterations=1)
    benchmark.extra_info["videos_per_s"] = N_VIDEOS / benchmark.stats.stats.mean


def test_phantom_load_speed(benchmark, written):
    ctx = RunContext(torch.device("cpu"), 0, ArtifactCache(written / "cache"), show_progress=False)
    dataset = EchoNetDynamic(EchoNetDynamic.Config(root=written, fps=25, clip_length=16))
    videos = benchmark.pedantic(dataset.load, args=("train", ctx), rounds=3, iterations=1)
    assert len(videos) == N_VIDEOS
    benchmark.extra_info["videos_per_s"] = N_VIDEOS / benchmark.stats.stats.mean
