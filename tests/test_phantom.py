from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

from harness import workers
from harness.videoio import read_avi
from harness_plugins.phantom.simulator import VIEWS, near_twin, render_video, sample_patient
from harness_plugins.phantom.writers import build_cohort, write_dynamic, write_pediatric

COUNTS = {"TRAIN": 6, "VAL": 2, "TEST": 2}


@pytest.fixture(scope="module")
def dynamic_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dyn")
    videos = build_cohort(3, COUNTS, twin_fraction=0.3)
    write_dynamic(folder, videos, "a4c", n_frames=20, fps=50.0, progress=False)
    return folder, videos


def test_dynamic_layout_and_decoded_videos(dynamic_folder):
    folder, videos = dynamic_folder
    files = pd.read_csv(folder / "FileList.csv")
    assert list(files.columns) == ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS",
                                   "NumberOfFrames", "Split"]
    assert sorted(files["Split"].unique()) == ["TEST", "TRAIN", "VAL"]
    assert not files["FileName"].str.endswith(".avi").any()
    for row in files.itertuples():
        frames, fps = read_avi(folder / "Videos" / f"{row.FileName}.avi")
        assert frames.shape == (row.NumberOfFrames, row.FrameHeight, row.FrameWidth) == (20, 112, 112)
        assert fps == pytest.approx(row.FPS) == pytest.approx(50.0)
    truth = {v.file_stem: v.patient for v in videos}
    for row in files.itertuples():
        p = truth[row.FileName]
        assert row.EF == pytest.approx(p.measured_ef, abs=1e-9)
        assert row.ESV == pytest.approx(p.esv, abs=1e-9)
        assert row.EDV == pytest.approx(p.edv, abs=1e-9)
        assert row.EF == pytest.approx(100 * (row.EDV - row.ESV) / row.EDV, abs=1e-6)
        assert 10 <= row.EF <= 90


def test_dynamic_tracings(dynamic_folder):
    folder, _ = dynamic_folder
    tracings = pd.read_csv(folder / "VolumeTracings.csv")
    assert list(tracings.columns) == ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
    assert tracings["FileName"].str.endswith(".avi").all()
    assert (tracings.groupby("FileName")["Frame"].nunique() == 2).all()  # ED and ES
    for _, rows in tracings.groupby("FileName", sort=False):
        first, last = (rows[rows["Frame"] == f] for f in rows["Frame"].unique())
        # EchoNet's loader reads the first traced frame as ES and the last as ED (the larger LV)
        assert _chord_area(first) < _chord_area(last)


def _shoelace(x: np.ndarray, y: np.ndarray) -> float:
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _chord_area(rows: pd.DataFrame) -> float:
    """Area of the outline the chords' two ends trace (one side down, the other back up)."""
    x = np.concatenate([rows["X1"].to_numpy(), rows["X2"].to_numpy()[::-1]])
    y = np.concatenate([rows["Y1"].to_numpy(), rows["Y2"].to_numpy()[::-1]])
    return _shoelace(x, y)


def test_pediatric_layout(tmp_path):
    videos = build_cohort(1, COUNTS, twin_fraction=0.0)
    write_pediatric(tmp_path, videos, "psax", n_frames=12, fps=40.0, progress=False)
    files = pd.read_csv(tmp_path / "FileList.csv")
    assert list(files.columns) == ["FileName", "EF", "Sex", "Age", "Weight", "Height", "Split"]
    assert files["FileName"].str.endswith(".avi").all()
    assert set(files["Split"]) <= set(range(10)) and {8, 9} <= set(files["Split"])
    tracings = pd.read_csv(tmp_path / "VolumeTracings.csv")
    assert list(tracings.columns) == ["FileName", "X", "Y", "Frame"]
    for _, rows in tracings.groupby("FileName", sort=False):
        first, last = (rows[rows["Frame"] == f] for f in rows["Frame"].unique())
        assert _shoelace(first["X"].to_numpy(), first["Y"].to_numpy()) < _shoelace(last["X"].to_numpy(),
                                                                                     last["Y"].to_numpy())
    frames, fps = read_avi(tmp_path / "Videos" / files["FileName"][0])
    assert frames.shape == (12, 112, 112) and fps == pytest.approx(40.0)


def test_deterministic_for_a_seed_in_one_process_or_several(tmp_path, monkeypatch):
    counts = {"TRAIN": workers.MIN_ITEMS, "VAL": 2, "TEST": 2}  # enough videos for worker processes
    pools = []

    def counted_pool(*args, **kwargs):
        pools.append(args)
        return ProcessPoolExecutor(*args, **kwargs)

    monkeypatch.setattr(workers, "ProcessPoolExecutor", counted_pool)
    for name, threads in (("a", 1), ("b", 2)):  # the writer renders in as many processes as torch has threads
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        write_dynamic(tmp_path / name, build_cohort(7, counts, 0.2), "a4c", 8, 50.0, progress=False)
        assert len(pools) == threads - 1  # "a" in this process, "b" in two workers
    assert (tmp_path / "a" / "FileList.csv").read_bytes() == (tmp_path / "b" / "FileList.csv").read_bytes()
    for avi in (tmp_path / "a" / "Videos").iterdir():
        assert avi.read_bytes() == (tmp_path / "b" / "Videos" / avi.name).read_bytes()
    other = build_cohort(8, COUNTS, 0.2)
    assert [v.patient.ef for v in other] != [v.patient.ef for v in build_cohort(7, COUNTS, 0.2)]


def test_patients_differ_and_twins_nearly_coincide():
    rng = np.random.default_rng(0)
    a, b = sample_patient(rng, "a"), sample_patient(rng, "b")
    twin = near_twin(a, rng, "t")
    va, vb, vt = (render_video(p, "a4c", 4, 50.0, noise_seed=1).astype(float) for p in (a, b, twin))
    d_other, d_twin = np.abs(va - vb).mean(), np.abs(va - vt).mean()
    assert d_twin < d_other  # the twin is closer to its parent than an unrelated patient
    assert d_twin > 0.5  # but not identical


def test_views_render_differently_and_the_heart_moves():
    p = sample_patient(np.random.default_rng(1), "p")
    a4c, psax = (render_video(p, v, 30, 50.0, 0).astype(float) for v in VIEWS)
    assert np.abs(a4c - psax).mean() > 3
    assert np.abs(a4c[0] - a4c[12]).mean() > 1  # frames of one cycle differ


def _motion(frames: np.ndarray) -> np.ndarray:
    """How much each frame changed from the last: the video's beat, whatever the anatomy."""
    return np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2))


@pytest.mark.parametrize("dialect", ["dynamic", "pediatric"])
def test_recombined_videos_keep_only_the_motion_or_only_the_content(tmp_path, dialect):
    """Ground truth for the motion-copy and content-copy controls, checked on the written pixels: a motion copy
    beats like its source with other anatomy; a content copy looks like its source and beats otherwise."""
    import torch

    from harness.cache import ArtifactCache
    from harness.context import RunContext
    from harness.errors import UserError
    from harness_plugins.datasets import EchoPhantom

    phantom = EchoPhantom(EchoPhantom.Config(n_train=12, n_val=2, n_test=2, n_frames=48, fps=None, clip_length=48,
                                             format=dialect))
    ctx = RunContext(device=torch.device("cpu"), seed=0, cache=ArtifactCache(tmp_path), show_progress=False)
    train = phantom.load("train", ctx)
    sources = train.table["video_id"].astype(str).tolist()[:6]
    source = {v: train.frames[i].astype(np.float32) for i, v in enumerate(sources)}
    efs = [30.0, 40.0, 50.0, 60.0, 70.0, 45.0]
    motion = phantom.recombined(sources, "motion", efs, ctx, name="t")
    content = phantom.recombined(sources, "content", efs, ctx, name="t")
    assert np.allclose(motion.table["ef"], train.table["ef"].to_numpy()[:6], atol=0.5)  # the source's beat
    assert np.allclose(content.table["ef"], efs, atol=0.5)  # a new beat at the requested EF
    for i, v in enumerate(sources):
        beat = np.corrcoef(_motion(motion.frames[i]), _motion(source[v]))[0, 1]
        other_beat = np.corrcoef(_motion(content.frames[i]), _motion(source[v]))[0, 1]
        look = np.corrcoef(content.frames[i].mean(0).ravel(), source[v].mean(0).ravel())[0, 1]
        other_look = np.corrcoef(motion.frames[i].mean(0).ravel(), source[v].mean(0).ravel())[0, 1]
        assert beat > 0.8 and beat > other_beat + 0.2, (v, beat, other_beat)
        assert look > 0.95 and look > other_look + 0.05, (v, look, other_look)
    with pytest.raises(UserError, match="not in the dataset"):
        phantom.recombined(["nope"], "motion", [50.0], ctx, name="t")
