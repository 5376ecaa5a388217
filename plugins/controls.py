"""Control generators: rows that make every other row interpretable and check the metrics themselves.

copy          training videos (optionally with noise)      -> memorised ~100 %, recall ~1
holdout       real held-out videos, used neither for tau nor  -> memorised ~5 %, recall ~ real reference
              for model selection (the dataset's `holdout`
              split; its `val` split when it has none)
collapse      variations of only k training videos          -> recall <= k / N_train
phantom-fresh new patients from the phantom's distribution  -> ideal generator, needs dataset echo-phantom
motion-copy   new patients beating with a training patient's -> motion memorised, content not (echo-phantom)
              exact motion (EF, heart rate, phase)
content-copy  a training patient's anatomy and texture with  -> content memorised, motion not (echo-phantom)
              new motion (the requested EF)
noise         Gaussian latents                              -> worst fidelity, no utility
near-copy     training (or held-out) videos through one named -> memorised like copy (like holdout for held-out
              perturbation at one strength (`perturbations`)     videos): the Robustness table
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, PositiveInt, field_validator, model_validator

from harness import hookimpl
from harness.components import ComponentConfig, Generator, SimulatesPatients
from harness.context import RunContext
from harness.data import Condition, LatentSet, PixelSamples, SampleSet
from harness.errors import UserError
from harness.plan import Estimate, Probe, Workload
from harness.privacy_spec import UNPERTURBED
from harness.videoio import VideoReadError
from harness_plugins.perturbations import PERTURBATIONS, check, perturbed_clip, strength_text
from harness_plugins.perturbations import VERSION as PERTURBATIONS_VERSION

log = logging.getLogger("harness")


def _no_model(work: Workload) -> list[Estimate]:
    """A control's plan: it copies, recombines or draws latents, which costs next to nothing."""
    return [Estimate("samples", f"{work.samples:,} videos, no model", 0.0)]


class _FromRealVideos(Generator):
    """Returns (noisy) real videos from a pool chosen in `fit`; subclasses choose the pool."""

    control = True

    #: Start each returned clip at a random frame of its source (cyclically), so repeats are not identical.
    shift_frames = False
    shows_real_frames = True

    class Config(ComponentConfig):
        noise_std: float = Field(0.0, ge=0, description="Gaussian noise, in units of the latent std")

    def _pool(self, data: dict[str, LatentSet], ctx: RunContext) -> LatentSet:
        raise NotImplementedError

    def plan(self, work: Workload, probe: Probe) -> list[Estimate]:
        return _no_model(work)

    def fit(self, data: dict[str, LatentSet], ctx: RunContext) -> None:
        self.pool = self._pool(data, ctx)
        self.scale = float(np.asarray(data["train"].latents[:64], dtype=np.float32).std())
        self.order = ctx.rng("pool-order", type(self).__name__).permutation(len(self.pool))
        self.fps = float(data["train"].table["fps"].iloc[0])

    def sample(self, conditions: list[Condition], ctx: RunContext) -> SampleSet:
        picks = [int(self.order[i % len(self.order)]) for i in range(len(conditions))]
        out = np.empty((len(conditions), *self.pool.clip_shape), dtype=np.float32)
        for i, (cond, src) in enumerate(zip(conditions, picks, strict=True)):
            rng = np.random.default_rng(cond.seed)
            out[i] = self.pool.latents[src]
            if self.shift_frames:
                out[i] = np.roll(out[i], -int(rng.integers(0, len(out[i]))), axis=0)
            if self.config.noise_std > 0:
                out[i] += rng.normal(0, self.config.noise_std * self.scale, out[i].shape)
        ids = self.pool.table["video_id"].astype(str).tolist()
        efs = self.pool.table["ef"].to_numpy()[picks]
        return SampleSet.from_conditions(out, conditions, fps=self.fps, ef=efs, sources=[[ids[p]] for p in picks])


class Copy(_FromRealVideos):
    """Training videos, each returned as many times as needed (a generator that memorised everything)."""

    def _pool(self, data, ctx):
        return data["train"]


class Holdout(_FromRealVideos):
    """Real held-out videos: never trained on, never used to set tau or to select a model, so they must score like
    the real test videos. With fewer videos than samples some repeat, and its recall is no longer comparable with
    the real reference: the report says how large the pool is."""

    version = "2"  # 2: the dataset's holdout split when it has one
    splits = ("train", "val", "holdout")

    def _pool(self, data, ctx):
        self.source = "holdout" if "holdout" in data else "val"
        if len(data[self.source]) == 0:
            raise UserError(f"holdout: the dataset's {self.source} split is empty; the holdout control needs "
                            "held-out videos.")
        return data[self.source]

    def fit_report(self):
        return {"pool_split": self.source, "pool_videos": len(self.pool)}

    def sample(self, conditions, ctx):
        if len(conditions) > len(self.pool):
            log.warning("holdout: %d held-out videos for %d samples, so videos repeat and the row's recall is not "
                        "comparable with the real reference; give the dataset a larger holdout split",
                        len(self.pool), len(conditions))
        return super().sample(conditions, ctx)


class Collapse(_FromRealVideos):
    """Variations of only `k` training videos (mode collapse): each sample is one of them started at another
    frame of its cycle, so the first frames differ but every sample shows one of k patients.

    Version 2 replaced i.i.d. latent noise (default 0.1 std) as the variation: a re-ID model never sees such noise
    in training, and it sent the noisy copies to unrelated nearest videos, i.e. the control measured the model's
    noise sensitivity instead of collapse.
    """

    version = "2"
    shift_frames = True

    class Config(_FromRealVideos.Config):
        k: PositiveInt = 3

    def _pool(self, data, ctx):
        train = data["train"]
        if self.config.k > len(train):
            raise UserError(f"collapse: k={self.config.k} exceeds the {len(train)} training videos; lower "
                            "generators[].args.k.")
        chosen = np.sort(ctx.rng("collapse-pick").choice(len(train), self.config.k, replace=False))
        return LatentSet(np.asarray(train.latents[chosen]), train.table.iloc[chosen])


class Noise(Generator):
    """Gaussian latents, optionally with the per-channel mean and std of the training latents."""

    control = True

    class Config(ComponentConfig):
        match_moments: bool = True

    def plan(self, work: Workload, probe: Probe) -> list[Estimate]:
        return _no_model(work)

    def fit(self, data, ctx):
        train = np.asarray(data["train"].latents[:256], dtype=np.float32)
        self.shape = train.shape[1:]
        axes = (0, 1, 3, 4)
        self.mean = train.mean(axis=axes, keepdims=True)[0] if self.config.match_moments else 0.0
        self.std = train.std(axis=axes, keepdims=True)[0] if self.config.match_moments else 1.0
        self.fps = float(data["train"].table["fps"].iloc[0])
        self.efs = data["train"].table["ef"].to_numpy()

    def sample(self, conditions, ctx):
        out = np.stack([np.random.default_rng(c.seed).standard_normal(self.shape) for c in conditions])
        out = out * self.std + self.mean
        return SampleSet.from_conditions(out, conditions, fps=self.fps)


class PhantomFresh(Generator):
    """New phantom patients from the dataset's own generative process, with the requested EFs: the ideal
    conditional generator."""

    control = True

    version = "2"  # 2: honours the requested EF

    def fit(self, data, ctx):
        if not isinstance(ctx.dataset, SimulatesPatients):
            raise UserError("phantom-fresh: needs the dataset 'echo-phantom' (it simulates new patients); "
                            "remove this generator or switch dataset.plugin to echo-phantom.")

    def sample(self, conditions, ctx):
        videos = ctx.dataset.fresh([c.ef for c in conditions], ctx, name="sample")
        latents = ctx.encoder.encode(videos, ctx)
        sources = [[f"new:{v}"] for v in videos.table["patient_id"].astype(str)]
        return SampleSet.from_conditions(np.asarray(latents.latents, dtype=np.float32), conditions,
                                         fps=float(videos.table["fps"].iloc[0]), ef=videos.table["ef"].to_numpy(),
                                         sources=sources)


class _Recombined(Generator):
    """Each sample keeps one part (motion or content) of a training video drawn by its seed, and takes the rest
    from a new patient; the source is the sample's provenance."""

    control = True

    keep: ClassVar[str]

    def plan(self, work: Workload, probe: Probe) -> list[Estimate]:
        return _no_model(work)

    def fit(self, data, ctx):
        if not isinstance(ctx.dataset, SimulatesPatients):
            raise UserError(f"{self.keep}-copy: needs the dataset 'echo-phantom' (it simulates patients); remove "
                            "this generator or switch dataset.plugin to echo-phantom.")
        self.train_ids = data["train"].table["video_id"].astype(str).tolist()

    def sample(self, conditions, ctx):
        picks = [self.train_ids[int(np.random.default_rng(c.seed).integers(len(self.train_ids)))]
                 for c in conditions]
        videos = ctx.dataset.recombined(picks, self.keep, [c.ef for c in conditions], ctx, name="sample")
        latents = ctx.encoder.encode(videos, ctx)
        return SampleSet.from_conditions(np.asarray(latents.latents, dtype=np.float32), conditions,
                                         fps=float(videos.table["fps"].iloc[0]), ef=videos.table["ef"].to_numpy(),
                                         sources=[[p] for p in picks])


class MotionCopy(_Recombined):
    """New patients that beat exactly like training patients (their EF, not the requested one)."""

    keep = "motion"


class ContentCopy(_Recombined):
    """Training patients' anatomy and texture with new motion at the requested EF."""

    keep = "content"
    shows_real_frames = True  # a training patient's anatomy: never drawn in a filmstrip


class NearCopy(Generator):
    """Real videos, each through one named perturbation at one strength (`harness_plugins.perturbations`): from the
    training split, a memorising generator whose output was decoded, compressed, resampled, shifted or re-scaled on
    its way to the user (it must score as memorised); from the held-out videos, the same path for videos nobody
    trained on (it must score like those videos unperturbed, `none`). Each sample reads its source video's file at
    the file's own rate, perturbs it and is read into the run's clip exactly as the datasets read their files;
    `encoder` decodes the source's latents instead, and the run encodes the pixels again."""

    version = PERTURBATIONS_VERSION  # its samples change when the perturbations do
    output = "pixels"
    control = True
    shows_real_frames = True
    splits = ("train", "val", "holdout")

    class Config(ComponentConfig):
        perturbation: str = Field("mjpeg", description=f"one of {', '.join(PERTURBATIONS)}, or '{UNPERTURBED}' (the "
                                                       "source video as it is: the lines' paired reference)")
        strength: str = Field("95", description=f"one of the perturbation's named strengths ('' with "
                                                f"'{UNPERTURBED}')")
        source: Literal["train", "holdout"] = Field("train", description="training videos (near-copies) or held-out "
                                                                         "ones (the false-positive side)")

        @field_validator("strength", mode="before")
        @classmethod
        def _as_text(cls, value: object) -> str:
            return strength_text(value)

        @model_validator(mode="after")
        def _known(self) -> NearCopy.Config:
            check(self.perturbation, self.strength)
            return self

    def plan(self, work: Workload, probe: Probe) -> list[Estimate]:
        return _no_model(work)

    def fit(self, data, ctx):
        split = self.config.source if self.config.source in data else "val"
        self.pool = data[split]
        if len(self.pool) == 0:
            raise UserError(f"near-copy: the dataset's {split} split is empty; the control needs its videos.")
        self.order = ctx.rng("pool-order", "near-copy", self.config.source).permutation(len(self.pool))

    def sample(self, conditions, ctx):
        picks = [int(self.order[i % len(self.order)]) for i in range(len(conditions))]
        if self.config.perturbation == "encoder":
            frames = self._round_trips(picks, ctx)
        else:
            frames = np.stack([self._from_file(p, np.random.default_rng(c.seed), ctx)
                               for c, p in zip(conditions, picks, strict=True)])
        ids = self.pool.table["video_id"].astype(str).tolist()
        return PixelSamples.from_conditions(frames, conditions, fps=ctx.clip.fps,
                                            ef=self.pool.table["ef"].to_numpy()[picks],
                                            sources=[[ids[p]] for p in picks],
                                            perturbation=self.config.perturbation, strength=self.config.strength)

    def _from_file(self, pick: int, rng: np.random.Generator, ctx: RunContext) -> np.ndarray:
        row = self.pool.table.iloc[pick]
        try:
            return perturbed_clip(Path(str(row["source_file"])), row.get("source_fps"), self.config.perturbation,
                                  self.config.strength, rng, ctx.clip)
        except VideoReadError as exc:
            raise UserError(f"near-copy: cannot read the source video ({exc}); the control perturbs the dataset's "
                            "own files, which must stay where the dataset found them.") from None

    def _round_trips(self, picks: list[int], ctx: RunContext, chunk: int = 64) -> np.ndarray:
        """The sources' latents decoded, then (for more than one round trip) encoded and decoded again; `chunk`
        videos at a time, so memory does not grow with the sample count."""
        encoder, parts = ctx.encoder, []
        for start in range(0, len(picks), chunk):
            videos = encoder.decode(self.pool.subset(np.asarray(picks[start:start + chunk])), ctx)
            for _ in range(int(self.config.strength) - 1):
                videos = encoder.decode(encoder.encode(videos, ctx), ctx)
            parts.append(np.asarray(videos.frames))
        return np.concatenate(parts)


@hookimpl
def register_generators(register):
    register("copy", Copy)
    register("holdout", Holdout)
    register("collapse", Collapse)
    register("noise", Noise)
    register("phantom-fresh", PhantomFresh)
    register("motion-copy", MotionCopy)
    register("content-copy", ContentCopy)
    register("near-copy", NearCopy)
