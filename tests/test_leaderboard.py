import copy
import json
import re

import pytest

from harness.errors import UserError
from harness.leaderboard import render
from tests.conftest import run_cli


def test_markdown_csv_json(tiny_run, tmp_path):
    results = tiny_run["results"]
    md = render([results], "md")
    assert "recon PSNR dB ↑" in md and "s/video ↓" in md and "| copy" in md
    csv = render([results], "csv").splitlines()
    assert csv[0].startswith("generator,plugin,samples") and len(csv) == 6
    payload = json.loads(render([results], "json"))
    assert payload["benchmark_hashes"] == [results["benchmark"]["benchmark_hash"]]
    assert {c["direction"] for c in payload["columns"]} == {"", "↑", "↓"}
    done = run_cli("leaderboard", str(tiny_run["out"]), "--format", "md", "--out", str(tmp_path))
    written = (tmp_path / "leaderboard.md").read_text()
    assert done.returncode == 0 and written.startswith(md)
    links = re.findall(r"\]\(([^)]+\.png)\)", written)
    assert len(links) == 6 and all((tmp_path / link).is_file() for link in links)  # relative to the table


def test_mixed_benchmarks_are_refused_unless_allowed(tiny_run):
    other = copy.deepcopy(tiny_run["results"])
    other["benchmark"]["benchmark_hash"] = "0" * 16
    with pytest.raises(UserError, match="different benchmarks"):
        render([tiny_run["results"], other], "md")
    mixed = render([tiny_run["results"], other], "csv", allow_mixed=True)
    assert mixed.splitlines()[0].startswith("benchmark,") and len(mixed.splitlines()) == 11


def test_published_table_has_no_frames_or_embeddings(tiny_run):
    payload = render([tiny_run["results"]], "json")
    assert len(payload) < 8_000 * len(tiny_run["results"]["rows"])  # a few numbers per metric and strategy
    assert all(not isinstance(v, list) for row in json.loads(payload)["rows"] for v in row.values())


def test_cli_reports_missing_results(tmp_path):
    done = run_cli("leaderboard", str(tmp_path))
    assert done.returncode == 2 and "no results.json" in done.stderr


def test_rows_follow_the_typed_schema(tiny_run):
    bad = copy.deepcopy(tiny_run["results"])
    bad["rows"][0]["memorised_percent"] = 3.0
    with pytest.raises(UserError, match="row 'copy' does not follow the results schema \\(memorised_percent: Extra"):
        render([bad], "md")
