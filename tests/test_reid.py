"""The siamese re-ID filter and the privacy analysis of every row, checked against the control generators."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from harness import downstream, evaluation
from harness.cache import ArtifactCache
from harness.errors import UserError
from harness.leaderboard import render
from harness.metrics.pairs import max_scores
from harness.metrics.reid import sample_pairs
from harness.pipeline import motion
from harness.spec import SpecErrors, validate_spec
from harness_plugins.reid import Siamese, SiameseNetwork, normalise_videos
from harness_plugins.reid_objective import hard_negatives, nearest_videos
from harness_plugins.reid_views import frames_of, perturbed_partners
from tests.conftest import TINY, merged, run_cli, tiny_spec


def rows(run: dict) -> dict[str, dict]:
    return {r["generator"]: r for r in run["results"]["rows"]}


def test_controls_prove_the_metrics(tiny_run):
    """The issue's expectations; if one fails, the metric or the model is wrong, not the threshold."""
    r, reid = rows(tiny_run), tiny_run["results"]["reid"]
    assert reid["reliable"] and reid["test"]["auc"] >= 0.9
    assert r["copy"]["memorised_pct"] >= 95 and r["copy"]["recall"] >= 0.9
    # held-out real videos are indistinguishable from the real test videos that set τ: nominal 5 % within the interval
    assert r["holdout"]["memorised_pct_low"] <= 5 <= r["holdout"]["memorised_pct_high"]
    assert r["collapse"]["learned_videos"] <= 2  # k = 2 in the tiny spec
    # a collapse sample is a training video from another frame: against every training frame it reaches the ceiling
    assert r["collapse"]["memorised_pct"] >= 90
    # new patients are no more memorised than real held-out ones (30 samples: the interval, not single samples)
    assert r["phantom-fresh"]["memorised_pct_low"] <= 5
    assert r["phantom-fresh"]["recall"] >= 0.5 * reid["reference_recall"]
    # noise is far from the real videos; rows of real or realistic videos are close (collapse's two videos may be
    # farther still: their covariance is degenerate)
    assert r["noise"]["fd"] > 5 * max(r[row]["fd"] for row in ("copy", "holdout", "phantom-fresh"))
    assert r["copy"]["recall_after_filter"] <= r["copy"]["recall"]
    assert 0 < reid["test_memorised_pct"] <= 10  # tau is the 95th percentile of the real test P_max
    # content memorisation: any frame against any training frame, calibrated the same way
    assert r["copy"]["content_memorised_pct"] >= 95
    assert r["holdout"]["content_memorised_pct_low"] <= 5 <= r["holdout"]["content_memorised_pct_high"]
    assert r["noise"]["content_memorised_pct"] <= r["copy"]["content_memorised_pct"]
    # motion memorisation: the decoded clips' optical flow, calibrated the same way
    assert r["copy"]["motion_memorised_pct"] >= 95
    assert r["holdout"]["motion_memorised_pct_low"] <= 5 <= r["holdout"]["motion_memorised_pct_high"]


def test_rows_carry_every_metric_and_a_per_sample_table(tiny_run):
    keys = {"memorised_pct", "tau", "recall", "recall_after_filter", "reference_recall", "irs_inf", "irs_inf_low",
            "irs_inf_high", "consistency", "consistency_gap", "consistency_swap", "fd", "precision", "knn_recall",
            "density", "coverage", "memorised_pct_train_to_test"}
    for row in tiny_run["results"]["rows"]:
        assert keys <= row.keys() and set(row["heads"]) == {"pred", "l1", "l2", "corr"}
        for column in (c for c in [*evaluation.COLUMNS, *motion.COLUMNS, *downstream.COLUMNS] if c.interval):
            value, (low, high) = column.value(row), column.bounds(row)
            if value is not None:
                assert low <= high, column.key
        for key in ("irs_inf", "recall", "recall_after_filter", "reference_recall", "fd"):  # centred intervals
            assert row[f"{key}_low"] <= row[key] <= row[f"{key}_high"], key
        table = pd.read_csv(tiny_run["out"] / "samples" / f"{row['generator']}.csv")
        for column in ("sample_id", "seed", "requested_ef", "pmax_pred", "nearest_pred", "pmax_corr", "appearances",
                       "content_pmax", "content_nearest", "content_memorised", "motion_score", "motion_nearest",
                       "motion_memorised"):
            assert column in table.columns
        assert len(table) == row["n_samples"]
    copy = pd.read_csv(tiny_run["out"] / "samples" / "copy.csv")
    assert (copy["nearest_pred"] == copy["source_ids"]).all()  # an exact copy's nearest video is its source
    real = tiny_run["results"]["reid"]
    assert rows(tiny_run)["holdout"]["consistency_swap"] < real["consistency_real"]
    for name in tiny_run["results"]["figures"].values():
        assert (tiny_run["out"] / "figures" / name).stat().st_size > 5_000


def test_reid_tables_in_the_leaderboard(tiny_run):
    md = render([tiny_run["results"]], "md")
    for phrase in ("memorised % ↓", "recall after filter ↑", "IRS∞ ↑", "Fréchet distance ↓", "coverage ↑",
                   "Fréchet distance (re-ID) ↓", "consistency outside real % ↓",
                   "AUC [95 % CI] ↑", "AUC corr ↑", "s/epoch ↓"):
        assert phrase in md


def test_several_re_id_models_pool_their_numbers(tiny_run, tmp_path):
    """`privacy.reid_seeds: 2` trains a second model from another seed; the privacy and recall numbers are the two
    models' mean, the per-sample table says how many models flag each sample, and the table says how it pooled."""
    spec = tiny_spec(tmp_path, privacy={"reid_seeds": 2}, downstream=None,
                     generators=[{"plugin": "copy"}, {"plugin": "holdout"}])
    out = tmp_path / "run"
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    reid, single = results["reid"], rows(tiny_run)
    assert reid["models"] == 2 and len(reid["replicates"]) == 1
    assert reid["replicates"][0]["tau"] != reid["tau"]  # another seed, another model
    assert reid["tau"] == tiny_run["results"]["reid"]["tau"]  # the first model is the one-model run's
    for row in results["rows"]:
        table = pd.read_csv(out / "samples" / f"{row['generator']}.csv")
        assert set(table["memorised_models"]) <= {0.0, 0.5, 1.0}
        assert row["memorised_pct"] == pytest.approx(100 * table["memorised_models"].mean())
        assert row["memorised_pct"] == pytest.approx(np.mean(row["per_model"]["memorised_pct"]))
        assert row["per_model"]["memorised_pct"][0] == pytest.approx(100 * table["memorised"].mean())
        assert table["memorised"].tolist() == pd.read_csv(
            tiny_run["out"] / "samples" / f"{row['generator']}.csv")["memorised"].tolist()
        for key in evaluation.POOLED:
            assert row[f"{key}_low"] <= row[f"{key}_high"], key
    assert rows({"results": results})["copy"]["memorised_pct"] == single["copy"]["memorised_pct"] == 100
    assert "mean over 2 re-ID models" in (out / "leaderboard.md").read_text()


def test_exact_copy_scores_the_head_bias_and_finds_itself():
    """The seed notes' toy case: random backbone, head weights -1, three videos."""
    torch.manual_seed(0)
    net = SiameseNetwork("resnet18", 4, 128).eval()
    with torch.no_grad():
        net.head.weight.fill_(-1.0)
        net.head.bias.fill_(0.5)
    videos = normalise_videos(torch.randn(3, 2, 4, 14, 14))
    model = Siamese()
    model.net = net
    with torch.no_grad():
        train = net.embed(videos[:, 0])
    weight, bias = model.head_parameters()
    best, arg = max_scores(train[[2, 0]], train, "pred", weight, bias)
    assert arg.tolist() == [2, 0] and best.tolist() == pytest.approx([0.5, 0.5])


def test_weights_load_safely(tmp_path):
    net = SiameseNetwork("resnet18", 4, 16)
    good = tmp_path / "good.pt"
    torch.save(net.state_dict(), good)
    model = Siamese(Siamese.Config(weights=str(good), features=16))
    loaded = model._build(4)
    assert torch.equal(loaded.head.weight, net.head.weight)

    class Payload:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(UserError, match="cannot be read as a state dict"):
        Siamese(Siamese.Config(weights=str(evil), features=16))._build(4)
    with pytest.raises(UserError, match="does not match the configured model"):
        Siamese(Siamese.Config(weights=str(good), features=32))._build(4)
    with pytest.raises(UserError, match="does not exist"):
        Siamese(Siamese.Config(weights=str(tmp_path / "missing.pt")))._build(4)


def test_normalisation_is_per_video_over_the_whole_clip():
    x = torch.stack([torch.linspace(0, 1, 24).view(2, 3, 2, 2), torch.linspace(5, 50, 24).view(2, 3, 2, 2)])
    out = normalise_videos(x)
    assert out.amin(dim=(1, 2, 3, 4)).tolist() == [-1, -1] and out.amax(dim=(1, 2, 3, 4)).tolist() == [1, 1]
    assert torch.allclose(out[0], out[1])


def test_hard_negatives_pair_a_video_with_its_nearest_others_only():
    features = torch.rand(50, 6)
    brute = (features[:, None] - features[None]).abs().sum(-1).fill_diagonal_(float("inf")).argsort(dim=1)[:, :3]
    assert np.array_equal(np.sort(nearest_videos(features, 3, budget=64), axis=1), np.sort(brute.numpy(), axis=1))

    torch.manual_seed(0)
    net = SiameseNetwork("resnet18", 4, 16).train()
    videos = normalise_videos(torch.randn(30, 3, 4, 14, 14))
    pairs = sample_pairs(30, 3, np.random.default_rng(0))
    hard = hard_negatives(net, videos, pairs, 1.0, 2, np.random.default_rng(1), torch.device("cpu"))
    assert net.training and np.array_equal(hard[:, [0, 1, 3, 4]], pairs[:, [0, 1, 3, 4]])
    negative = hard[:, 4] == 0
    assert np.array_equal(hard[~negative], pairs[~negative]) and (hard[negative, 2] != hard[negative, 0]).all()
    # the redrawn video is one of the first video's two nearest, at the frame each video was represented by
    frames = np.random.default_rng(1).integers(0, 3, 30)  # the function's first draw
    with torch.no_grad():
        picked = net.eval().embed(videos[torch.arange(30), torch.from_numpy(frames)]) * net.head.weight.abs()[0]
    l1 = (picked[:, None] - picked[None]).abs().sum(-1).fill_diagonal_(float("inf"))
    two = l1.argsort(dim=1)[:, :2].numpy()
    assert all(b in two[a] for a, b in hard[negative][:, [0, 2]])
    assert np.array_equal(hard_negatives(net, videos, pairs, 0.0, 2, np.random.default_rng(1), torch.device("cpu")),
                          pairs)


def test_perturbed_partners_come_from_a_copy_of_their_own_video():
    """A partner moved to a perturbed copy stays with its video (copy k of video i at i * views + k) and takes a
    frame the copy has; `frames_of` then reads it there, and every other frame from the videos."""
    videos, frames, views, view_frames = 6, 10, 3, 2
    x = torch.arange(videos * frames, dtype=torch.float32).view(videos, frames, 1, 1, 1)
    copies = 1000 + torch.arange(videos * views * view_frames, dtype=torch.float32).view(-1, view_frames, 1, 1, 1)
    pairs = sample_pairs(videos, frames, np.random.default_rng(0))
    moved = perturbed_partners(pairs, videos, views, view_frames, 1.0, np.random.default_rng(1))
    assert ((moved[:, 2] - videos) // views == pairs[:, 2]).all() and (moved[:, 3] < view_frames).all()
    read = frames_of(x, copies, moved[:, 2], moved[:, 3]).flatten()
    assert torch.equal(read, copies[moved[:, 2] - videos, moved[:, 3]].flatten())
    kept = perturbed_partners(pairs, videos, views, view_frames, 0.0, np.random.default_rng(1))
    assert torch.equal(frames_of(x, copies, kept[:, 2], kept[:, 3]).flatten(), x[pairs[:, 2], pairs[:, 3]].flatten())


def test_nan_or_empty_features_are_a_clear_error():
    from harness.evaluation import Reference, reference_stats, row_metrics

    train, test = torch.rand(10, 8), torch.rand(6, 3, 8)
    ref = Reference(train, [f"v{i}" for i in range(10)], test[:, 0], test, torch.full((8,), -1.0), 0.0)
    stats = reference_stats(ref)
    bad = torch.rand(4, 3, 8)
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values \\(1 of 4 videos\\)"):
        row_metrics(bad[:, 0], bad, ref, stats, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="empty"):
        row_metrics(torch.rand(0, 8), torch.rand(0, 3, 8), ref, stats, [])


def test_a_head_the_model_lacks_is_a_spec_error(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(Siamese, "heads", ("corr",))
    spec = tiny_spec(tmp_path, privacy={"head": "l1"})
    with pytest.raises(SpecErrors, match="privacy.head: the re-ID model 'siamese' has no head 'l1'; use one of corr"):
        validate_spec(spec, registry)


def test_a_model_that_did_not_learn_marks_privacy_unreliable(tiny_run, registry, tmp_path, monkeypatch):
    from harness.pipeline import run

    monkeypatch.setattr(Siamese, "_validate", lambda self, net, x, pairs, ctx: (0.69, 0.5))
    spec = tiny_spec(tmp_path, reid={"args": {"max_epochs": 2}}, generators=[{"plugin": "copy"}])
    results = run(validate_spec(spec, registry), registry, ArtifactCache(tiny_run["cache"]), tmp_path / "run",
                  show_progress=False).results
    assert results["reid"]["reliable"] is False and results["rows"][0]["privacy_reliable"] is False
    md = render([results], "md")
    assert "privacy columns are unreliable" in md and "(unreliable)" in md
    assert json.loads(render([results], "json"))["rows"][0]["privacy_reliable"] is False
    assert np.isfinite(results["rows"][0]["memorised_pct"])  # still computed, only marked


def test_reid_study_tests_every_model_on_its_own_and_the_other_view(tiny_run, tmp_path):
    import yaml

    psax = merged(yaml.safe_load(TINY.read_text())["dataset"], {"args": {"view": "psax"}})
    image = {"encoder": {"plugin": "identity"}, "reid": {"plugin": "siamese", "args": {"max_epochs": 2}}}
    spec = tiny_spec(tmp_path, "study.yaml", generators=None, samples_per_generator=None, downstream=None,
                     reid_study={"variants": [{"name": "latent-a4c"}, {"name": "image-a4c", **image},
                                              {"name": "image-psax", "dataset": psax, **image}]})
    out = tmp_path / "run"
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    study = json.loads((out / "results.json").read_text())["study"]
    pairs = {(t["model"], t["tested_on"]) for t in study["tests"]}
    assert pairs == {("latent-a4c", "latent-a4c"), ("image-a4c", "image-a4c"), ("image-psax", "image-psax"),
                     ("latent-a4c", "image-psax"), ("image-a4c", "image-psax"), ("image-psax", "image-a4c")}
    assert {v["encoder"]["space"] for v in study["variants"]} == {"latent", "image"}
    assert all(0 <= t["auc"] <= 1 and t["auc_low"] <= t["auc"] <= t["auc_high"] for t in study["tests"])
    md = (out / "leaderboard.md").read_text()
    assert "Cross-dataset" in md and "AUC per head" in md and "longer per epoch in image space" in md


@pytest.mark.parametrize("wrapped", [False, True])
def test_echonet_synthetic_checkpoint_loads_as_published(registry, tmp_path, wrapped):
    """Their layout: backbone `model` (ResNet-50, 4-channel conv1, fc 2048 -> 128), head `fc_end` (128 -> 1); a plain
    state dict, or a resumable checkpoint dict holding it under `state_dict`."""
    import torchvision

    class TheirSiamese(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torchvision.models.resnet50(weights=None)
            self.model.conv1 = torch.nn.Conv2d(4, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.model.fc = torch.nn.Linear(2048, 128)
            self.fc_end = torch.nn.Linear(128, 1)

    torch.manual_seed(3)
    theirs = TheirSiamese().eval()
    state = theirs.state_dict()
    path = tmp_path / "dynamic_best_network.pth"
    torch.save({"state_dict": state, "optimizer": {}, "best_loss": 0.1, "num_bad_epochs": 0} if wrapped else state,
               path)
    spec = tiny_spec(tmp_path, reid={"args": {"preset": "paper-latent", "weights": str(path)}})
    config = validate_spec(spec, registry).configs["reid"]
    ours = Siamese(config)._build(4).eval()
    x = torch.randn(3, 4, 14, 14)
    with torch.no_grad():
        np.testing.assert_allclose(ours.embed(x), torch.sigmoid(theirs.model(x)), atol=1e-6)
        assert torch.equal(ours.head.weight, theirs.fc_end.weight) and torch.equal(ours.head.bias, theirs.fc_end.bias)
