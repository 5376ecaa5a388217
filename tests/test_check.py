"""`harness check`: a run from elsewhere joins a table only when it belongs to the benchmark and holds together."""

import json
import shutil

from tests.conftest import TINY, run_cli, tiny_spec


def edited(run, folder, change) -> str:
    """A copy of the run directory `run` with `change(results)` applied to its results.json."""
    shutil.copytree(run, folder)
    results = json.loads((folder / "results.json").read_text())
    change(results)
    (folder / "results.json").write_text(json.dumps(results))
    return str(folder)


def row(results: dict, name: str) -> dict:
    return next(r for r in results["rows"] if r["generator"] == name)


def test_a_clean_run_passes_against_its_spec_and_its_own_manifest(tiny_run):
    for args in (["--spec", str(TINY)], []):
        done = run_cli("check", str(tiny_run["out"]), *args)
        assert done.returncode == 0 and "clean" in done.stdout, done.stdout + done.stderr


def test_every_problem_is_one_line_and_exits_2(tiny_run, tmp_path):
    def tamper(results):
        row(results, "copy")["memorised_pct"] = 50.0  # its per-sample table says 100
        row(results, "holdout")["recall"] = 1.5
        del results["environment"]["git_revision"]

    run = edited(tiny_run["out"], tmp_path / "tampered", tamper)
    (tmp_path / "tampered" / "samples" / "noise.csv").unlink()
    done = run_cli("check", run, "--spec", str(TINY))
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 5, done.stdout
    assert any("row 'copy': memorised_pct is 50.0, but its per-sample table gives 100" in line for line in lines)
    assert any("row 'holdout': recall = 1.5 is outside its valid range [0, 1]" in line for line in lines)
    assert any("row 'holdout': recall is 1.5, but its per-sample table gives" in line for line in lines)
    assert any("environment lacks git_revision" in line for line in lines)
    assert any("noise.csv: missing" in line for line in lines)


def test_another_benchmark_other_sample_counts_or_an_edited_hash_are_named(tiny_run, tmp_path):
    other = tiny_spec(tmp_path, privacy={"percentile": 90}, samples_per_generator=7)
    done = run_cli("check", str(tiny_run["out"]), "--spec", str(other))
    assert done.returncode == 2 and "is not the spec's" in done.stdout and "the benchmark asks for 7" in done.stdout

    def rehash(results):
        results["benchmark"]["benchmark_hash"] = "0" * 16

    done = run_cli("check", edited(tiny_run["out"], tmp_path / "rehashed", rehash))
    assert done.returncode == 2 and "does not hash to the benchmark hash" in done.stdout


def test_an_older_schema_is_one_sentence(tiny_run, tmp_path):
    run = edited(tiny_run["out"], tmp_path / "old", lambda results: results.update(schema_version=0))
    done = run_cli("check", run)
    assert done.returncode == 2 and done.stdout.count("\n") == 1 and "schema version 0" in done.stdout
    run = edited(tiny_run["out"], tmp_path / "hand-made", lambda results: results.update(rows="none"))
    done = run_cli("check", run)
    assert done.returncode == 2 and "does not have the structure" in done.stdout and "Traceback" not in done.stderr


def test_the_leaderboard_refuses_a_failing_run_unless_told(tiny_run, tmp_path):
    run = edited(tiny_run["out"], tmp_path / "tampered", lambda results: row(results, "copy").update(
        memorised_pct=50.0))
    done = run_cli("leaderboard", run, "--format", "csv")
    assert done.returncode == 2 and "fail `harness check`" in done.stderr and "memorised_pct is 50.0" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_cli("leaderboard", run, "--format", "csv", "--allow-unchecked")
    assert done.returncode == 0 and "warning:" in done.stderr


def test_a_table_whose_noise_row_wins_a_fidelity_column_is_refused(tiny_run, tmp_path):
    def wins(results):
        row(results, "noise")["video_precision"] = 1.0
        for other in results["rows"]:
            if other["generator"] != "noise":
                other["video_precision"] = min(other["video_precision"], 0.9)

    done = run_cli("check", edited(tiny_run["out"], tmp_path / "noisy", wins))
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout
    assert "the noise control is the best row on precision (video_precision)" in lines[0]


def test_a_plugin_metric_outside_its_interval_or_empty_without_a_reason_is_named(tiny_run, tmp_path):
    def tamper(results):
        row(results, "copy")["extra_metrics"]["dcr"]["value"] = 50.0  # its interval is [100, 100]
        row(results, "holdout")["extra_metrics"]["clip/authenticity"] = {"value": None, "low": None, "high": None,
                                                                          "reason": None}

    done = run_cli("check", edited(tiny_run["out"], tmp_path / "tampered", tamper), "--spec", str(TINY))
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2, done.stdout
    assert "row 'copy': metric dcr = 50.0 lies outside its interval [100.0, 100.0]" in lines[0] + lines[1]
    assert "row 'holdout': metric clip/authenticity has no value and no reason" in lines[0] + lines[1]
