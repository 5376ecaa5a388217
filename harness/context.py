"""The run context handed to every component: device, seeds, cache, progress and logging."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.cache import ArtifactCache
from harness.hashing import derive_seed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def mixed_precision(device: torch.device):
    """bf16 autocast on a GPU (the paper presets); float32 on the CPU, so CPU runs stay bit-exact."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@dataclass
class RunContext:
    device: torch.device
    seed: int
    cache: ArtifactCache
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("harness"))
    show_progress: bool = True
    #: The run's components, for plugins that need them (e.g. a control that must encode fresh videos).
    components: dict[str, Any] = field(default_factory=dict)

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
        cache_key = self.cache.key(stage, **key)
        artifact = self.cache.get(stage, cache_key)
        if artifact is None:
            with self.cache.writing(stage, cache_key, {"key": key}) as tmp:
                build(tmp)
            artifact = self.cache.get(stage, cache_key)
        return artifact.path
