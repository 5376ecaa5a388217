"""Downstream utility: which videos each strategy trains on, adherence, and the rows of the tiny run."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr

from harness.downstream import adherence, learned_real_videos, select
from harness.errors import Ineligible
from harness.leaderboard import render
from harness.metrics.intervals import Bootstrap
from tests.conftest import run_cli, tiny_spec

# six samples: s2 and s5 are memorised; compliant samples learned t0 (three times) and t1 (once)
PER_SAMPLE = pd.DataFrame({"memorised": [False, False, True, False, False, True],
                           "nearest_pred": ["t0", "t1", "t2", "t0", "t0", "t2"]})


def _select(strategy, n_real_train=3, per_video=2, per_sample=PER_SAMPLE):
    n = 0 if per_sample is None else len(per_sample)
    return select(strategy, per_sample, n or 4, n_real_train, "pred", per_video, np.random.default_rng(0)).tolist()


def test_strategies_pick_compliant_samples_by_hand():
    assert _select("full") == [0, 1, 3, 4]
    assert _select("recall-small") == [0, 1]  # the first sample of t0 and of t1
    assert _select("recall-large") == [0, 1, 3]  # up to two per learned video
    random = _select("random")
    assert len(random) == 3 and random == sorted(random) and set(random) <= {0, 1, 3, 4}
    assert _select("random", n_real_train=10) == [0, 1, 3, 4]  # fewer compliant samples than real videos: all
    assert _select("full", per_sample=None) == [0, 1, 2, 3]  # no re-ID model: every sample is eligible
    assert learned_real_videos(PER_SAMPLE, ["t2", "t1", "t0", "t3"], "pred").tolist() == [1, 2]


def test_strategies_without_eligible_videos_say_why():
    memorised = PER_SAMPLE.assign(memorised=True)
    with pytest.raises(Ineligible, match="^recall-small: every sample is memorised"):
        _select("recall-small", per_sample=memorised)
    with pytest.raises(Ineligible, match="^real-learned-subset: no training video is learned"):
        learned_real_videos(memorised, ["t0"], "pred")


def test_adherence_matches_scipy():
    rng = np.random.default_rng(1)
    requested = rng.uniform(10, 90, 50)
    measured = requested + rng.normal(0, 5, 50)
    out = adherence(requested, measured, Bootstrap(resamples=200))
    assert out["n"] == 50 and out["mae"] == pytest.approx(np.abs(requested - measured).mean())
    assert out["corr"] == pytest.approx(pearsonr(requested, measured)[0], abs=1e-12)
    constant = adherence([50.0, 50.0], [40.0, 60.0], Bootstrap(resamples=200))
    assert constant["corr"] is None  # constant requests: correlation undefined


def test_tiny_run_has_utility_rows_and_errors_per_strategy(tiny_run):
    results = tiny_run["results"]
    real = results["downstream"]["real_full"]
    assert real["n_train"] == 16 and real["n"] == 30 and real["r2_low"] <= real["r2"] <= real["r2_high"]
    rows = {r["generator"]: r for r in results["rows"]}
    strategies = ["random", "recall-small", "recall-large", "full", "real-learned-subset"]
    for name, row in rows.items():
        assert list(row["utility"]) == strategies and row["error"] is None
        assert row["adherence"]["n"] == 30 and row["adherence_mae"] == row["adherence"]["mae"]
        table = pd.read_csv(tiny_run["out"] / "samples" / f"{name}.csv")
        assert np.isfinite(table["measured_ef"]).all()
    for strategy in strategies:  # the copy control's samples are all memorised: each strategy says so
        assert rows["copy"]["utility"][strategy]["error"].startswith(f"{strategy}: ")
    fresh = rows["phantom-fresh"]["utility"]
    assert fresh["random"]["error"] is None and fresh["random"]["n_train"] == 16
    assert fresh["recall-small"]["n_train"] == fresh["real-learned-subset"]["n_train"]  # one per learned video
    md = render([results], "md")
    assert "Downstream utility" in md and "EF R² ↑" in md and "every sample is memorised" in md


def test_figures_never_show_real_frames(tiny_run):
    """Filmstrips are drawn for generated rows only; the copying controls return real videos."""
    stages = json.loads((tiny_run["out"] / "manifest.json").read_text())["stages"]
    assert sum(s["stage"] == "filmstrip" for s in stages) == 2  # phantom-fresh and noise
    for name in ("ef_scatter", "filmstrip"):
        assert (tiny_run["out"] / "figures" / tiny_run["results"]["figures"][name]).stat().st_size > 5_000


def test_recall_strategies_need_a_reid_model(tmp_path):
    path = tiny_spec(tmp_path, reid=None)
    done = run_cli("validate", str(path))
    assert done.returncode == 2 and "recall-small, recall-large, real-learned-subset pick samples with the re-ID" \
        in done.stderr and "Traceback" not in done.stderr


def test_relabel_trains_on_the_real_regressors_ef(tiny_run, tmp_path):
    """With `relabel`, samples are labelled with the EF the real-trained regressor measures in them."""
    path = tiny_spec(tmp_path, "relabel.yaml", downstream={"relabel": True, "strategies": ["full"]},
                     generators=[{"plugin": "phantom-fresh"}])
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(path), "--out", str(tmp_path / "run"),
                   "--no-progress")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["downstream"]["relabel"] is True
    assert results["downstream"]["real_full"] == tiny_run["results"]["downstream"]["real_full"]  # shared, cached
    [row] = results["rows"]
    before = {r["generator"]: r for r in tiny_run["results"]["rows"]}["phantom-fresh"]["utility"]["full"]
    assert row["utility"]["full"]["n_train"] == before["n_train"] and row["utility"]["full"]["r2"] != before["r2"]
    assert "re-labelled by the real-full regressor" in render([results], "md")
