"""Near-copies of training videos are flagged whatever path they took: the `near-copy` control and its
perturbations, the spec's `robustness` section, a folder of bit-exact copies and EchoNet-Synthetic's own layout."""

import json
import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from harness.cache import ArtifactCache
from harness.data import ClipSpec, VideoSet
from harness.privacy_spec import RobustnessSpec
from harness.robustness_tables import robustness_frame
from harness.videoio import read_avi
from harness_plugins.echonet import resample_clip
from harness_plugins.perturbations import PERTURBATIONS, Video, as_clip, perturb
from tests.conftest import ROOT, run_cli, tiny_spec

CLIP = ClipSpec(8, 112, 112, 25.0)


def texture(frames=24, seed=0):
    """A bright disc on speckle inside a dark surround, moving a little: an echo-like video at 50 fps."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:112, :112]
    out = []
    for t in range(frames):
        disc = ((y - 56 - 4 * np.sin(t / 4)) ** 2 + (x - 56) ** 2 < 30 ** 2) * 120.0
        out.append(np.clip(disc + rng.normal(60, 20, (112, 112)) * (disc > 0), 0, 255))
    return np.asarray(out, dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(n for n, p in PERTURBATIONS.items() if p.apply is not None))
def test_every_perturbation_changes_the_video_more_as_it_grows(name):
    """Each strength gives a clip of the run's shape; a stronger one departs further from the unperturbed clip
    (for the time base: a rate read wrongly departs further than a rate read right)."""
    video = Video(texture(), 50.0, 50.0)
    original = as_clip(video, CLIP).astype(float)
    strengths = PERTURBATIONS[name].strengths
    change = []
    for strength in strengths:
        clip = as_clip(perturb(video, name, strength, np.random.default_rng(0)), CLIP)
        assert clip.shape == (8, 112, 112) and clip.dtype == np.uint8
        change.append(np.abs(clip - original).mean())
    assert max(change) > 0
    if name not in ("fps", "gain", "scale", "gamma"):  # listed weakest first
        assert change[-1] > change[0]
    if name == "fps":
        assert change[strengths.index("30/25")] > change[strengths.index("30/30")]


def test_the_codecs_are_the_files_they_name(tmp_path):
    """MJPEG at EchoNet-Synthetic's quality changes a grey level by well under one; H.264 at crf 28 by more."""
    video = Video(texture(), 50.0, 50.0)
    rng = np.random.default_rng(0)
    mjpeg = perturb(video, "mjpeg", "95", rng).frames.astype(float)
    h264 = perturb(video, "h264", "28", rng).frames.astype(float)
    assert mjpeg.shape == h264.shape == video.frames.shape
    assert np.abs(mjpeg - video.frames).mean() < np.abs(h264 - video.frames).mean()


def test_an_unknown_perturbation_or_strength_is_one_sentence_exit_2(tmp_path):
    spec = tiny_spec(tmp_path, robustness={"perturbations": ["h264:28", "blur:3", "gain:0.7"]})
    done = run_cli("validate", str(spec))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "unknown perturbation 'blur'; known: mjpeg, h264, fps" in done.stderr
    assert "perturbation 'gain' has no strength '0.7' (grey levels times this); known: 0.95, 1.05" in done.stderr
    args = json.dumps({"perturbation": "h264", "strength": 99})
    done = run_cli("run", str(tiny_spec(tmp_path, name="other.yaml")), "--generator", "near-copy",
                   "--generator-args", args, "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "perturbation 'h264' has no strength '99'" in done.stderr


def _dataset(tiny_run, split):
    stages = json.loads((tiny_run["out"] / "manifest.json").read_text())["stages"]
    key = next(s["key"] for s in stages if s["stage"] == f"dataset-{split}")
    return VideoSet.load(ArtifactCache(tiny_run["cache"]).path(f"dataset-{split}", key))


def _echonet_synthetic(folder, videos: VideoSet):
    """Videos as EchoNet-Synthetic's sampler writes them: drawn at 32 fps, RGB MJPEG through OpenCV's writer at its
    default settings with a 30 fps container, `sample_000000.avi`..., a FileList saying 32 fps and integer EF."""
    (folder / "avi").mkdir(parents=True)
    names = []
    for i, path in enumerate(videos.table["source_file"]):
        frames, fps = read_avi(path)
        drawn, _ = resample_clip(frames, fps, 32.0, int(len(frames) * 32 / fps))
        name = f"sample_{i:06d}"
        writer = cv2.VideoWriter(str(folder / "avi" / f"{name}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 30,
                                 (drawn.shape[2], drawn.shape[1]))
        for frame in drawn:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        writer.release()
        names.append((name, len(drawn)))
    pd.DataFrame({"FileName": [n for n, _ in names], "EF": np.floor(videos.table["ef"]).astype(int), "ESV": 0,
                  "EDV": 0, "FrameHeight": 112, "FrameWidth": 112, "FPS": 32,
                  "NumberOfFrames": [n for _, n in names], "Split": "TRAIN"}).to_csv(folder / "FileList.csv",
                                                                                        index=False)


def test_copies_of_training_files_score_as_the_copy_control_in_any_layout(tiny_run, tmp_path):
    """The pixel path equals the dataset path: the training videos' own AVI files in a folder score 100 / 100 / 100
    as the copy control does. Written as EchoNet-Synthetic writes its samples (32 fps drawn, RGB MJPEG, a 30 fps
    container) they are still flagged by the default re-ID model (trained on perturbed copies); held-out videos
    written the same way stay near the real rate."""
    train, holdout = _dataset(tiny_run, "train"), _dataset(tiny_run, "holdout")
    exact = tmp_path / "exact"
    (exact / "Videos").mkdir(parents=True)
    for path in train.table["source_file"]:
        shutil.copyfile(path, exact / "Videos" / path.split("/")[-1])
    pd.DataFrame({"FileName": [p.split("/")[-1] for p in train.table["source_file"]], "EF": train.table["ef"]}
                 ).to_csv(exact / "FileList.csv", index=False)
    _echonet_synthetic(tmp_path / "synthetic-train", train)
    _echonet_synthetic(tmp_path / "synthetic-holdout", holdout)
    spec = tiny_spec(tmp_path, downstream=None, generators=[
        {"plugin": "video-folder", "name": name, "args": {"root": str(tmp_path / name)}}
        for name in ("exact", "synthetic-train", "synthetic-holdout")])
    out = tmp_path / "run"
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = {r["generator"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    copy = next(r for r in tiny_run["results"]["rows"] if r["generator"] == "copy")
    for key in ("memorised_pct", "content_memorised_pct", "motion_memorised_pct"):
        assert copy[key] == rows["exact"][key] == 100.0, key
    assert rows["synthetic-train"]["memorised_pct"] >= 90 and rows["synthetic-train"]["content_memorised_pct"] >= 90
    assert rows["synthetic-holdout"]["memorised_pct"] <= 20 and rows["synthetic-holdout"]["content_memorised_pct"] <= 20


def test_the_robustness_section_fills_its_table_and_figure(tiny_run, tmp_path):
    """Every listed perturbation on training and on held-out videos; the table sits under the privacy table."""
    spec = tiny_spec(tmp_path, downstream=None, generators=[{"plugin": "copy"}],
                     robustness={"samples": 12, "perturbations": ["mjpeg:95", "encoder:1"]})
    out = tmp_path / "run"
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    lines = results["robustness"]["rows"]
    assert [(r["perturbation"], r["source"]) for r in lines] == [
        ("none", "train"), ("mjpeg", "train"), ("encoder", "train"),
        ("none", "holdout"), ("mjpeg", "holdout"), ("encoder", "holdout")]
    assert all(r["error"] is None and r["memorised_pct"] is not None for r in lines)
    unperturbed = lines[0]  # the training videos read from their files as the dataset read them: exact copies
    assert [unperturbed[key] for key in ("memorised_pct", "content_memorised_pct", "motion_memorised_pct",
                                         "source_found_pct")] == [100.0] * 4
    assert lines[1]["source_found_pct"] >= 75  # an MJPEG copy of a training video finds its source
    held_out = pd.read_csv(out / "samples" / "robustness" / "holdout-none.csv")
    assert set(held_out["source_ids"]) == set(pd.read_csv(out / "samples" / "robustness" / "holdout-mjpeg-95.csv")
                                              ["source_ids"])  # the paired reference: the very same videos
    assert (out / "figures" / "robustness.png").is_file()
    assert (out / "samples" / "robustness" / "mjpeg-95.csv").is_file()
    text = (out / "leaderboard.md").read_text()
    assert text.index("### Privacy") < text.index("### Robustness") < text.index("### Coverage")
    assert "| none " in text and "paired reference" in text
    checked = run_cli("check", str(out), "--spec", str(spec))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    results["robustness"]["rows"][1]["memorised_pct"] = (lines[1]["memorised_pct"] + 50) % 100  # edited by hand
    (out / "results.json").write_text(json.dumps(results))
    checked = run_cli("check", str(out), "--spec", str(spec))
    assert checked.returncode != 0 and "robustness line 'mjpeg:95': memorised_pct is" in checked.stdout
    plain = run_cli("validate", str(tiny_spec(tmp_path, name="plain.yaml", downstream=None,
                                              generators=[{"plugin": "copy"}])))
    assert f"benchmark hash {results['benchmark']['benchmark_hash']}" in plain.stdout  # near-copy rows: not in it


def test_the_unperturbed_reference_leaves_the_video_as_it_is_and_is_not_listed():
    video = Video(texture(), 50.0, 50.0)
    assert perturb(video, "none", "", np.random.default_rng(0)) is video
    with pytest.raises(ValueError, match="'none' leaves the video as it is and takes no strength; remove '2'"):
        perturb(video, "none", "2", np.random.default_rng(0))
    with pytest.raises(ValueError, match="added by `unperturbed: true`"):
        RobustnessSpec(perturbations=["h264:28", "none:"])
    assert [row for row, _ in RobustnessSpec(perturbations=["h264:28"], unperturbed=False).entries()] == [
        "h264:28", "holdout h264:28"]


def test_the_full_robustness_spec_lists_every_realistic_strength():
    """`phantom-robustness.yaml` stays the default's table at every strength detection must survive."""
    listed = yaml.safe_load((ROOT / "benchmarks" / "phantom-robustness.yaml").read_text())["robustness"]
    assert listed["perturbations"] == [f"{name}:{strength}" for name, p in PERTURBATIONS.items()
                                       for strength in p.realistic]


def test_every_near_copy_row_has_its_own_plain_file_name():
    """A row's per-sample table is one plain file: no folder made by the '/' of a frame-rate pair, no ':'."""
    spec = RobustnessSpec(perturbations=[f"{name}:{strength}" for name, p in PERTURBATIONS.items()
                                         for strength in p.strengths])
    stems = [RobustnessSpec.table_stem(row) for row, _ in spec.entries()]
    assert len(set(stems)) == len(stems)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", stem) for stem in stems)
    assert RobustnessSpec.table_stem("holdout fps:32/30") == "holdout-fps-32-30"


def test_a_copy_is_memorised_even_when_tau_sits_at_the_ceiling():
    """Real held-out videos that reach the score of an exact copy put τ at the ceiling: an exact copy still counts,
    and the reference says τ is at the ceiling."""
    from harness.metrics.intervals import Bootstrap, memorised_estimate
    from harness.metrics.privacy import ceiling_level, is_memorised

    calibration = np.r_[np.linspace(-5, -1, 90), np.zeros(10)]  # 10 % of held-out videos reach the ceiling 0
    ceiling = ceiling_level(0.0, calibration)
    tau = np.percentile(calibration, 95)
    assert tau >= ceiling  # τ at the ceiling
    samples = np.r_[np.zeros(5), np.full(5, -3.0)]
    assert is_memorised(samples, tau, ceiling).tolist() == [True] * 5 + [False] * 5
    estimate = memorised_estimate(samples, calibration, 95, Bootstrap(500, 95, 0), ceiling)
    assert estimate.value == 50.0


def _reference(train_frames, test_first):
    from harness.evaluation import Reference

    dim = train_frames.shape[-1]
    return Reference(train_first=train_frames[:, 0], train_ids=[f"v{i}" for i in range(len(train_frames))],
                     test_first=test_first, test_frames=test_first[:, None].repeat(1, 2, 1),
                     weight=-torch.ones(dim) / dim, bias=0.0, train_frames=train_frames)


def test_a_frame_from_later_in_a_training_video_reaches_the_ceiling_against_every_frame():
    """With the training videos' every frame as the reference (`reference_frames: all`), a sample whose first frame
    is frame 5 of a training video (a collapse or a late start) scores the ceiling against that video, and the
    video is its nearest; against first frames only (the seed paper's), it does not."""
    from harness.evaluation import reference_stats
    from harness.metrics.privacy import is_memorised

    gen = torch.Generator().manual_seed(0)
    train_frames = torch.randn(20, 8, 16, generator=gen).cumsum(dim=1)  # each video drifts from frame to frame
    test_first = torch.randn(50, 16, generator=gen) * 2
    ref = _reference(train_frames, test_first)
    stats = reference_stats(ref)
    query = train_frames[torch.arange(20), 5]
    pmax, nearest = ref.pmax(query, "pred")
    assert nearest.tolist() == list(range(20))
    assert is_memorised(pmax.numpy(), stats["tau"], stats["ceiling"]).all()
    first_only = _reference(train_frames, test_first)
    first_only.train_frames = None
    pmax_first, nearest_first = first_only.pmax(query, "pred")
    assert (pmax_first < stats["ceiling"] - 0.1).all()


def test_the_ceiling_holds_at_two_threads_as_at_one(tiny_run):
    """A collapse sample is a training video started at another frame; embedded at 2 threads while the training
    frames were embedded at 1 (another machine, another thread count), it still reaches the ceiling against the
    video it copies."""
    from harness.context import RunContext
    from harness.metrics.pairs import identity_score
    from harness.metrics.privacy import CEILING_TOLERANCE
    from harness_plugins.reid import Siamese

    cache = tiny_run["cache"]
    manifest = json.loads((tiny_run["out"] / "manifest.json").read_text())
    keys = {s["stage"]: s["key"] for s in manifest["stages"] if s["stage"] in ("reid-fit", "encode-train")}
    model = Siamese(Siamese.Config(**manifest["resolved_spec"]["reid"]["args"]))
    model.load_state(cache / "reid-fit" / keys["reid-fit"] / "state")
    latents = np.load(cache / "encode-train" / keys["encode-train"] / "latents.npy").astype(np.float32)
    ctx = RunContext(device=torch.device("cpu"), seed=0, cache=ArtifactCache(cache), show_progress=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        frames = model.embed(latents, ctx)  # every frame of every training video, within its clip
        torch.set_num_threads(2)
        rolled = model.embed(np.roll(latents, -3, axis=1), ctx, frames=[0], batch_videos=5)[:, 0]
    finally:
        torch.set_num_threads(before)
    weight, bias = model.head_parameters()
    ref = _reference(frames, frames[:, 0])
    ref.weight, ref.bias = weight, bias
    pmax, nearest = ref.pmax(rolled, "pred")
    assert nearest.tolist() == list(range(len(latents)))
    assert (pmax >= identity_score("pred", bias) - CEILING_TOLERANCE).all()


def test_two_runs_publish_their_robustness_lines_side_by_side():
    """The default next to the seed paper's recipe: one line per benchmark and perturbation, named."""
    def run(name, memorised):
        rows = [{"row": f"{prefix}h264:28", "perturbation": "h264", "strength": "28", "source": source,
                 "memorised_pct": value, "memorised_pct_low": value - 5, "memorised_pct_high": value + 5,
                 "source_found_pct": 100.0 if source == "train" else None}
                for prefix, source, value in (("", "train", memorised), ("holdout ", "holdout", 5.0))]
        return {"benchmark": {"name": name}, "reid": {"percentile": 95},
                "robustness": {"generator": "near-copy", "samples": 60, "rows": rows}}
    _, alone = robustness_frame([run("phantom", 95.0)])
    assert "benchmark" not in alone.columns and len(alone) == 1
    _, both = robustness_frame([run("phantom", 95.0), run("phantom-paper", 40.0)])
    assert list(both["benchmark"]) == ["phantom", "phantom-paper"]
    assert list(both["near-copy memorised %"]) == ["95.0 [90.0, 100.0]", "40.0 [35.0, 45.0]"]
