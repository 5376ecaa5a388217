import base64
import copy
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from harness.errors import UserError
from harness.leaderboard import render
from tests.conftest import run_cli


def test_markdown_csv_json(tiny_run, tmp_path):
    results = tiny_run["results"]
    md = render([results], "md")
    assert "recon PSNR dB ↑" in md and "s/video ↓" in md and "| copy (control)" in md
    csv = render([results], "csv").splitlines()
    assert csv[0].startswith("generator,control,plugin,samples") and len(csv) == 6
    payload = json.loads(render([results], "json"))
    assert payload["benchmark_hashes"] == [results["benchmark"]["benchmark_hash"]]
    assert {c["direction"] for c in payload["columns"]} == {"", "↑", "↓"}
    done = run_cli("leaderboard", str(tiny_run["out"]), "--format", "md", "--out", str(tmp_path))
    written = (tmp_path / "leaderboard.md").read_text()
    assert done.returncode == 0 and written.startswith(md.split("\n### How these numbers")[0])
    links = re.findall(r"\]\(([^)]+\.png)\)", written)
    assert len(links) == 8 and all((tmp_path / link).is_file() for link in links)  # relative to the table
    # every headline number with its interval, the method said once, and the record of how it was made
    assert re.search(r"\| copy \(control\) +\| [\d.]+ \[[\d.]+, [\d.]+\]", md)
    assert md.count("Intervals `[lo, hi]`") == 1 and "How these numbers were made" in md
    assert results["environment"]["git_revision"] is None or results["environment"]["git_revision"][:12] in md
    header = csv[0].split(",")
    assert {"memorised % ↓ low", "memorised % ↓ high", "recall ↑ low", "EF R² ↑ high", "device"} <= set(header)
    assert payload["runs"][0]["environment"] == results["environment"]
    assert next(c for c in payload["columns"] if c["key"] == "fd")["interval"] == ["fd_low", "fd_high"]


def test_markdown_is_narrow_tables_sharing_the_generator_column(tiny_run):
    """Privacy, the peers' privacy tests (re-ID and clip spaces), coverage, fidelity (clip and re-ID spaces),
    consistency and motion, utility and cost tables, each of at most 9 columns, with the generator first, every row
    in every table, and each column's definition once under its table."""
    results = tiny_run["results"]
    md = render([results], "md")
    titles = re.findall(r"^### (.+)$", md, flags=re.M)
    assert titles[:9] == ["Privacy", "Privacy (peers)", "Privacy (peers) in the clip feature space", "Coverage",
                          "Fidelity", "Fidelity in the re-ID space (the seed paper's)", "Consistency and motion",
                          "Utility", "Cost and record"]
    generators = [r["generator"] for r in results["rows"]]
    for title in titles[:9]:
        section = md.split(f"### {title}\n\n")[1].split("\n### ")[0]
        lines = [line for line in section.splitlines() if line.startswith("|")]
        header = [cell.strip() for cell in lines[0].strip("|").split("|")]
        assert header[0] == "generator" and len(header) <= 9, (title, header)
        names = [line.strip("|").split("|")[0].strip().removesuffix(" (control)") for line in lines[2:]]
        assert names == generators
        for cell in header[1:]:  # its definition, said once, under this table
            assert section.count(f"- **{cell}**: ") == 1 and md.count(f"- **{cell}**: ") == 1, cell
    privacy = md.split("### Privacy\n\n")[1].split("\n### ")[0]
    assert "content memorised % ↓" in privacy and "motion memorised % ↓" in privacy and "τ" in privacy
    assert "training s ↓" in md.split("### Cost and record")[1]
    assert all(r["control"] for r in results["rows"])  # the tiny spec runs only the built-in controls
    assert all(f"| {g} (control)" in privacy for g in generators)
    competitor = copy.deepcopy(results)
    competitor["rows"][1]["control"] = False  # as a generator under test records it
    marked = render([competitor], "md")
    assert f"| {generators[1]} (control)" not in marked and f"| {generators[1]} " in marked


def test_rows_from_different_devices_or_versions_are_flagged(tiny_run, tmp_path):
    from harness.provenance import mixed_environments

    results = tiny_run["results"]
    assert mixed_environments([results, copy.deepcopy(results)]) is None
    other = copy.deepcopy(results)
    other["environment"]["device"]["threads"] += 1
    other["environment"]["harness_version"] = "9.9.9"
    warning = mixed_environments([results, other])
    assert "harness versions" in warning and "devices" in warning and "\n" not in warning
    shutil.copytree(tiny_run["out"], tmp_path / "other")  # a whole run directory, so it passes `harness check`
    (tmp_path / "other" / "results.json").write_text(json.dumps(other))
    done = run_cli("leaderboard", str(tiny_run["out"]), str(tmp_path / "other"), "--format", "csv")
    assert done.returncode == 0 and done.stderr.strip() == warning


def test_compare_checks_a_run_against_published_intervals(tiny_run, tmp_path):
    from harness.compare import compare

    published = tmp_path / "published"
    published.mkdir()
    run_cli("leaderboard", str(tiny_run["out"]), "--format", "json", "--out", str(published))
    same = compare(published / "leaderboard.json", tiny_run["out"])
    assert np.allclose(same["this run"], same["published"], rtol=1e-9)  # the JSON keeps 10 digits
    assert {"memorised %", "recall", "Fréchet distance", "Fréchet distance (re-ID)", "dcr",
            "clip/membership-inference"} <= set(same["metric"])  # plugin metrics under their column keys
    moved = copy.deepcopy(tiny_run["results"])
    holdout = next(r for r in moved["rows"] if r["generator"] == "holdout")
    holdout["fd"] = holdout["fd_high"] + 1.0
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "results.json").write_text(json.dumps(moved))
    lines = compare(published / "leaderboard.json", tmp_path / "moved")
    changed = ~np.isclose(lines["this run"], lines["published"], rtol=1e-9)
    assert lines.loc[changed, ["generator", "metric"]].values.tolist() == [["holdout", "Fréchet distance (re-ID)"]]
    assert not lines.loc[changed, "inside"].any()
    done = run_cli("compare", str(published / "leaderboard.json"), str(tmp_path / "moved"))
    assert done.returncode == 0 and f"{int(lines['inside'].sum())} of {len(lines)} numbers inside" in done.stdout
    moved["benchmark"]["benchmark_hash"] = "0" * 16
    (tmp_path / "moved" / "results.json").write_text(json.dumps(moved))
    done = run_cli("compare", str(published / "leaderboard.json"), str(tmp_path / "moved"))
    assert done.returncode == 2 and "only runs of the same spec compare" in done.stderr


def test_mixed_benchmarks_are_refused_unless_allowed(tiny_run):
    other = copy.deepcopy(tiny_run["results"])
    other["benchmark"]["benchmark_hash"] = "0" * 16
    with pytest.raises(UserError, match="different benchmarks"):
        render([tiny_run["results"], other], "md")
    mixed = render([tiny_run["results"], other], "csv", allow_mixed=True)
    assert mixed.splitlines()[0].startswith("benchmark,") and len(mixed.splitlines()) == 11
    other["benchmark"]["name"] = "tiny-paper"  # e.g. the seed paper's recipe next to the default
    other["reid"]["reference_frames"] = "first"
    text = render([tiny_run["results"], other], "md", allow_mixed=True)
    own = tiny_run["results"]["benchmark"]["benchmark_hash"]
    assert re.search(rf"^\| tiny-paper \({'0' * 16}\) +\|", text, flags=re.M)
    assert re.search(rf"^\| tiny \({own}\) +\|", text, flags=re.M)
    notes = dict(re.findall(r"^\*\*(tiny(?:-paper)?)\*\* \(\w+\)\. Privacy: (.*)$", text, flags=re.M))
    assert "(the seed paper's)" in notes["tiny-paper"] and "(the seed paper's)" not in notes["tiny"]
    page = render([tiny_run["results"], other], "html", allow_mixed=True)
    assert f"tiny-paper <code>{'0' * 16}</code>" in page and f"tiny <code>{own}</code>" in page


def test_published_table_has_no_frames_or_embeddings(tiny_run):
    payload = render([tiny_run["results"]], "json")
    # a few numbers per metric and strategy: far below one 112 x 112 frame (about 50 kB as JSON) per row
    assert len(payload) < 15_000 * len(tiny_run["results"]["rows"])
    assert all(not isinstance(v, list) for row in json.loads(payload)["rows"] for v in row.values())


def test_a_published_bundle_holds_no_patient_data(tiny_run, tmp_path):
    """Only tables and the harness's own figures leave a run directory, whatever else it holds or lists."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run["out"], run)
    real = (run / "figures" / "real_frames.png")
    real.write_bytes(b"\x89PNG real patient frames")
    np.save(run / "samples" / "embeddings.npy", np.zeros((3, 4)))
    results = json.loads((run / "results.json").read_text())
    results["figures"]["real_frames"] = "real_frames.png"  # listed, as a run from elsewhere might
    results["figures"]["tsne"] = "../samples/copy.csv"
    (run / "results.json").write_text(json.dumps(results))
    bundle = tmp_path / "bundle"
    for fmt in ("md", "csv", "json", "html"):
        done = run_cli("leaderboard", str(run), "--format", fmt, "--out", str(bundle))
        assert done.returncode == 0, done.stderr
    published = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    drawn = {f"{label}.png" for label in results["figures"] if label not in ("real_frames", "tsne")}
    figures = {p.split("/")[-1] for p in published if p.startswith("figures/")}
    tables = ["leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.html"]
    assert figures == drawn and {p for p in published if "/" not in p} == set(tables)
    page = (bundle / "leaderboard.html").read_text()
    inline = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)  # the page carries its figures inline
    assert sorted(inline) == sorted(base64.b64encode((run / "figures" / name).read_bytes()).decode()
                                    for name in drawn)
    training_ids = set(pd.read_csv(run / "samples" / "copy.csv")["nearest_pred"].astype(str))
    text = "".join(re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", (bundle / name).read_text())
                   for name in tables)
    assert training_ids and not any(video in text for video in training_ids)
    assert "real_frames" not in text and "copy.csv" not in text


def test_cli_reports_missing_results(tmp_path):
    done = run_cli("leaderboard", str(tmp_path))
    assert done.returncode == 2 and "no results.json" in done.stderr


def test_rows_follow_the_typed_schema(tiny_run):
    bad = copy.deepcopy(tiny_run["results"])
    bad["rows"][0]["memorised_percent"] = 3.0
    with pytest.raises(UserError, match="row 'copy' does not follow the results schema \\(memorised_percent: Extra"):
        render([bad], "md")


def test_a_row_whose_re_id_models_disagree_is_marked_unreliable(tiny_run):
    results = copy.deepcopy(tiny_run["results"])
    noise = next(r for r in results["rows"] if r["generator"] == "noise")
    noise.update(models_disagree="memorised_pct", privacy_reliable=False,
                 per_model={"memorised_pct": [0.0, 0.7, 19.0]})
    md = render([results], "md")
    assert re.search(r"^\| noise \(control\) +\| [\d.]+ \[[\d.]+, [\d.]+\] \(unreliable\)", md, flags=re.M)
    assert "Rows whose re-ID models disagree (noise)" in md
    page = render([results], "html")
    assert "memorised % per re-ID model" in page and "0, 0.7, 19" in page
