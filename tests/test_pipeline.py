"""Each phase of the pipeline, and the stage primitive under it, with small stub components (no trained models)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from harness.cache import ArtifactCache
from harness.components import ComponentConfig, Dataset, Encoder, Generator, ReIdFilter, Task
from harness.context import RunContext
from harness.data import LatentSet, PixelSamples, SampleSet, VideoSet
from harness.errors import GeneratorOutputError, Ineligible, UserError
from harness.metrics.intervals import Bootstrap
from harness.pipeline.encoding import encode_real
from harness.pipeline.real_data import load_real_data
from harness.pipeline.reid import fit_reid
from harness.pipeline.row import RowRequest, conditions, run_row
from harness.pipeline.stages import Chosen, Stages
from harness.pipeline.study import describe, study_tests
from harness.pipeline.task import fit_real_task
from harness.spec import ConditionSpec, DownstreamSpec, PluginRef, PrivacySpec

N = {"train": 12, "val": 6, "test": 10}
BOOT = Bootstrap(resamples=200)


class StubDataset(Dataset):
    """Videos whose frames are one grey level per video, with a little per-frame noise."""

    class Config(ComponentConfig):
        cohort: int = 0

    def load(self, split, ctx):
        n, rng = N[split], np.random.default_rng([self.config.cohort, ["train", "val", "test"].index(split)])
        level = rng.integers(20, 230, n)[:, None, None, None]
        frames = np.clip(level + rng.integers(-3, 4, (n, 4, 8, 8)), 0, 255).astype(np.uint8)
        table = pd.DataFrame({"video_id": [f"{split}{i}" for i in range(n)], "patient_id": "p",
                              "ef": rng.uniform(30, 70, n), "split": split, "fps": 25.0, "source_file": ""})
        return VideoSet(frames, table)


class StubEncoder(Encoder):
    """Scales pixels to [0, 1]; its 'fit' counts how often it ran."""

    fits = 0

    def fit(self, train, ctx):
        StubEncoder.fits += 1
        self.scale = 255.0

    def save_state(self, folder):
        (folder / "scale.txt").write_text(str(self.scale))
        return True

    def load_state(self, folder):
        self.scale = float((folder / "scale.txt").read_text())

    def encode(self, videos, ctx):
        return LatentSet((np.asarray(videos.frames, np.float32) / self.scale)[:, :, None], videos.table)

    def decode(self, latents, ctx):
        return VideoSet((np.asarray(latents.latents[:, :, 0]) * self.scale).round().astype(np.uint8), latents.table)


class StubReId(ReIdFilter):
    """Features = a frame's mean and standard deviation: same video -> nearly the same features."""

    def fit(self, train, val, ctx):
        pass

    def embed(self, videos, ctx, frames=None):
        x = torch.from_numpy(np.asarray(videos, np.float32))
        x = x if frames is None else x[:, frames]
        flat = x.reshape(*x.shape[:2], -1)
        return torch.stack([flat.mean(-1), flat.std(-1)], dim=-1)

    def head_parameters(self):
        return torch.tensor([-50.0, -50.0]), 0.0


class StubTask(Task):
    """Predicts the training mean (R² <= 0): enough to exercise the phase."""

    def fit(self, train, val, ctx):
        if len(train) < 2:
            raise UserError("stub task: needs at least 2 training videos.")
        self.mean = float(train.table["ef"].mean())

    def predict(self, data, ctx):
        return np.full(len(data), self.mean)

    def evaluate(self, test, ctx, predictions=None):
        error = np.abs(np.asarray(test.table["ef"]) - predictions)
        return {"mae": float(error.mean()), "r2": 0.0, "n": len(test)}


class StubCopy(Generator):
    def fit(self, data, ctx):
        self.train = data["train"]

    def sample(self, conditions, ctx):
        idx = [c.seed % len(self.train) for c in conditions]
        ids = self.train.table["video_id"].tolist()
        return SampleSet.from_conditions(np.asarray(self.train.latents)[idx], conditions, fps=25.0,
                                         sources=[[ids[i]] for i in idx])


class StubPixelCopy(Generator):
    """Returns training videos as RGB pixels (three equal channels, as EchoNet stores echo)."""

    output = "pixels"

    class Config(ComponentConfig):
        size: int | None = None  # another size than the run's, to be rejected

    def fit(self, data, ctx):
        self.frames = ctx.encoder.decode(data["train"], ctx).frames

    def sample(self, conditions, ctx):
        assert (ctx.clip.frames, ctx.clip.height, ctx.clip.width, ctx.clip.fps) == (4, 8, 8, 25.0)
        frames = np.repeat(np.asarray(self.frames)[[c.seed % len(self.frames) for c in conditions], ..., None], 3, -1)
        if self.config.size:
            frames = frames[:, :, : self.config.size, : self.config.size]
        return PixelSamples.from_conditions(frames, conditions, fps=ctx.clip.fps)


class StubBroken(Generator):
    def sample(self, conditions, ctx):
        return SampleSet.from_conditions(np.zeros((len(conditions), 1, 1, 2, 2)), conditions, fps=25.0)


def chosen(factory, name="stub", **config):
    return Chosen(name, factory, "test/1", factory.Config(**config))


@pytest.fixture
def ctx(tmp_path):
    return RunContext(torch.device("cpu"), 0, ArtifactCache(tmp_path / "cache"), show_progress=False)


def real_phases(ctx):
    stages = Stages(ctx.cache)
    data = load_real_data(stages, chosen(StubDataset), ctx)
    encoded = encode_real(stages, chosen(StubEncoder), data, ctx.using(dataset=data.dataset))
    return stages, data, encoded, ctx.using(dataset=data.dataset, clip=data.clip, encoder=encoded.encoder.get)


# ---------------------------------------------------------------------------------------------- the stage primitive


def test_key_is_derived_from_the_inputs_the_build_receives(ctx):
    stages, calls = Stages(ctx.cache), []

    def build(folder, x, scale):
        calls.append((x, scale))
        return {"y": x * scale}

    assert stages.run("double", build, x=2, scale=3).meta["y"] == 6
    assert stages.run("double", build, x=2, scale=3).meta["y"] == 6  # cached
    assert stages.run("double", build, x=2, scale=4).meta["y"] == 8  # another input, another key
    assert calls == [(2, 3), (2, 4)] and stages.executed == ["double", "double"]


def test_a_deterministic_failure_is_cached_and_replayed(ctx):
    calls = []

    def build(folder, what):
        calls.append(what)
        raise (UserError if what == "user" else Ineligible)(f"no {what}")

    for what, kind in (("user", UserError), ("selection", Ineligible)):
        for _ in range(2):
            with pytest.raises(kind, match=f"no {what}"):
                Stages(ctx.cache).run("fails", build, what=what)
    assert calls == ["user", "selection"]  # each built once, then replayed from the cache


def test_failures_of_the_outside_world_and_bugs_are_not_cached(ctx):
    calls = []

    def outside(folder):
        calls.append("outside")
        raise UserError("the data folder is missing")

    def enclosing(folder):
        Stages(ctx.cache).run("inner", outside, external=True)

    def bug(folder):
        calls.append("bug")
        raise GeneratorOutputError("bad output")

    for _ in range(2):
        with pytest.raises(UserError):
            Stages(ctx.cache).run("outer", enclosing)
        with pytest.raises(GeneratorOutputError):
            Stages(ctx.cache).run("bug", bug)
    assert calls == ["outside", "bug"] * 2 and ctx.cache.entries() == []


def test_a_second_process_waits_for_the_stage_and_reuses_it(ctx):
    calls, results = [], []

    def slow(folder):
        calls.append(1)
        time.sleep(0.5)
        (folder / "x.txt").write_text("done")

    def worker():
        results.append(Stages(ArtifactCache(ctx.cache.root)).run("slow", slow).path)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] == results[1] and (results[0] / "x.txt").read_text() == "done"


# ---------------------------------------------------------------------------------------------- the phases


def test_real_data_and_encoding_phases_are_cached_and_lazy(ctx):
    StubEncoder.fits = 0
    stages, data, encoded, _ = real_phases(ctx)
    assert {s: len(v.value) for s, v in data.videos.items()} == N and data.reports["test"] == {"videos": 10}
    assert encoded.summary["latent_shape"] == [4, 1, 8, 8] and encoded.summary["recon_psnr_db"] > 40
    assert StubEncoder.fits == 1
    again, _, encoded_again, _ = real_phases(ctx)
    assert again.executed == [] and again.models_loaded == [] and StubEncoder.fits == 1
    assert encoded_again.encoder.key == encoded.encoder.key  # the fit stage is recorded, not loaded
    assert [r.stage for r in again.records].count("encoder-fit") == 1


def test_reid_and_row_phases_with_stubs(ctx):
    stages, data, encoded, ctx = real_phases(ctx)
    privacy = PrivacySpec(bootstrap_resamples=100, consistency_videos=4)
    reid = fit_reid(stages, chosen(StubReId), encoded, privacy, ctx)
    assert reid.summary["tau"] == reid.stats["tau"] and 0 <= reid.summary["test_memorised_pct"] <= 100
    asked = conditions(8, encoded.latents["train"].value, ConditionSpec(), ctx)
    assert asked == conditions(8, encoded.latents["train"].value, ConditionSpec(), ctx)  # same for every row
    request = RowRequest("copy", chosen(StubCopy, "stub-copy"), "h", asked, [], BOOT)
    result = run_row(stages, request, encoded, reid, None, None, None,
                     ctx.using(privacy_filter=reid.privacy_filter(ctx)))
    row, table = result.row, result.table
    assert row["error"] is None and row["n_returned"] == 8 and row["memorised_pct"] == 100.0
    assert (table["nearest_pred"] == table["source_ids"]).all() and result.arrays.is_file()


def test_pixel_space_generator_is_encoded_and_scored_like_a_latent_one(ctx):
    stages, data, encoded, ctx = real_phases(ctx)
    reid = fit_reid(stages, chosen(StubReId), encoded, PrivacySpec(bootstrap_resamples=50), ctx)
    asked = conditions(6, encoded.latents["train"].value, ConditionSpec(), ctx)
    pixels = run_row(stages, RowRequest("pixels", chosen(StubPixelCopy), "h", asked, [], BOOT), encoded, reid,
                     None, None, None, ctx)
    latent = run_row(stages, RowRequest("latent", chosen(StubCopy), "h", asked, [], BOOT), encoded, reid,
                     None, None, None, ctx)
    assert pixels.row["error"] is None and set(pixels.row["artifacts"]) == {"generator-fit", "samples",
                                                                            "encode-samples"}
    # RGB with three equal channels -> the same grey clips -> the same latents and metrics as the latent copy
    for key in ("memorised_pct", "recall", "fd"):
        assert pixels.row[key] == latent.row[key]
    wrong = run_row(stages, RowRequest("wrong", chosen(StubPixelCopy, size=6), "h", asked, [], BOOT), encoded, reid,
                    None, None, None, ctx)
    assert wrong.row["error"] == ("the generator returned clips of 4 frames of 6x6 pixels; the run's clips are 4 "
                                  "frames of 8x8 (ctx.clip).")


def test_a_broken_generator_is_its_rows_error(ctx):
    stages, data, encoded, ctx = real_phases(ctx)
    asked = conditions(3, encoded.latents["train"].value, ConditionSpec(), ctx)
    result = run_row(stages, RowRequest("broken", chosen(StubBroken), "h", asked, [], BOOT), encoded, None, None,
                     None, None, ctx)
    assert "clips of shape [1, 1, 2, 2]" in result.row["error"] and result.table is None


def test_task_phase_and_strategies_with_a_cached_failure(ctx):
    stages, data, encoded, ctx = real_phases(ctx)
    spec = DownstreamSpec(task=PluginRef(plugin="stub"), strategies=["random", "full"])
    task = fit_real_task(stages, chosen(StubTask), encoded, spec, ctx)
    assert task.summary["real_full"]["n_train"] == N["train"] and task.predictions.is_file()
    asked = conditions(1, encoded.latents["train"].value, ConditionSpec(), ctx)
    result = run_row(stages, RowRequest("one", chosen(StubCopy), "h", asked, [], BOOT), encoded, None, None, None,
                     task, ctx)
    utility = result.row["utility"]
    assert utility["full"] == {"n_train": 0, "error": "stub task: needs at least 2 training videos."}
    warm = Stages(ctx.cache)
    again = run_row(warm, RowRequest("one", chosen(StubCopy), "h", asked, [], BOOT), encoded, None, None, None, task,
                    ctx)
    assert again.row["utility"] == utility and warm.executed == []  # the failure came from the cache


def test_study_tests_each_model_on_its_own_and_the_other_test_split(ctx):
    stages, privacy, variants = Stages(ctx.cache), PrivacySpec(bootstrap_resamples=50), []
    for cohort in (0, 1):
        data = load_real_data(stages, chosen(StubDataset, cohort=cohort), ctx)
        encoded = encode_real(stages, chosen(StubEncoder), data, ctx)
        reid = fit_reid(stages, chosen(StubReId), encoded, privacy, ctx)
        variants.append(describe(f"cohort{cohort}", "stub", {"cohort": cohort}, data, encoded, reid))
    tests = study_tests(stages, variants, True, privacy, ctx)
    assert [(t["model"], t["tested_on"]) for t in tests] == [("cohort0", "cohort0"), ("cohort1", "cohort1"),
                                                              ("cohort0", "cohort1"), ("cohort1", "cohort0")]
    assert all(0 <= t["auc"] <= 1 for t in tests)
    # the cross test encodes the other split with the model's own encoder: one more encode-test per model
    assert [r.stage for r in stages.records if not r.cached].count("encode-test") == 2 + 2
