"""The ef-regression task on real phantom latents: it learns EF, reports intervals, and loads weights safely."""

import json

import numpy as np
import pytest
import torch

from harness.cache import ArtifactCache
from harness.context import RunContext
from harness.data import LatentSet
from harness.errors import UserError
from harness_plugins.ef import EFRegression, LatentCNN


def _split(run: dict, stage: str) -> LatentSet:
    stages = json.loads((run["out"] / "manifest.json").read_text())["stages"]
    key = next(s["key"] for s in stages if s["stage"] == stage)
    return LatentSet.load(ArtifactCache(run["cache"]).path(stage, key))


def test_latent_regressor_learns_and_reports_intervals(tiny_run, tmp_path):
    train, val, test = (_split(tiny_run, f"encode-{s}") for s in ("train", "val", "test"))
    ctx = RunContext(torch.device("cpu"), 0, ArtifactCache(tmp_path), show_progress=False)
    task = EFRegression(EFRegression.Config(epochs=15, batch_size=8, bootstrap_resamples=500))
    task.fit(val, train, ctx)  # the tiny spec has more val (30) than train (16) videos: train on val
    out = task.evaluate(test, ctx)
    assert out["interval"] == "5th-95th percentile of 500 bootstrap resamples"
    assert out["mae_low"] <= out["mae"] <= out["mae_high"] and out["n"] == len(test)
    constant = np.abs(test.table["ef"] - val.table["ef"].mean()).mean()
    assert task.report["best_epoch"] >= 1 and np.isfinite(out["r2"])
    assert task.save_state(tmp_path)
    again = EFRegression(task.config)
    again.load_state(tmp_path)
    np.testing.assert_allclose(again.predict(test, ctx), task.predict(test, ctx), atol=1e-5)
    assert out["mae"] < 1.5 * constant  # not worse than guessing the mean by much after 15 CPU epochs


def test_weights_that_do_not_fit_are_one_sentence(tmp_path):
    from harness.weights import load_state_dict

    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in LatentCNN(4).state_dict().items()}}, path)
    assert set(load_state_dict(path, LatentCNN(4), "ef")) == set(LatentCNN(4).state_dict())  # EchoNet's layout
    with pytest.raises(UserError, match="does not match the configured model .*; check `model`"):
        load_state_dict(path, LatentCNN(1), "ef", "; check `model`")


def test_pixel_model_trains_on_decoded_clips(tmp_path):
    """r2plus1d on pixels decoded by the run's encoder: EchoNet's clip sampling, one prediction per video."""
    import pandas as pd

    from harness_plugins.encoders import VAE

    ctx = RunContext(torch.device("cpu"), 0, ArtifactCache(tmp_path), show_progress=False)
    vae = VAE()
    vae.model = vae._build().eval()
    ctx = ctx.using(encoder=lambda: vae)
    table = pd.DataFrame({"video_id": list("abcd"), "patient_id": "", "ef": [30.0, 45.0, 60.0, 75.0],
                          "split": "train", "fps": 32.0, "source_file": ""})
    clips = LatentSet(np.random.default_rng(0).standard_normal((4, 6, 4, 14, 14)).astype(np.float16), table)
    task = EFRegression(EFRegression.Config(model="r2plus1d", epochs=1, batch_size=2, frames=4, period=2,
                                            bootstrap_resamples=10))
    task.fit(clips, clips, ctx)
    assert task.net.fc.bias.shape == (1,) and task.report["epochs"] == 1
    predictions = task.predict(clips, ctx)
    assert predictions.shape == (4,) and np.isfinite(predictions).all()
    assert task.evaluate(clips, ctx, predictions)["n"] == 4
