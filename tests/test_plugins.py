import json

import pandas as pd
import pytest

from tests.conftest import TINY, run_cli, tiny_spec


def test_builtins_load_through_entry_points(registry):
    names = {p.name: p for p in registry.plugins}
    assert {"echo-datasets", "encoders", "controls", "reid", "lvdm", "ef", "video-folder"} <= set(names)
    assert all(p.distribution == "reid-harness" and p.error is None for p in registry.plugins)
    assert registry.names("generators") == ["collapse", "content-copy", "copy", "echo-lvdm", "holdout",
                                                "motion-copy", "near-copy", "noise", "phantom-fresh", "video-folder"]
    assert registry.names("encoders") == ["identity", "vae"]
    assert registry.names("reid_filters") == ["siamese"]
    assert registry.names("tasks") == ["ef-regression"]


def test_broken_plugin_is_listed_and_others_still_work(third_party):
    done = run_cli("plugins", "--json", env=third_party)
    assert done.returncode == 0
    plugins = {p["name"]: p for p in json.loads(done.stdout)}
    assert "needs a missing library" in plugins["broken"]["error"]
    assert plugins["jitter"]["distribution"] == "harness-jitter" and plugins["jitter"]["version"] == "0.3.1"
    assert plugins["jitter"]["components"] == {"generators": ["jitter"], "metrics": ["mean-pmax"]}
    assert plugins["controls"]["error"] is None
    # a hook that raises half-way is reported, and what it registered before raising is withdrawn
    assert plugins["badhook"]["error"] == "RuntimeError: registration bug"
    assert plugins["badhook"]["components"] == {}
    # a misspelled hook is a load error of its plugin (pluggy's check_pending), not silently ignored
    assert "unknown hook 'register_generator'" in plugins["typo"]["error"] and plugins["typo"]["components"] == {}
    text = run_cli("plugins", env=third_party).stdout
    assert "FAILED TO LOAD: ImportError: needs a missing library" in text


def test_allow_list(third_party):
    done = run_cli("plugins", "--json", env={**third_party, "HARNESS_PLUGINS": "jitter,encoders"})
    assert sorted(p["name"] for p in json.loads(done.stdout)) == ["encoders", "jitter"]
    validate = run_cli("validate", str(TINY), env={**third_party, "HARNESS_PLUGINS": "encoders"})
    assert validate.returncode == 2 and "unknown dataset 'echo-phantom'" in validate.stderr


def test_autoload_can_be_disabled(third_party):
    done = run_cli("plugins", "--json", env={**third_party, "HARNESS_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "jitter" not in {p["name"] for p in json.loads(done.stdout)}


def test_third_party_generator_and_metric_join_the_same_benchmark(third_party, tiny_run, tmp_path):
    """A third party's generator gets a row, and its metric a column, through the same declarations."""
    out = tmp_path / "row"
    spec = tiny_spec(tmp_path, generators=[{"plugin": "jitter", "args": {"shift": 0.25}}],
                     metrics=[{"plugin": "mean-pmax"}])
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(out), "--no-progress",
                   env=third_party)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "results.json").read_text())
    assert result["benchmark"]["benchmark_hash"] == tiny_run["results"]["benchmark"]["benchmark_hash"]
    [row] = result["rows"]
    assert row["generator"] == "jitter" and row["error"] is None and row["n_returned"] == 30
    samples = pd.read_csv(out / "samples" / "jitter.csv")
    assert row["extra_metrics"]["mean-pmax"]["value"] == pytest.approx(samples["pmax_pred"].mean(), rel=1e-5)
    # the shared stages came from the cache: only the new generator's stages ran
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    row_stages = {"generator-fit", "samples", "embed-samples", "content-samples", "decoded-samples", "copy-scores",
                  "row-metrics", "row-metric", "downstream-measure", "filmstrip", "fidelity-features"}
    assert row_stages <= {s["stage"] for s in stages if not s["cached"]} <= row_stages | {"downstream"}
    board = run_cli("leaderboard", str(tiny_run["out"]), str(out), "--format", "csv")
    assert board.returncode == 0 and "jitter" in board.stdout and "copy" in board.stdout
    header = board.stdout.splitlines()[0].split(",")
    assert "mean P_max ↓" in header and header.index("mean P_max ↓") < header.index("config hash")


def test_plugins_own_their_commands(tmp_path):
    """`harness data phantom` comes from the phantom plugin; the core imports no plugin."""
    done = run_cli("data", "phantom", "--out", str(tmp_path / "ph"), "--n-train", "2", "--n-val", "1",
                   "--n-test", "1", "--n-frames", "8")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ph" / "FileList.csv").read_text().count("\n") == 5  # header + 4 videos
    core = (TINY.parents[1] / "harness").rglob("*.py")
    assert not [p.name for p in core if "harness_plugins" in p.read_text()]
