"""The run context handed to every component: device, seeds, cache, progress, and typed access to the run's parts.

Components never pick their own device or seed. The parts of the run a component may use (the dataset, its clip
settings, the encoder, the privacy filter) are typed accessors; the encoder and the filter are made ready (their
cached state loaded) on first use, so a warm run that never touches them never loads a model.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.cache import CHECKPOINTS, ArtifactCache
from harness.checkpoint import CheckpointPolicy, TrainingCheckpoint
from harness.distributed import SINGLE, ProcessGroup
from harness.hashing import derive_seed

if TYPE_CHECKING:
    from harness.components import Dataset, Encoder, PrivacyCheck
    from harness.data import ClipSpec


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def mixed_precision(device: torch.device):
    """bf16 autocast on a GPU (the paper presets); float32 on the CPU, so CPU runs stay bit-exact."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def set_threads(threads: int | None) -> int:
    """Use `threads` CPU threads for torch and numba (`--threads` or $HARNESS_THREADS; default: torch's own).

    Results can depend on the thread count (reductions split differently), so it is recorded in the manifest.
    """
    threads = threads or int(os.environ.get("HARNESS_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
        os.environ["NUMBA_NUM_THREADS"] = str(threads)  # read when numba is first imported
        if "numba" in sys.modules:
            sys.modules["numba"].set_num_threads(threads)
    return torch.get_num_threads()


@dataclass(frozen=True)
class RunContext:
    device: torch.device
    seed: int
    cache: ArtifactCache
    show_progress: bool = True
    checkpoint_policy: CheckpointPolicy = CheckpointPolicy()
    group: ProcessGroup = SINGLE  # the processes of a torchrun run (`harness.distributed`)
    _stage: tuple[Path, str] | None = None  # the checkpoint folder and key of the stage being built
    _dataset: Dataset | None = None
    _clip: ClipSpec | None = None
    _encoder: Callable[[], Encoder] | None = None
    _privacy_filter: PrivacyCheck | None = None

    def using(self, *, dataset: Dataset | None = None, clip: ClipSpec | None = None,
              encoder: Callable[[], Encoder] | None = None, privacy_filter: PrivacyCheck | None = None) -> RunContext:
        """A context that also offers the given parts of the run (`encoder` is a thunk that makes it ready)."""
        changes = {"_dataset": dataset, "_clip": clip, "_encoder": encoder, "_privacy_filter": privacy_filter}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def in_stage(self, folder: Path, key: str) -> RunContext:
        """The context a stage's build receives: training loops in it save their checkpoints in `folder`."""
        return replace(self, _stage=(folder / CHECKPOINTS, key))

    def checkpoint(self, name: str) -> TrainingCheckpoint:
        """The checkpoint of a training loop called `name` in the stage being built (`harness.checkpoint`); outside
        a stage it saves nothing and resumes from nothing. Every rank resumes from it; only rank 0 saves."""
        folder, key = self._stage or (None, "")
        return TrainingCheckpoint(folder, name, key, self.checkpoint_policy, writes=self.group.main)

    @property
    def cache_identity(self) -> dict[str, int]:
        """What a stage that receives the context reads from it: the seed (devices and process counts must not
        change results)."""
        return {"seed": self.seed}

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            raise RuntimeError("the run's dataset is not loaded yet")
        return self._dataset

    @property
    def clip(self) -> ClipSpec:
        """The clips of the run (frames, height, width, fps): what a pixel-space generator must produce."""
        if self._clip is None:
            raise RuntimeError("the run's clips are not known before its data is loaded")
        return self._clip

    @property
    def encoder(self) -> Encoder:
        """The run's encoder, fitted (a pixel-space task decodes with it; a control may encode with it)."""
        if self._encoder is None:
            raise RuntimeError("the run's encoder is not fitted yet")
        return self._encoder()

    @property
    def privacy_filter(self) -> PrivacyCheck | None:
        """The run's privacy filter (None without a re-ID model)."""
        return self._privacy_filter

    def seed_for(self, *names: Any) -> int:
        return derive_seed(self.seed, *names)

    def rng(self, *names: Any) -> np.random.Generator:
        return np.random.default_rng(self.seed_for(*names))

    def torch_generator(self, *names: Any) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed_for(*names))

    def progress(self, iterable: Iterable | None = None, desc: str = "", total: int | None = None, **kw):
        return tqdm(iterable, desc=desc, total=total, disable=not self.show_progress, leave=False,
                    dynamic_ncols=True, **kw)

    def cached_folder(self, name: str, key: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """A plugin's own cached folder (e.g. a written dataset): built once, atomically, then reused."""
        stage = f"plugin-{name}"
        artifact, _ = self.cache.get_or_build(stage, self.cache.key(stage, **key),
                                              lambda folder, meta: (meta.update(key=key), build(folder)))
        return artifact.path
