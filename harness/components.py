"""Base classes of the plugin roles. A factory registered through a hook is a subclass of one of these.

Each class carries a pydantic `Config`; the `args` of a spec entry are validated against it (extra keys are errors).
Components never choose their own device or seed: both come from the run context.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import numpy as np
    import torch

    from harness.context import RunContext
    from harness.data import Condition, LatentSet, SampleSet, VideoSet


class ComponentConfig(BaseModel):
    """Base of every component's `Config`: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component:
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    #: Bump when a change alters outputs, so cached artifacts of the old behaviour are not reused.
    version: ClassVar[str] = "1"

    def __init__(self, config: ComponentConfig | None = None):
        self.config = config if config is not None else self.Config()

    def save_state(self, folder: Path) -> bool:
        """Write trained state to `folder` (safetensors or JSON, never pickle); False when there is none."""
        return False

    def load_state(self, folder: Path) -> None:
        """Restore what `save_state` wrote."""

    def fit_report(self) -> dict[str, Any]:
        """What training measured (epochs, validation scores, epoch time), kept with the cached state."""
        return {}


class Dataset(Component):
    """A real video dataset. `load` returns fixed-length clips of one split (`train`, `val` or `test`)."""

    def load(self, split: str, ctx: RunContext) -> VideoSet:
        raise NotImplementedError

    def load_report(self) -> dict[str, Any]:
        """Counts worth putting in the results (e.g. skipped unreadable videos)."""
        return {}


class Encoder(Component):
    """Maps clips to the space every later stage works in ("image" for identity, "latent" for a VAE)."""

    space: ClassVar[Literal["image", "latent"]] = "latent"

    def fit(self, train: VideoSet, ctx: RunContext) -> None:
        """Train on the training clips (optional). Called only when no cached state exists."""

    def encode(self, videos: VideoSet, ctx: RunContext) -> LatentSet:
        raise NotImplementedError

    def decode(self, latents: LatentSet, ctx: RunContext) -> VideoSet:
        raise NotImplementedError


class Generator(Component):
    """A video generator working in the encoder's space.

    `fit` sees the `train` and `val` latent sets only; the test split is reserved for calibration and evaluation.
    `sample` returns one video per condition, in the same order, each with a provenance record.
    """

    def fit(self, data: dict[str, LatentSet], ctx: RunContext) -> None:
        """Train or index the training data (optional)."""

    #: True when samples are (variations of) real videos, e.g. a copying control: their frames never go into
    #: figures, which may be published.
    shows_real_frames: ClassVar[bool] = False

    def sample(self, conditions: list[Condition], ctx: RunContext) -> SampleSet:
        raise NotImplementedError

    @property
    def uses_privacy_filter(self) -> bool:
        """True when samples depend on the run's re-ID model (`ctx.components["privacy_filter"]`)."""
        return False


class ReIdFilter(Component):
    """A re-identification model: embeds frames; the core scores pairs of embeddings with its heads.

    Heads: `pred` = the model's logit `w . |f_a - f_b| + b` (from `head_parameters`), and the model-free `l1`,
    `l2` and `corr` on the same features. All-pairs scoring is a core function (`harness.metrics.pairs`), chunked
    so that it never builds the full matrix.
    """

    heads: ClassVar[tuple[str, ...]] = ("pred", "l1", "l2", "corr")

    def fit(self, train: LatentSet, val: LatentSet, ctx: RunContext) -> None:
        raise NotImplementedError

    def embed(self, videos: np.ndarray, ctx: RunContext, frames: list[int] | None = None) -> torch.Tensor:
        """Features `[N, F, D]` of the chosen frames (all when None) of clips `[N, T, C, h, w]`."""
        raise NotImplementedError

    def head_parameters(self) -> tuple[torch.Tensor, float]:
        """`(w, b)` of the `pred` head's linear layer on `|f_a - f_b|`."""
        raise NotImplementedError


class Task(Component):
    """A downstream task trained on (synthetic) videos and evaluated on the real test split.

    The label is the table's `ef` column, the quantity generators are conditioned on; `predict` measures it, so
    the core can also check how well samples honour their requested value and re-label samples.
    """

    def fit(self, train: LatentSet, val: LatentSet, ctx: RunContext) -> None:
        """Train on `train` (labels in its table), choosing the best epoch on `val`."""
        raise NotImplementedError

    def predict(self, data: LatentSet, ctx: RunContext) -> np.ndarray:
        """The label predicted for every video of `data`."""
        raise NotImplementedError

    def evaluate(self, test: LatentSet, ctx: RunContext, predictions: np.ndarray | None = None) -> dict[str, Any]:
        """Metrics (with intervals) of `predictions` (computed when not given) against `test`'s labels."""
        raise NotImplementedError


ROLE_BASES: dict[str, type[Component]] = {
    "datasets": Dataset,
    "encoders": Encoder,
    "generators": Generator,
    "reid_filters": ReIdFilter,
    "tasks": Task,
    "metrics": object,  # metric additions are plain callables
}
