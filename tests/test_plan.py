"""`harness plan`: sizes and measured estimates per stage before a run, and what an earlier run left cached."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY, run_cli, tiny_spec


def test_plan_lists_every_stage_and_marks_what_the_last_run_cached(tiny_run, tmp_path):
    fresh = run_cli("--cache", str(tmp_path / "empty"), "plan", str(TINY), "--runs", str(tmp_path))
    assert fresh.returncode == 0, fresh.stderr
    lines = fresh.stdout.splitlines()
    assert lines[0].startswith("plan on ")
    rows = [line for line in lines if line.startswith("row ")]
    assert {line.split()[1] for line in rows} == {r["generator"] for r in tiny_run["results"]["rows"]}
    encoder = next(line for line in lines if line.split()[:2] == ["encoder", "encoder-fit"])
    assert "20 steps x 8 crops of 32 px" in encoder and "cached" not in encoder
    assert "train 16, val 30, test 30, holdout 30 videos of 8 frames" in fresh.stdout
    assert "total still to compute: about" in fresh.stdout and "cached: nothing" in fresh.stdout
    assert "measured: vae encode" in fresh.stdout  # the estimates come from timing the spec's models
    fidelity = next(line for line in lines if line.split()[:2] == ["fidelity", "fidelity-fit"])
    assert "300 steps of 32 real clips" in fidelity and "video-contrast step" in fresh.stdout

    warm = run_cli("--cache", str(tiny_run["cache"]), "plan", str(TINY), "--runs", str(tiny_run["out"].parent))
    assert warm.returncode == 0, warm.stderr
    cached = {tuple(line.split()[:2]) for line in warm.stdout.splitlines() if " cached " in f"{line} "}
    assert {("encoder", "encoder-fit"), ("encoder", "encode"), ("re-ID", "reid-fit"),
            ("downstream", "downstream-fit"), ("fidelity", "fidelity-fit"), ("row", "copy")} <= cached
    assert f"cached: from {tiny_run['out']}" in warm.stdout


def test_plan_against_a_run_shows_each_estimate_beside_its_measured_seconds(tiny_run, tmp_path):
    """`--against RUN_DIR`: estimates and the run's own seconds per part, and the total against the run's wall time.
    A stage's own seconds leave out the stages built inside it (a fit run on first use), so they add up to no more
    than the run took."""
    import json

    manifest = json.loads((tiny_run["out"] / "manifest.json").read_text())
    computed = [s for s in manifest["stages"] if not s["cached"]]
    assert all(0 <= s["own_seconds"] <= s["seconds"] + 1e-3 for s in computed)
    assert sum(s["own_seconds"] for s in computed) <= manifest["wall_seconds"] < sum(s["seconds"] for s in computed)
    done = run_cli("--cache", str(tiny_run["cache"]), "plan", str(TINY), "--against", str(tiny_run["out"]))
    assert done.returncode == 0, done.stderr
    lines = {line[:28].strip(): line[28:].split() for line in done.stdout.splitlines()[2:]}
    assert {"encoder training", "re-ID training", "clip features", "plugin row metrics", "downstream",
            "total (the run: wall time)"} <= set(lines)
    assert all(len(cells) == 5 or "—" in cells for cells in lines.values())  # estimate, measured, ratio
    other = run_cli("plan", str(tiny_spec(tmp_path, seed=3)), "--against", str(tiny_run["out"]))
    assert other.returncode == 2 and "is a run of another spec" in other.stderr
    assert run_cli("plan", str(TINY), "--against", str(tmp_path)).returncode == 2


def test_plan_on_a_missing_gpu_is_one_sentence(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = run_cli("plan", str(TINY), "--device", "cuda")
    assert done.returncode == 2 and "no CUDA GPU is visible" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_echonet_sizes_come_from_its_filelist_or_the_published_counts(tmp_path, monkeypatch):
    from harness_plugins.datasets import EchoNetDynamic

    monkeypatch.delenv("HARNESS_ECHONET_DYNAMIC", raising=False)
    counts, frames, size, source = EchoNetDynamic(EchoNetDynamic.Config(clip_length=64)).planned_size()
    assert counts == {"train": 7465, "val": 1288, "test": 1277} and (frames, size) == (64, 112)
    assert "published" in source
    rows = ["FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split"]
    rows += [f"v{i},50,1,2,112,112,50,100,{split}" for i, split in enumerate(["TRAIN"] * 3 + ["VAL", "TEST"])]
    (tmp_path / "FileList.csv").write_text("\n".join(rows) + "\n")
    counts, *_ = EchoNetDynamic(EchoNetDynamic.Config(root=tmp_path)).planned_size()
    assert counts == {"train": 3, "val": 1, "test": 1}


def test_plan_counts_the_near_copy_rows(tmp_path):
    """The spec's robustness section adds its near-copies ((paths + the unperturbed) x 2 sides x samples) to the
    plan."""
    spec = tiny_spec(tmp_path, robustness={"samples": 7, "perturbations": ["mjpeg:95", "shift:2"]})
    done = run_cli("--cache", str(tmp_path / "empty"), "plan", str(spec), "--runs", str(tmp_path))
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("robustness"))
    assert "42 videos (3 lines x 2 sides: 2 paths and the unperturbed)" in line
