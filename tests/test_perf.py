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


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset, frames, videos", [("phantom", 16, 16), ("echonet-synthetic", 64, 4)])
def test_lvdm_sampling_speed(benchmark, device, preset, frames, videos, tmp_path):
    """Conditioning frame + video, DDIM with the preset's steps; bf16 autocast on a GPU. Untrained weights: the
    cost does not depend on their values."""
    from harness.data import Condition
    from harness_plugins.lvdm import EchoLVDM

    if preset == "echonet-synthetic" and device == "cpu":
        videos = 1  # minutes per video on a CPU
    model = EchoLVDM(EchoLVDM.Config(preset=preset, sample_batch=videos))
    model.window, model.clip_frames, model.fps = min(frames, 64), frames, 32.0
    torch.manual_seed(0)
    model.build(channels=4)
    ctx = RunContext(torch.device(device), 0, ArtifactCache(tmp_path), show_progress=False)
    conditions = [Condition(f"s{i}", i, 50.0) for i in range(videos)]
    out = benchmark.pedantic(model.sample, args=(conditions, ctx), rounds=1, iterations=1, warmup_rounds=1)
    assert len(out) == videos
    benchmark.extra_info.update(videos_per_s=videos / benchmark.stats.stats.mean, frames=frames,
                                steps=model.config.setting("sample_steps"))


@pytest.mark.parametrize("model", ["latent-cnn", "r2plus1d"])
def test_ef_epoch_time_pixel_vs_latent(benchmark, model, tmp_path):
    """One training epoch of each EF model on the same 32 clips of 64 frames: latents as they are, or decoded to
    112x112 pixels (32 frames, period 2). `extra_info.epoch_seconds` is the figure."""
    import numpy as np
    import pandas as pd

    from harness.data import LatentSet
    from harness_plugins.ef import EFRegression
    from harness_plugins.encoders import VAE

    device = torch.device(DEVICES[-1])
    ctx = RunContext(device, 0, ArtifactCache(tmp_path), show_progress=False)
    vae = VAE()
    vae.model = vae._build().eval()  # untrained decoder: decoding costs the same
    ctx = ctx.using(encoder=lambda: vae)
    n = 32
    table = pd.DataFrame({"video_id": [f"v{i}" for i in range(n)], "patient_id": "", "split": "train",
                          "ef": np.linspace(20, 80, n), "fps": 32.0, "source_file": ""})
    clips = LatentSet(np.random.default_rng(0).standard_normal((n, 64, 4, 14, 14)).astype(np.float16), table)
    task = EFRegression(EFRegression.Config(model=model, epochs=2, batch_size=8, bootstrap_resamples=10))
    benchmark.pedantic(task.fit, args=(clips, clips.subset(np.arange(4)), ctx), rounds=1, iterations=1)
    benchmark.extra_info.update(epoch_seconds=task.report["epoch_seconds"], device=str(device), videos=n)
