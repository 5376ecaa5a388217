"""`harness export`: a row's privacy-compliant samples as an EchoNet-format dataset that scores back the same."""

import json

import pandas as pd
import pytest

from tests.conftest import run_cli, tiny_spec


@pytest.fixture(scope="module")
def image_space_run(tiny_run, tmp_path_factory):
    """The tiny benchmark in image space (the identity encoder): decoding and re-encoding lose nothing there, so
    the round trip isolates what export and `video-folder` do."""
    base = tmp_path_factory.mktemp("export")
    spec = tiny_spec(base, encoder={"plugin": "identity", "args": None}, downstream=None,
                     reid={"args": {"max_epochs": 10}}, generators=[{"plugin": "phantom-fresh"}, {"plugin": "copy"}])
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(base / "run"), "--no-progress")
    assert done.returncode == 0, done.stderr
    return {"spec": spec, "run": base / "run", "cache": tiny_run["cache"], "base": base}


def test_export_scores_back_to_the_same_numbers(image_space_run):
    run, cache, base = image_space_run["run"], str(image_space_run["cache"]), image_space_run["base"]
    out = base / "shared"
    done = run_cli("--cache", cache, "export", str(run), "--row", "phantom-fresh", "--out", str(out),
                   "--include-memorised", "--split", "0.6,0.2,0.2", "--no-progress")
    assert done.returncode == 0, done.stderr
    files = pd.read_csv(out / "FileList.csv")
    assert len(files) == 30 and len(list((out / "Videos").glob("*.avi"))) == 30
    assert set(files["Split"]) == {"TRAIN", "VAL", "TEST"} and "Memorised" in files.columns
    privacy = json.loads((out / "privacy.json").read_text())
    original = json.loads((run / "results.json").read_text())
    assert privacy["tau"] == original["reid"]["tau"] and privacy["kept"] == 30
    assert privacy["benchmark_hash"] == original["benchmark"]["benchmark_hash"]
    back = run_cli("--cache", cache, "run", str(image_space_run["spec"]), "--generator", "video-folder",
                   "--generator-args", json.dumps({"root": str(out)}), "--out", str(base / "back"), "--no-progress")
    assert back.returncode == 0, back.stderr
    [row] = json.loads((base / "back" / "results.json").read_text())["rows"]
    before = next(r for r in original["rows"] if r["generator"] == "phantom-fresh")
    assert row["n_returned"] == 30
    assert abs(row["memorised_pct"] - before["memorised_pct"]) <= 10  # at most 3 of 30 samples cross τ
    assert abs(row["recall"] - before["recall"]) <= 2 / 16  # at most two of 16 training videos change


def test_export_keeps_only_compliant_samples_and_refuses_real_rows(image_space_run):
    run, cache, base = image_space_run["run"], str(image_space_run["cache"]), image_space_run["base"]
    done = run_cli("--cache", cache, "export", str(run), "--row", "phantom-fresh", "--out", str(base / "kept"))
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(run / "samples" / "phantom-fresh.csv")
    files = pd.read_csv(base / "kept" / "FileList.csv")
    assert sorted(files["FileName"]) == sorted(table["sample_id"][~table["memorised"]])
    assert json.loads((base / "kept" / "privacy.json").read_text())["removed"] == int(table["memorised"].sum())
    refused = run_cli("--cache", cache, "export", str(run), "--row", "copy", "--out", str(base / "copy"))
    assert refused.returncode == 2 and "returns real videos" in refused.stderr and not (base / "copy").exists()
    again = run_cli("--cache", cache, "export", str(run), "--row", "phantom-fresh", "--out", str(base / "kept"))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_a_short_folder_joins_the_leaderboard_marked(image_space_run):
    """Export -> score -> publish with fewer videos than the benchmark asks (three of the exported 30 removed, as a
    user sharing only part of a row would): the row joins the benchmark's table marked with its sample count."""
    run, cache, base = image_space_run["run"], str(image_space_run["cache"]), image_space_run["base"]
    out = base / "part"
    assert run_cli("--cache", cache, "export", str(run), "--row", "phantom-fresh", "--out", str(out),
                   "--include-memorised", "--no-progress").returncode == 0
    files = pd.read_csv(out / "FileList.csv")
    for name in files["FileName"][:3]:
        (out / "Videos" / f"{name}.avi").unlink()
    files.iloc[3:].to_csv(out / "FileList.csv", index=False)
    back = run_cli("--cache", cache, "run", str(image_space_run["spec"]), "--generator", "video-folder",
                   "--generator-args", json.dumps({"root": str(out)}), "--out", str(base / "short"), "--no-progress")
    assert back.returncode == 0, back.stderr
    [row] = json.loads((base / "short" / "results.json").read_text())["rows"]
    assert row["n_samples"] == row["n_returned"] == 27 and row["n_asked"] == 30
    board = run_cli("leaderboard", str(run), str(base / "short"), "--format", "md")
    assert board.returncode == 0, board.stderr
    assert "| video-folder (27 of 30 samples)" in board.stdout
    assert "Rows marked *(n of N samples)*" in board.stdout
    too_many = json.loads((base / "short" / "results.json").read_text())
    too_many["rows"][0]["n_samples"] = 31
    (base / "short" / "results.json").write_text(json.dumps(too_many))
    done = run_cli("check", str(base / "short"), "--spec", str(image_space_run["spec"]))
    assert done.returncode == 2 and "n_samples is 31, the benchmark asks for 30" in done.stdout
