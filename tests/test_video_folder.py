"""The `video-folder` generator: folders of generated videos in EchoNet-Synthetic's, EchoNet-Dynamic's or a plain
layout score as rows of a benchmark; a folder that is wrong is one sentence."""

import hashlib
import json
from fractions import Fraction

import av
import numpy as np
import pandas as pd
import pytest

from harness.cache import ArtifactCache
from harness.data import VideoSet
from harness.errors import UserError
from harness_plugins.video_folder import VideoFolder
from tests.conftest import run_cli, tiny_spec


def write_rgb_mp4(path, frames, fps):
    """Grey frames as an RGB H.264 MP4 (three equal channels), the way EchoNet-Synthetic stores its samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        stream.options = {"crf": "0"}
        for frame in frames:
            rgb = np.repeat(frame[..., None], 3, axis=-1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def folders(tiny_run, tmp_path_factory):
    """Copies of six training videos in EchoNet-Synthetic's layout (one more entry is a broken file), and eight new
    phantom patients in EchoNet-Dynamic's layout."""
    base = tmp_path_factory.mktemp("folders")
    stages = json.loads((tiny_run["out"] / "manifest.json").read_text())["stages"]
    key = next(s["key"] for s in stages if s["stage"] == "dataset-train")
    train = VideoSet.load(ArtifactCache(tiny_run["cache"]).path("dataset-train", key))
    copies = base / "synthetic"
    for i in range(6):
        write_rgb_mp4(copies / "mp4" / f"sample_{i:06d}.mp4", np.asarray(train.frames[i]), 25.0)
    (copies / "mp4" / "sample_000006.mp4").write_bytes(b"\x00not a video")
    efs = np.floor(train.table["ef"].to_numpy()[:7]).astype(int)
    pd.DataFrame({"FileName": [f"sample_{i:06d}" for i in range(7)], "EF": efs, "ESV": 0, "EDV": 0,
                  "FrameHeight": 112, "FrameWidth": 112, "FPS": 25, "NumberOfFrames": 8, "Split": "TRAIN"}
                 ).to_csv(copies / "FileList.csv", index=False)
    fresh = base / "dynamic"
    done = run_cli("data", "phantom", "--out", str(fresh), "--n-train", "6", "--n-val", "1", "--n-test", "1",
                   "--n-frames", "24", "--seed", "7")
    assert done.returncode == 0, done.stderr
    return {"copies": copies, "fresh": fresh, "train": train, "efs": efs}


def test_folders_of_videos_score_as_rows_of_the_benchmark(tiny_run, folders, tmp_path):
    spec = tiny_spec(tmp_path, downstream=None, generators=[
        {"plugin": "video-folder", "name": "copies", "args": {"root": str(folders["copies"])}},
        {"plugin": "video-folder", "name": "fresh", "args": {"root": str(folders["fresh"])}}])
    out = tmp_path / "run"
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"]["benchmark_hash"] != tiny_run["results"]["benchmark"]["benchmark_hash"]  # no EF task
    rows = {r["generator"]: r for r in results["rows"]}
    copies, fresh = rows["copies"], rows["fresh"]
    assert copies["error"] is None and fresh["error"] is None
    assert copies["n_samples"] == copies["n_returned"] == 6 and fresh["n_returned"] == 8
    assert copies["generator_report"] == {"skipped": 1, "skipped_files": ["sample_000006.mp4"]}
    table = pd.read_csv(out / "samples" / "copies.csv")
    first = folders["copies"] / "mp4" / "sample_000000.mp4"
    assert table["sha256"][0] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert (table["source_fps"] == 25).all() and (table["source_frames"] == 8).all()
    np.testing.assert_array_equal(table["requested_ef"], folders["efs"][:6])  # the file's EF is the requested one
    # copies of training videos find their source and score above new patients
    sources = folders["train"].table["video_id"].to_numpy()[:6]
    assert (table["nearest_pred"].to_numpy() == sources).mean() >= 0.5
    assert table["pmax_pred"].mean() > pd.read_csv(out / "samples" / "fresh.csv")["pmax_pred"].mean()
    again = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(out), "--no-progress")
    executed = [s["stage"] for s in json.loads((out / "manifest.json").read_text())["stages"] if not s["cached"]]
    assert again.returncode == 0 and executed == []  # nothing decoded or computed again


def test_a_deterministic_subset(tiny_run, folders):
    import torch

    from harness.context import RunContext
    from harness.data import ClipSpec

    ctx = RunContext(torch.device("cpu"), 0, ArtifactCache(tiny_run["cache"]), show_progress=False).using(
        clip=ClipSpec(8, 112, 112, 25.0))
    pick = [c.sample_id for c in VideoFolder(VideoFolder.Config(root=folders["fresh"], n_samples=3)
                                             ).existing_samples(ctx)]
    assert len(pick) == 3 and pick == [c.sample_id for c in VideoFolder(VideoFolder.Config(
        root=folders["fresh"], n_samples=3)).existing_samples(ctx)]


@pytest.mark.parametrize("csv, phrase", [
    (None, "FileList.csv does not exist"),
    ("FileName,Split\na,TRAIN\n", "has no column 'EF'"),
    ("FileName,EF\na,55\nb,140\n", "1 EF values are not numbers within 0-100 (e.g. for 'b')"),
    ("FileName,EF\na,55\n", "none of the 1 files"),
])
def test_a_wrong_folder_is_one_sentence(tmp_path, csv, phrase):
    if csv is not None:
        (tmp_path / "FileList.csv").write_text(csv)
    with pytest.raises(UserError, match=f"^video-folder: .*{phrase}".replace("(", "\\(").replace(")", "\\)")):
        VideoFolder(VideoFolder.Config(root=tmp_path))._listing()


def test_a_wrong_folder_on_the_command_line_exits_2(tiny_run, tmp_path):
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(tiny_spec(tmp_path, downstream=None)),
                   "--generator", "video-folder", "--generator-args", json.dumps({"root": str(tmp_path / "none")}),
                   "--out", str(tmp_path / "run"), "--no-progress")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"error: generator 'video-folder': video-folder: {tmp_path / 'none'} is not a folder" in done.stderr


def test_real_videos_shuffled_or_frozen_score_worse_than_in_order(tiny_run, tmp_path):
    """The real test videos as folders: in order, with their frames shuffled, and frozen on their first frame. The
    clip features see the difference that frame-by-frame features cannot; the frozen clips also stand out on
    dynamic degree and consistency (a shuffled clip moves about as much as the real one at this size: its steps
    are larger, but the share above the real low percentile is near 1 for both)."""
    stages = json.loads((tiny_run["out"] / "manifest.json").read_text())["stages"]
    key = next(s["key"] for s in stages if s["stage"] == "dataset-test")
    test = VideoSet.load(ArtifactCache(tiny_run["cache"]).path("dataset-test", key))
    rng = np.random.default_rng(0)
    frames = np.asarray(test.frames)
    kinds = {"ordered": frames, "shuffled": np.stack([clip[rng.permutation(len(clip))] for clip in frames]),
             "frozen": np.repeat(frames[:, :1], frames.shape[1], axis=1)}
    for kind, clips in kinds.items():
        for i, clip in enumerate(clips):
            write_rgb_mp4(tmp_path / kind / "mp4" / f"sample_{i:06d}.mp4", clip, 25.0)
        pd.DataFrame({"FileName": [f"sample_{i:06d}" for i in range(len(clips))], "EF": 50}).to_csv(
            tmp_path / kind / "FileList.csv", index=False)
    spec = tiny_spec(tmp_path, downstream=None, generators=[
        {"plugin": "video-folder", "name": kind, "args": {"root": str(tmp_path / kind)}} for kind in kinds])
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(tmp_path / "run"),
                   "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = {r["generator"]: r for r in json.loads((tmp_path / "run" / "results.json").read_text())["rows"]}
    ordered = rows["ordered"]
    for kind in ("shuffled", "frozen"):
        row = rows[kind]
        assert row["video_fd_low"] > ordered["video_fd_high"], kind  # outside the intervals
        assert row["video_precision"] < ordered["video_precision"] and row["video_density"] < ordered["video_density"]
    assert rows["frozen"]["dynamic_degree"] == 0.0 < ordered["dynamic_degree_low"]
    assert rows["frozen"]["consistency_outside_pct_low"] > ordered["consistency_outside_pct_high"]
