import numpy as np
import pandas as pd
import pytest

from harness.cache import ArtifactCache
from harness.context import RunContext
from harness.errors import UserError
from harness_plugins.datasets import EchoNetDynamic, EchoNetPediatric
from harness_plugins.phantom.writers import build_cohort, write_dynamic, write_pediatric
from tests.conftest import ROOT, run_cli

COUNTS = {"TRAIN": 5, "VAL": 2, "TEST": 3}


@pytest.fixture
def ctx(tmp_path):
    import torch

    return RunContext(torch.device("cpu"), 0, ArtifactCache(tmp_path / "cache"), show_progress=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("echonet")
    videos = build_cohort(5, COUNTS, 0.0)
    write_dynamic(base / "dynamic", videos, "a4c", n_frames=30, fps=50.0, progress=False)
    write_pediatric(base / "pediatric" / "A4C", videos, "a4c", n_frames=30, fps=50.0, progress=False)
    return base


def test_dynamic_resamples_to_fps_and_clip_length(folders, ctx):
    ds = EchoNetDynamic(EchoNetDynamic.Config(root=folders / "dynamic", fps=25, clip_length=10))
    test = ds.load("test", ctx)
    assert test.frames.shape == (3, 10, 112, 112) and test.frames.dtype == np.uint8
    assert (test.table["fps"] == 25).all() and (test.table["split"] == "test").all()
    native = EchoNetDynamic(EchoNetDynamic.Config(root=folders / "dynamic", fps=None, clip_length=20)).load("test", ctx)
    # resampling 50 -> 25 fps keeps every other frame
    np.testing.assert_array_equal(test.frames[:, :10], native.frames[:, 0:20:2])
    files = pd.read_csv(folders / "dynamic" / "FileList.csv").set_index("FileName")
    np.testing.assert_allclose(test.table["ef"], files.loc[test.table["video_id"], "EF"])


def test_pediatric_folds_and_view_subfolder(folders, ctx):
    ds = EchoNetPediatric(EchoNetPediatric.Config(root=folders / "pediatric", view="a4c", fps=25, clip_length=8))
    sizes = {s: len(ds.load(s, ctx)) for s in ("train", "val", "test")}
    assert sizes == {"train": 5, "val": 2, "test": 3}
    table = ds.load("train", ctx).table
    assert table["patient_id"].str.startswith("CR").all() and not table["video_id"].str.endswith(".avi").any()


def test_short_videos_are_padded_and_counted(folders, ctx):
    ds = EchoNetDynamic(EchoNetDynamic.Config(root=folders / "dynamic", fps=50, clip_length=40))
    videos = ds.load("val", ctx)
    assert videos.frames.shape[1] == 40
    np.testing.assert_array_equal(videos.frames[:, 30], videos.frames[:, 29])
    assert ds.load_report()["val"]["padded"] == 2


def test_corrupt_video_is_skipped_and_reported(folders, ctx, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(folders / "dynamic", root)
    victim = pd.read_csv(root / "FileList.csv").query("Split == 'TRAIN'")["FileName"].iloc[0]
    (root / "Videos" / f"{victim}.avi").write_bytes(b"RIFF\x00\x00garbage")
    ds = EchoNetDynamic(EchoNetDynamic.Config(root=root, fps=25, clip_length=8))
    train = ds.load("train", ctx)
    assert len(train) == 4
    report = ds.load_report()["train"]
    assert report["skipped"] == 1 and report["skipped_files"] == [f"{victim}.avi"]


def test_a_holdout_split_loads_in_both_dialects(ctx, tmp_path):
    videos = build_cohort(5, {**COUNTS, "HOLDOUT": 4}, 0.0)
    write_dynamic(tmp_path / "dynamic", videos, "a4c", n_frames=12, fps=50.0, progress=False)
    write_pediatric(tmp_path / "pediatric", videos, "a4c", n_frames=12, fps=50.0, progress=False)
    dynamic = EchoNetDynamic(EchoNetDynamic.Config(root=tmp_path / "dynamic", fps=25, clip_length=4))
    assert len(dynamic.load("holdout", ctx)) == 4 and len(dynamic.load("test", ctx)) == 3
    pediatric = EchoNetPediatric(EchoNetPediatric.Config(root=tmp_path / "pediatric", fps=25, clip_length=4,
                                                         holdout_folds=[10]))
    assert pediatric.splits() == ("train", "val", "test", "holdout")
    same = [np.sort(d.load("holdout", ctx).table["ef"].to_numpy()) for d in (dynamic, pediatric)]
    np.testing.assert_allclose(*same)  # the same four patients
    assert EchoNetPediatric(EchoNetPediatric.Config(root=tmp_path / "pediatric")).splits() == ("train", "val", "test")


def test_rows_without_a_valid_ef_are_skipped_and_counted(folders, ctx, tmp_path, caplog):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(folders / "dynamic", root)
    files = pd.read_csv(root / "FileList.csv")
    train = files.index[files["Split"] == "TRAIN"]
    files["EF"] = files["EF"].astype(object)
    files.loc[train[:4], "EF"] = [np.nan, "n/a", 120.0, -3.0]
    files.to_csv(root / "FileList.csv", index=False)
    ds = EchoNetDynamic(EchoNetDynamic.Config(root=root, fps=25, clip_length=8))
    loaded = ds.load("train", ctx)
    assert len(loaded) == 1 and loaded.table["ef"].between(0, 100).all()
    report = ds.load_report()["train"]
    assert report["skipped"] == 4 and report["invalid_ef_files"] == [f"{f}.avi" for f in files["FileName"][train[:4]]]
    assert sum("a percentage within 0-100" in r.message for r in caplog.records) == 4
    assert len(ds.load("test", ctx)) == 3  # other splits untouched


def test_filelist_with_a_byte_order_mark_loads(folders, ctx, tmp_path):
    import shutil

    root = tmp_path / "bom"
    shutil.copytree(folders / "dynamic", root)
    text = (root / "FileList.csv").read_text()
    (root / "FileList.csv").write_text(text, encoding="utf-8-sig")
    assert (root / "FileList.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    ds = EchoNetDynamic(EchoNetDynamic.Config(root=root, fps=25, clip_length=8))
    assert len(ds.load("train", ctx)) == 5


def test_wrong_root_and_missing_column_are_one_sentence(folders, ctx, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        EchoNetDynamic(EchoNetDynamic.Config(root=tmp_path / "nope")).load("train", ctx)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no FileList.csv"):
        EchoNetDynamic(EchoNetDynamic.Config(root=tmp_path / "empty")).load("train", ctx)
    (tmp_path / "bad").mkdir()
    pd.read_csv(folders / "dynamic" / "FileList.csv").drop(columns=["EF"]).to_csv(tmp_path / "bad" / "FileList.csv")
    with pytest.raises(UserError, match="column 'EF' is missing"):
        EchoNetDynamic(EchoNetDynamic.Config(root=tmp_path / "bad")).load("train", ctx)


def test_missing_root_names_the_environment_variable(ctx, monkeypatch):
    monkeypatch.delenv("HARNESS_ECHONET_DYNAMIC", raising=False)
    with pytest.raises(UserError, match="HARNESS_ECHONET_DYNAMIC"):
        EchoNetDynamic(EchoNetDynamic.Config()).load("train", ctx)


@pytest.mark.parametrize("spec, variable", [("echonet", "HARNESS_ECHONET_DYNAMIC"),
                                            ("pediatric-a4c", "HARNESS_ECHONET_PEDIATRIC"),
                                            ("pediatric-psax", "HARNESS_ECHONET_PEDIATRIC")])
def test_real_data_specs_validate_and_name_the_missing_data(spec, variable, tmp_path):
    path = str(ROOT / "benchmarks" / f"{spec}.yaml")
    assert run_cli("validate", path).returncode == 0
    done = run_cli("--cache", str(tmp_path / "cache"), "run", path, "--out", str(tmp_path / "run"),
                   env={variable: ""})
    assert done.returncode == 2 and variable in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
