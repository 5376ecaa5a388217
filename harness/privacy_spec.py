"""The spec's `privacy` section (how memorisation is calibrated, its content and motion parts) and its `robustness`
section (near-copies that test the memorisation detection)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

from harness.metrics.intervals import Bootstrap
from harness.metrics.pairs import HEADS

#: the `perturbation` a robustness generator is asked for (with strength '') to leave its source video as it is
UNPERTURBED = "none"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentSpec(_Strict):
    """Content memorisation (Chen et al. 2024): a sample any of whose frames replicates a training frame."""

    frame_stride: PositiveInt = Field(1, description="compare every k-th frame of the samples and of the training "
                                                     "and test videos (1: all)")
    percentile: float = Field(95.0, gt=0, lt=100, description="τ_content: this percentile of the real test "
                                                              "videos' best frame score")


class CopySpec(_Strict):
    """The pixel copy test (`harness.metrics.copy`), the second test of the first-frame and content columns besides
    the re-ID model: a sample whose frame is a training frame moved, zoomed, re-encoded or re-scaled in intensity.
    It compares every `motion.frame_gap`-th frame, decoded once for both pixel tests."""

    enabled: bool = Field(True, description=(
        "decode the samples' and the real videos' frames and flag a sample as memorised when either the re-ID model "
        "or this test finds it more extreme than the spec's percentile of the real test videos (the two tests "
        "calibrated jointly; on the phantom default, near-copies shifted 4 px went from 14 to 97 % memorised, "
        "gain 1.1 from 65 to 100 %); false: the re-ID model alone (the seed paper's)"))
    size: int = Field(28, ge=8, description="frames are area-resized to this many pixels a side: a codec, noise or "
                                            "the run's decoder change little at this size, the anatomy a lot")
    max_shift: float = Field(1.5, ge=0, description="largest shift of a sample's frame tried, in pixels of `size`")
    shift_step: PositiveFloat = Field(0.5, description="step of the shifts tried, in pixels of `size`")
    zooms: list[PositiveFloat] = Field([0.9, 0.95, 1.0, 1.05, 1.1], min_length=1, description=(
        "zooms of a sample's frame tried about its centre (0.9 undoes a 10 % crop resized to the full frame)"))
    candidates: PositiveInt = Field(8, description=(
        "training frames each sample frame is tried against under every shift and zoom: the best of a search at "
        "half the size on a coarser grid (on the phantom default, 8 of 800 gave every flag the exhaustive "
        "search gives, at a quarter of its cost)"))


class MotionSpec(_Strict):
    """Motion memorisation (Chen et al. 2024): a sample that moves like a training video, whatever it looks like."""

    enabled: bool = Field(True, description="decode the samples and the real videos and compare their motion")
    frame_gap: PositiveInt = Field(2, description="optical flow between frames i and i + gap, i = 0, gap, 2 gap, …")
    flow_size: int = Field(56, ge=16, description="frames are resized to this many pixels a side for the flow")
    decode_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="precision of the decoder for the motion clips; auto: bfloat16 where the device computes "
                            "it natively (about 1.6x faster on a CPU with AVX512-BF16; decoded pixels differ by at "
                            "most a few grey levels), else float32")
    percentile: float = Field(95.0, gt=0, lt=100, description="τ_motion: this percentile of the real test videos' "
                                                              "best motion score")
    speeds: list[PositiveFloat] = Field([1.0], min_length=1, description=(
        "compare a sample's motion also as a replay of a training video at these speeds (another frame rate, or a "
        "rate read wrongly: 30 vs 32 fps is 0.94); [1]: same speed only (on the phantom's 16-frame clips, speeds "
        "raised τ_motion more than the scores of near-copies at another frame rate, which stayed at 0-3 %)"))
    lags: list[int] = Field([-1, 0, 1], min_length=1, description=(
        "and started this many flow steps later or earlier, and, where every frame is decoded (the position view "
        "on), every frame in between (on the phantom default, lags of one step took near-copies started 4 frames "
        "late from 2 to 100 % motion-memorised, and the motion-copy control, through the higher τ_motion, from 88 "
        "to 71 %; the frames in between took a start 2 frames late from 28 to 100 %; [0]: aligned only)"))
    overlap: float = Field(0.6, gt=0, le=1, description="the least share of the steps an alignment must cover")
    position_speeds: list[PositiveFloat] = Field([0.94, 1.0, 1.07], description=(
        "a second view, joined with the steps' as the copy test is with the re-ID model: every frame decoded, and "
        "where the motion has got to by each frame (`harness.metrics.motion.positions`, averaged over neighbouring "
        "frames) compared as a replay at these speeds; on the phantom default, near-copies at 32 fps read as 30 "
        "went from 2 to 88 % motion-memorised (100 % with the average) and H.264 crf 28 from 83 to 95 %, starts "
        "and other codecs still at 100 % (alone, the position view misses a start 4 frames late); []: the steps "
        "alone (half the decoding)"))


class PrivacySpec(_Strict):
    calibration: Literal["test-to-train", "train-to-test"] = "test-to-train"
    percentile: float = Field(95.0, gt=0, lt=100)
    head: Literal[HEADS] = "pred"
    reference_frames: Literal["first", "all"] = Field(
        "all", description="the frames of every training video a sample's first frame is compared with (P_max): "
                           "first (the seed paper's: a generator that returns a training video from another frame "
                           "of its cycle goes unflagged, as real held-out first frames then set τ) or all (every "
                           "`content.frame_stride`-th frame, each seen within its clip as the first frame is: "
                           "such a sample reaches the model's ceiling against the frame it copies)")
    consistency_videos: PositiveInt = Field(1000, description="videos per row whose every frame is embedded")
    knn: PositiveInt = Field(5, description="k of the k-NN precision/recall/density/coverage")
    bootstrap_resamples: PositiveInt = Field(2000, description="resamples behind every interval of the privacy, "
                                                               "coverage and fidelity numbers and the re-ID AUC")
    interval_level: float = Field(95.0, gt=50, lt=100, description="two-sided level of those intervals, percent")
    min_val_auc: float = Field(0.6, ge=0, le=1, description="below this the re-ID model is marked unreliable")
    reid_seeds: PositiveInt = Field(1, description="re-ID models trained from different seeds: memorised % (first "
                                                   "frame and content) and the recalls are their mean, and their "
                                                   "intervals include the spread between the models (another "
                                                   "machine trains other models); τ, P_max and the filter come "
                                                   "from the first (a re-ID study trains one model per variant)")

    content: ContentSpec = Field(default_factory=ContentSpec)
    copy_test: CopySpec = Field(default_factory=CopySpec)
    motion: MotionSpec = Field(default_factory=MotionSpec)

    def bootstrap(self, seed: int) -> Bootstrap:
        return Bootstrap(self.bootstrap_resamples, self.interval_level, seed)


class RobustnessSpec(_Strict):
    """Near-copy controls with known answers: each listed perturbation applied to training videos (a memorising
    generator's output on its way to a user: they must score as memorised) and to held-out videos (they must score
    like the same videos unperturbed, the `none` line). Privacy only, no downstream task: the Robustness table under
    the privacy table."""

    generator: str = Field("near-copy", description="the control plugin; its args take `perturbation`, `strength` "
                                                    "and `source` (train or holdout); perturbation `none` with "
                                                    "strength '' leaves the source video as it is")
    perturbations: list[str] = Field(min_length=1, description="'name:strength' entries, e.g. 'h264:28'")
    samples: PositiveInt = Field(200, description="samples per perturbation and side")
    unperturbed: bool = Field(True, description="also score the same source videos read the same way, unperturbed "
                                                "(the `none` line): the paired reference every line is read against, "
                                                "on the very videos it perturbs")

    @field_validator("perturbations")
    @classmethod
    def _named(cls, value: list[str]) -> list[str]:
        for entry in value:
            if ":" not in entry:
                raise ValueError(f"'{entry}' is not 'name:strength' (e.g. 'h264:28')")
            if entry.split(":", 1)[0].strip() == UNPERTURBED:
                raise ValueError(f"'{entry}': the unperturbed reference is added by `unperturbed: true`; remove it "
                                 "from the list")
        if len(set(value)) != len(value):
            raise ValueError("a perturbation is listed twice; list each once")
        return value

    def entries(self) -> list[tuple[str, dict[str, str]]]:
        """(row name, generator args) of every near-copy row: the training side, then the held-out side, each
        starting with its unperturbed reference when asked for."""
        listed = [(entry, *entry.split(":", 1)) for entry in self.perturbations]
        if self.unperturbed:
            listed.insert(0, (UNPERTURBED, UNPERTURBED, ""))
        out = []
        for source, prefix in (("train", ""), ("holdout", "holdout ")):
            for entry, name, strength in listed:
                out.append((f"{prefix}{entry}", {"perturbation": name.strip(), "strength": strength.strip(),
                                                 "source": source}))
        return out

    @staticmethod
    def table_stem(row: str) -> str:
        """The file name (without `.csv`) of a near-copy row's per-sample table: the row's name with every run of
        characters a file name should not hold (spaces, ':', the '/' of a frame-rate pair) as one '-'."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", row)
