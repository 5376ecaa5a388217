"""Fidelity in a clip feature space: the default extractor's off-manifold training clips, the stage with stub
extractors (good and unusable ones), a local TorchScript file, and the controls of the tiny run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cache import ArtifactCache
from harness.components import ComponentConfig, FeatureExtractor
from harness.context import RunContext
from harness.errors import UserError
from harness.metrics.fidelity import frechet_distance
from harness.pipeline.decoded import Decoding
from harness.pipeline.fidelity import fit_fidelity
from harness.pipeline.row import RowRequest, conditions, run_row
from harness.spec import ConditionSpec
from harness_plugins.video_features import LocalNetwork, VideoContrast, off_manifold
from tests.test_pipeline import BOOT, StubCopy, chosen, real_phases


@pytest.fixture
def ctx(tmp_path):
    return RunContext(torch.device("cpu"), 0, ArtifactCache(tmp_path / "cache"), show_progress=False)


class FrameMeans(FeatureExtractor):
    """Each frame's mean grey level: a fixed space, no fit."""

    class Config(ComponentConfig):
        broken: str = ""  # "nan", "shape" or "constant": the way this stub's features are unusable

    input_shape = (4, 8)

    def features(self, clips, ctx):
        out = torch.from_numpy(np.asarray(clips, np.float32)).mean(dim=(2, 3))
        return {"nan": out * np.nan, "shape": out[:, 0], "constant": torch.zeros_like(out)}.get(
            self.config.broken, out)


def fidelity_of(stages, encoded, ctx, **config):
    decoding = Decoding(encoded.encoder, 2, "float32", clip=(4, 8))
    return fit_fidelity(stages, chosen(FrameMeans, "frame-means", **config), encoded, decoding, 3, BOOT, [], 30, ctx)


def test_a_row_is_measured_against_the_training_clips(ctx):
    stages, data, encoded, ctx = real_phases(ctx)
    fidelity = fidelity_of(stages, encoded, ctx)
    assert fidelity.error is None and fidelity.summary["real"]["video_fd"] >= 0
    asked = conditions(12, encoded.latents["train"].value, ConditionSpec(), ctx)
    row = run_row(stages, RowRequest("copy", chosen(StubCopy), "h", asked, [], BOOT), encoded, None, None, fidelity,
                  None, ctx).row
    assert row["video_fidelity_error"] is None and row["video_precision"] == 1.0
    train = np.asarray(data.videos["train"].value.frames, np.float64).mean(axis=(2, 3))  # the stub's features
    copied = train[[c.seed % len(train) for c in asked]]
    assert row["video_fd"] == pytest.approx(frechet_distance(train, copied), rel=1e-6)


@pytest.mark.parametrize("broken, phrase", [
    ("nan", "returned NaN or infinite features for"),
    ("shape", "returned features of shape [12] for 12 clips; it must return [clips, features]"),
    ("constant", "returned the same features for all"),
])
def test_unusable_features_empty_the_columns_with_one_sentence(ctx, broken, phrase):
    stages, data, encoded, ctx = real_phases(ctx)
    fidelity = fidelity_of(stages, encoded, ctx, broken=broken)
    assert fidelity.error.startswith("feature extractor 'frame-means' ") and phrase in fidelity.error
    asked = conditions(4, encoded.latents["train"].value, ConditionSpec(), ctx)
    row = run_row(stages, RowRequest("copy", chosen(StubCopy), "h", asked, [], BOOT), encoded, None, None, fidelity,
                  None, ctx).row
    assert row["error"] is None and row["video_fidelity_error"] == fidelity.error and "video_fd" not in row


def test_off_manifold_clips_are_unlike_the_real_ones():
    rng = torch.Generator().manual_seed(0)
    clips = torch.linspace(0, 1, 16)[None, :, None, None].expand(64, 16, 8, 8) * torch.rand(64, 1, 8, 8)
    fakes = off_manifold(clips, clips.flip(0), rng)
    assert fakes.shape == clips.shape and 0 <= float(fakes.min()) and float(fakes.max()) <= 1
    assert all((fake != clip).any() for fake, clip in zip(fakes, clips, strict=True))


def test_video_contrast_trains_and_separates_noise_from_real_clips(ctx):
    """Beating discs: noise clips land further from the real clips than any real clip from its nearest other one
    (by 1.4 to 3.6 times over three training seeds)."""
    torch.manual_seed(0)
    grid = torch.linspace(-1, 1, 16)
    beat = torch.sin(torch.linspace(0, 2 * np.pi, 16))
    radius = 0.5 + 0.2 * beat[:, None, None] * torch.rand(24, 1, 1, 1)  # [24, 16, 1, 1]
    disc = ((grid[None, :] ** 2 + grid[:, None] ** 2)[None, None] < radius ** 2).float()
    clips = (disc * 200 + 20).to(torch.uint8).numpy()
    model = VideoContrast(VideoContrast.Config(frames=16, size=16, steps=40, batch_size=8, width=8, features=16))
    model.fit(clips, ctx)
    real = model.features(clips, ctx)
    noise = model.features(np.random.default_rng(0).integers(0, 256, clips.shape, dtype=np.uint8), ctx)
    assert real.shape == (24, 16) and torch.isfinite(real).all()
    torch.testing.assert_close(real.mean(dim=0), torch.zeros(16), atol=1e-4, rtol=0)  # standardised on training
    between = torch.cdist(real, real).fill_diagonal_(float("inf")).min(dim=1).values
    assert torch.cdist(noise, real).min(dim=1).values.median() > between.max()
    assert model.report["steps"] == 40 and 0 <= model.report["realness_accuracy"] <= 1


class Means(torch.nn.Module):
    def forward(self, x: torch.Tensor, double: bool = False) -> torch.Tensor:
        out = x.mean(dim=(3, 4))
        return out.flatten(1) * (2.0 if double else 1.0)


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_a_local_network_file_is_a_feature_extractor(ctx, tmp_path, kind):
    clips = np.random.default_rng(0).integers(0, 256, (5, 4, 8, 8), dtype=np.uint8)
    if kind == "torchscript":
        path = tmp_path / "means.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(Means()).save(str(path))
    else:
        path = tmp_path / "means.pt2"
        torch.export.save(torch.export.export(Means(), (torch.zeros(5, 3, 4, 8, 8),), {"double": True}), str(path))
    extractor = LocalNetwork(LocalNetwork.Config(path=path, frames=4, size=8, call_args={"double": True}))
    out = extractor.features(clips, ctx)
    unit = torch.from_numpy(clips.astype(np.float32)) / 255 * 2 - 1  # [-1, 1], three channels, NCTHW
    expected = 2 * unit.mean(dim=(2, 3))[:, None].expand(-1, 3, -1).flatten(1)
    torch.testing.assert_close(out, expected)


def test_a_missing_or_unreadable_network_file_is_one_sentence(ctx, tmp_path):
    clips = np.zeros((1, 4, 8, 8), np.uint8)
    with pytest.raises(UserError, match=r"^fidelity.features.args.path: .*missing.pt is not a file"):
        LocalNetwork(LocalNetwork.Config(path=tmp_path / "missing.pt")).features(clips, ctx)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="is not a network torch can load"):
        LocalNetwork(LocalNetwork.Config(path=tmp_path / "junk.pt")).features(clips, ctx)


def controls_rank_as_their_ground_truth_says(rows: dict[str, dict], temporal: tuple[str, ...] = ()) -> None:
    """`noise` last on every fidelity column (outside the others' intervals where there are some) and furthest from
    the real videos on the `temporal` columns; `copy` best; `collapse` the least covering of the other controls."""
    noise, copy = rows["noise"], rows["copy"]
    others = [row for name, row in rows.items() if name != "noise"]
    assert all(noise["video_fd_low"] > row["video_fd_high"] for row in others)
    for key in ("video_precision", "video_density", "video_coverage"):
        assert all(noise[key] <= row[key] for row in others) and noise[key] < copy[key], key
    assert copy["video_fd"] == min(row["video_fd"] for row in rows.values())
    assert copy["video_precision"] == copy["video_coverage"] == 1.0
    realistic = [row for name, row in rows.items() if row.get("control") and name not in ("noise", "collapse")]
    for key in ("recall", "video_coverage"):
        assert all(rows["collapse"][key] < row[key] for row in realistic), key
    for key in temporal:
        values = {name: abs(row[key]) for name, row in rows.items()}
        assert all(values["noise"] >= value for value in values.values()), (key, values)


def test_the_tiny_runs_controls_rank_where_their_ground_truth_says(tiny_run):
    """The re-ID consistency of 30 noise samples depends on how the tiny re-ID model trained (0.83 to 0.93 over
    thread counts on one machine), so only the dynamic degree, which is optical flow, is held to it here; the
    published table is held to all of it."""
    rows = {r["generator"]: r for r in tiny_run["results"]["rows"]}
    controls_rank_as_their_ground_truth_says(rows, temporal=("dynamic_degree_gap",))
    real = tiny_run["results"]["fidelity"]["real"]  # held-out videos score like the real test videos
    assert rows["holdout"]["video_fd_low"] <= real["video_fd_high"] and real["video_fd_low"] <= rows["holdout"][
        "video_fd_high"]


def test_the_published_phantom_tables_controls_rank_where_their_ground_truth_says():
    """The published table, as a reader sees it: in both benchmarks the clip features put noise last and copy
    first; the default's re-ID models (trained with off-manifold frames) also put noise furthest from the real
    videos' consistency. The seed paper's recipe trains without them, so its consistency is not held to that."""
    table = json.loads((Path(__file__).parents[1] / "leaderboard" / "phantom" / "leaderboard.json").read_text())
    benchmarks: dict[str, dict[str, dict]] = {}
    for row in table["rows"]:
        benchmarks.setdefault(row["benchmark_name"], {})[row["generator"]] = row
    controls_rank_as_their_ground_truth_says(benchmarks["phantom"], temporal=(
        "consistency_gap", "consistency_outside_pct", "dynamic_degree_gap"))
    controls_rank_as_their_ground_truth_says(benchmarks["phantom-paper"], temporal=("dynamic_degree_gap",))
