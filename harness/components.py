"""The plugin contract: one abstract base class per role. A factory registered through a hook subclasses one.

This module is the contract's single source (the hookspecs point here). Rules every role follows:

- Each class carries a pydantic `Config`; a spec entry's `args` are validated against it, unknown keys are errors.
- Components never pick their own device or seed: both come from the `RunContext` (`ctx.device`,
  `ctx.seed_for(...)`, `ctx.rng(...)`), and so does every other part of the run they may use (`ctx.dataset`,
  `ctx.encoder`, `ctx.privacy_filter`).
- Raise `harness.errors.UserError` with one sentence (which setting, what to do) for a problem the user can fix;
  inside a stage it is that stage's cached outcome. Any other exception is a bug of the plugin: in a generator it
  becomes the row's error with the traceback in `run.log`, elsewhere it stops the run.
- `version` is part of every cache key built from the component: bump it when a change alters outputs.
"""

from __future__ import annotations

import abc
import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from harness.metrics.intervals import Bootstrap
from harness.metrics.pairs import HEADS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from harness.context import RunContext
    from harness.data import Condition, LatentSet, PixelSamples, SampleSet, VideoSet
    from harness.plan import Estimate, Probe, Workload


class ComponentConfig(BaseModel):
    """Base of every component's `Config`: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PresetConfig(ComponentConfig):
    """A Config with a `preset`: fields left unset (None) take the preset's value from `presets`."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def setting(self, name: str) -> Any:
        value = getattr(self, name, None)
        return self.presets[self.preset][name] if value is None else value


class Component(abc.ABC):  # noqa: B024 - the roles below declare the abstract methods
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    #: Bump when a change alters outputs, so cached artifacts of the old behaviour are not reused.
    version: ClassVar[str] = "1"

    def __init__(self, config: ComponentConfig | None = None):
        self.config = config if config is not None else self.Config()

    def save_state(self, folder: Path) -> bool:
        """Write trained state to `folder` (safetensors or JSON, never pickle).

        :returns: False when there is nothing worth saving; the fit is then simply redone when needed.
        """
        return False

    def load_state(self, folder: Path) -> None:  # noqa: B027 - optional, like save_state
        """Restore what `save_state` wrote, instead of fitting."""

    def fit_report(self) -> dict[str, Any]:
        """What training measured (epochs, validation scores, epoch time), kept with the cached state."""
        return {}

    def plan(self, work: Workload, probe: Probe) -> list[Estimate]:
        """What this component's stages will cost (`harness plan`): sizes from `work`, seconds from timing a few
        calls of its models at the configured shapes with `probe`. Empty: not estimated. An estimate names the
        run's stage it stands for (`encoder-fit`, `encode`, `reid-fit`, `generator-fit`, `samples`, ...), so the
        plan can tell what is cached."""
        return []


class Dataset(Component):
    """A real video dataset."""

    @abc.abstractmethod
    def load(self, split: str, ctx: RunContext) -> VideoSet:
        """Fixed-length clips of one split.

        :param split: one of `splits()`.
        :returns: uint8 clips `[N, T, H, W]` at the configured fps and length, with their table (`video_id`,
            `patient_id`, `ef`, ...). Unreadable videos are skipped and counted in `load_report`; a folder that is
            missing or wrong is a UserError naming the setting.
        """

    def splits(self) -> tuple[str, ...]:
        """The splits the run loads: `train` (fitting), `val` (model selection), `test` (τ and evaluation), and
        optionally `holdout`: real videos used for none of those, which the holdout control returns so that its row
        is a fair real reference (as many videos as it has samples)."""
        return ("train", "val", "test")

    def load_report(self) -> dict[str, Any]:
        """Per split, counts worth putting in the results (e.g. `{"test": {"videos": 60, "skipped": 1}}`)."""
        return {}

    def planned_size(self) -> tuple[dict[str, int], int, int, str] | None:
        """For `harness plan`, before loading: videos per split, frames per clip, pixels per side, and where the
        counts come from. None: unknown."""
        return None


@runtime_checkable
class SimulatesPatients(Protocol):
    """A dataset that can draw new patients from its own generative process (the `phantom-fresh` control)."""

    def fresh(self, efs: list[float], ctx: RunContext, name: str) -> VideoSet:
        """New patients (never in the dataset) with the requested EFs, loaded like the dataset's own videos."""

    def recombined(self, sources: list[str], keep: Literal["motion", "content"], efs: list[float],
                   ctx: RunContext, name: str) -> VideoSet:
        """New videos that keep only the motion, or only the content, of the given videos of the dataset (the
        `motion-copy` and `content-copy` controls)."""


class Encoder(Component):
    """Maps clips to the space every later stage works in ("image" for identity, "latent" for a VAE)."""

    space: ClassVar[Literal["image", "latent"]] = "latent"

    def fit(self, train: VideoSet, ctx: RunContext) -> None:
        """Train on the training clips (optional). Called only when no cached state exists."""

    @abc.abstractmethod
    def encode(self, videos: VideoSet, ctx: RunContext) -> LatentSet:
        """Clips `[N, T, H, W]` -> latents `[N, T, C, h, w]`, with the same table, in the same order."""

    @abc.abstractmethod
    def decode(self, latents: LatentSet, ctx: RunContext) -> VideoSet:
        """The inverse of `encode`, back to uint8 clips (for figures and pixel-space tasks)."""

    def frame_shape(self, size: int) -> tuple[int, int, int]:
        """`(C, h, w)` of a `size` x `size` frame in this encoder's space."""
        return (1, size, size)


class Generator(Component):
    """A video generator.

    It returns clips in the run's encoder space (`output = "latent"`, a `SampleSet`), or pixel clips
    (`output = "pixels"`, a `PixelSamples` of uint8 grayscale `[N, T, H, W]` or RGB `[N, T, H, W, 3]` at the
    run's clip size, length and fps, `ctx.clip`), which the core converts to the dataset's grayscale and encodes
    with the run's encoder as a cached stage. Choose latents for a model trained in the run's own latent space
    (it skips a decode and re-encode); pixels for anything else: a model with its own autoencoder, or videos made
    elsewhere.
    """

    output: ClassVar[Literal["latent", "pixels"]] = "latent"
    #: True when samples are (variations of) real videos, e.g. a copying control: their frames never go into
    #: figures, which may be published.
    shows_real_frames: ClassVar[bool] = False
    #: True for a control: a generator whose answer is known (it copies, holds out, collapses, makes noise), so its
    #: row checks the metrics rather than competes; tables mark it.
    control: ClassVar[bool] = False
    #: The real splits `fit` receives (those of them the dataset has); the test split is never among them, it is
    #: reserved for calibration and evaluation.
    splits: ClassVar[tuple[str, ...]] = ("train", "val")

    def fit(self, data: dict[str, LatentSet], ctx: RunContext) -> None:
        """Train or index the training data (optional). Called only when no cached state exists.

        :param data: the latent sets of `splits`, by name.
        """

    @abc.abstractmethod
    def sample(self, conditions: list[Condition], ctx: RunContext) -> SampleSet | PixelSamples:
        """One video per condition.

        :param conditions: the requested videos (sample id, seed, EF), identical for every row of a benchmark.
        :returns: in the order of `conditions`, a SampleSet (`SampleSet.from_conditions`) whose clips have the
            training latents' shape `[T, C, h, w]` and are finite, or for `output = "pixels"` a PixelSamples
            (`PixelSamples.from_conditions`) of `ctx.clip`'s frames, size and fps. A sample must be a
            deterministic function of the fitted state and its `Condition.seed`. A generator that draws in batches
            records a `batch` provenance column (samples drawn together); `harness regenerate` redraws a whole
            batch, since batched arithmetic only reproduces with the same batch. Output of the wrong count, shape
            or with NaNs is the row's error, not a crash.
        """

    @property
    def sample_batch_size(self) -> int:
        """How many samples `sample` draws together. A run over several processes gives each a share of the
        conditions cut at multiples of it, so no sample's batch depends on the number of processes."""
        return 1

    def existing_samples(self, ctx: RunContext) -> list[Condition] | None:
        """For a generator whose videos already exist (e.g. a folder of them): one condition per video, which
        replace the benchmark's requested ones for its row. None (the default): the benchmark's conditions."""
        return None

    def report(self) -> dict[str, Any]:
        """Counts worth putting in the row's results (e.g. `{"skipped": 2}` unreadable files)."""
        return {}

    @property
    def uses_privacy_filter(self) -> bool:
        """True when samples depend on the run's re-ID model (`ctx.privacy_filter`); they are keyed by it."""
        return False


class PrivacyCheck(Protocol):
    """The run's privacy filter as generators see it (`ctx.privacy_filter`)."""

    def memorised(self, frames: np.ndarray) -> np.ndarray:
        """For frames `[N, C, h, w]` in the encoder's space: True where the re-ID model matches a training
        video above τ."""


class ReIdFilter(Component):
    """A re-identification model: embeds frames; the core scores pairs of embeddings with its heads.

    Heads: `pred` = the model's logit `w . |f_a - f_b| + b` (from `head_parameters`), and the model-free `l1`,
    `l2` and `corr` on the same features. All-pairs scoring is a core function (`harness.metrics.pairs`), chunked
    so that it never builds the full matrix.
    """

    heads: ClassVar[tuple[str, ...]] = HEADS

    @abc.abstractmethod
    def fit(self, train: LatentSet, val: LatentSet, ctx: RunContext) -> None:
        """Train on pairs of training videos, selecting the model on `val`."""

    @abc.abstractmethod
    def embed(self, videos: np.ndarray, ctx: RunContext, frames: list[int] | None = None) -> torch.Tensor:
        """Features `[N, F, D]` (finite) of the chosen frames (all when None) of clips `[N, T, C, h, w]`."""

    @abc.abstractmethod
    def head_parameters(self) -> tuple[torch.Tensor, float]:
        """`(w, b)` of the `pred` head's linear layer on `|f_a - f_b|`."""


class FeatureExtractor(Component):
    """Maps whole clips to one feature vector each: the space the fidelity columns (Fréchet distance, precision,
    k-NN recall, density, coverage) are computed in. It sees a clip, not a frame, as FVD's I3D does, so frames in the
    wrong order, frozen or flickering move a sample away from the real videos.

    The core hands it clips decoded by the run's encoder, real and generated alike: `input_shape`'s frames evenly
    spaced over the clip (every frame of a shorter clip), each area-resized to its size, grayscale
    `uint8 [N, frames, size, size]`.
    """

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple[int, int]:
        """`(frames, size)`: how many frames of a clip it reads, at how many pixels a side."""

    def fit(self, train: np.ndarray, ctx: RunContext) -> None:  # noqa: B027 - optional: a fixed model needs no fit
        """Train on the real training split's clips, never on a generator's samples."""

    @abc.abstractmethod
    def features(self, clips: np.ndarray, ctx: RunContext) -> torch.Tensor:
        """Features `[N, D]` of clips `uint8 [N, frames, size, size]`: finite, one row per clip."""


class Task(Component):
    """A downstream task trained on (synthetic) videos and evaluated on the real test split.

    The label is the table's `ef` column, the quantity generators are conditioned on; `predict` measures it, so
    the core can also check how well samples honour their requested value and re-label samples.
    """

    @abc.abstractmethod
    def fit(self, train: LatentSet, val: LatentSet, ctx: RunContext) -> None:
        """Train on `train` (labels in its table), choosing the best epoch on `val`. Too few videos to train on
        is a UserError (the strategy's cached outcome)."""

    @abc.abstractmethod
    def predict(self, data: LatentSet, ctx: RunContext) -> np.ndarray:
        """The label predicted for every video of `data`, in order."""

    @abc.abstractmethod
    def evaluate(self, test: LatentSet, ctx: RunContext, predictions: np.ndarray | None = None) -> dict[str, Any]:
        """Metrics (values with bootstrap intervals) of `predictions` (computed when not given) against `test`."""


@dataclass(frozen=True)
class Measured:
    """A row metric's value with its interval, or the one sentence saying why it has none."""

    value: float | None
    low: float | None = None
    high: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RowFeatures:
    """What a row metric sees, in one feature space (`space`): the row's samples, the real training videos and the
    real test videos (held out from every model of the run), each `[N, D]` on the run's device.

    - `"reid"`: the re-ID model's features of first frames, with the privacy analysis of its main head (`pmax`,
      `nearest`, `tau`; the all-pairs scoring behind `pmax` runs only when a metric reads it);
    - `"clip"`: the clip features fidelity is measured in (`fidelity.features`); no privacy analysis there.

    `boot` draws the intervals as the run's other intervals are drawn. `once(name, compute)` keeps what several
    metrics of the space need (nearest neighbours, a partition) so it is computed once per row and space.
    """

    samples: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor
    #: the re-ID space's best score of each sample against the training videos and that video's index `([N], [N])`
    scored: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)
    tau: float | None = None
    space: str = "reid"
    boot: Bootstrap = field(default_factory=Bootstrap)
    _shared: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def once(self, name: str, compute: Callable[[], Any]) -> Any:
        """`compute()`'s result, computed on the first call under `name` for these features."""
        if name not in self._shared:
            self._shared[name] = compute()
        return self._shared[name]

    @property
    def pmax(self) -> np.ndarray | None:
        """[N] best score of each sample against the training videos (re-ID space only)."""
        return self.once("scored", self.scored)[0] if self.scored is not None else None

    @property
    def nearest(self) -> np.ndarray | None:
        """[N] index of that training video."""
        return self.once("scored", self.scored)[1] if self.scored is not None else None


#: the feature spaces a row metric can be computed in (`RowMetric.spaces`)
SPACES = ("reid", "clip")


class RowMetric(Component):
    """An extra leaderboard column computed for every generator row of a spec that lists it under `metrics`, in
    each feature space of `spaces` the run has. Its definition is the first paragraph of its docstring."""

    label: ClassVar[str]
    #: "↑" when higher is better, "↓" when lower is better, "" when neither.
    direction: ClassVar[Literal["↑", "↓", ""]] = ""
    digits: ClassVar[int] = 3
    spaces: ClassVar[tuple[str, ...]] = ("reid",)
    #: the leaderboard tables the columns join (one per feature space): "plugin" (Plugin metrics), "peers" (Privacy
    #: (peers)) or "fidelity" (the Fidelity tables)
    group: ClassVar[Literal["plugin", "peers", "fidelity"]] = "plugin"

    @abc.abstractmethod
    def compute(self, features: RowFeatures) -> float | Measured | None:
        """The row's value, with its interval when it has one (`Measured`); None, or a `Measured` whose `reason`
        says why, when it is undefined for these samples. A `UserError`'s sentence becomes that reason."""

    def null(self) -> float | None:
        """The value a generator that never saw the training videos has by construction (the held-out videos'
        percentile, a chance AUC), or None: then real test videos, as many as a row has samples, are scored as a row."""
        return None


class Command(abc.ABC):
    """A `harness` subcommand added by a plugin. Register it under its words, e.g. `"data phantom"`."""

    help: ClassVar[str]

    @abc.abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's options."""

    @abc.abstractmethod
    def __call__(self, args: argparse.Namespace) -> int:
        """Run it; returns the exit code. Raise UserError for bad input (one sentence, exit 2)."""


@dataclass(frozen=True)
class Role:
    """A kind of thing plugins register (through the hook `register_<role>`): its base class, its name for people."""

    base: type
    label: str


ROLES: dict[str, Role] = {
    "datasets": Role(Dataset, "dataset"),
    "encoders": Role(Encoder, "encoder"),
    "generators": Role(Generator, "generator"),
    "reid_filters": Role(ReIdFilter, "re-ID filter"),
    "tasks": Role(Task, "task"),
    "metrics": Role(RowMetric, "metric"),
    "feature_extractors": Role(FeatureExtractor, "feature extractor"),
    "commands": Role(Command, "command"),
}
