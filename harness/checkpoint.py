"""Resumable training: a training loop's whole state, saved inside its stage's temporary folder.

A stage that trains for hours must not start again from zero when its run is killed. The cache keeps a killed
stage's `checkpoint/` folder and hands it to the next build of the same key (`ArtifactCache.writing`); a loop saves
its state there every so many steps or minutes and, when it starts, resumes from the last save. The state is
everything the remaining steps depend on — model, EMA, optimiser, scheduler, step, and every random generator the
loop draws from — so a resumed run reaches the same weights as an uninterrupted one on the same machine.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import UserError

log = logging.getLogger("harness")


#: Stands for torch's global random generators (the CPU's and every GPU's) in a checkpoint's state.
TORCH_RNG = "torch global generators"


class ForeignCheckpoint(UserError):
    """A checkpoint that another configuration wrote. It is about the cache's leftovers, not the stage's inputs, so
    no stage caches it as its outcome: once the file is gone, the stage builds."""

    from_external_stage = True


@dataclass(frozen=True)
class CheckpointPolicy:
    """How often a training loop saves its state (a run setting: it never changes results, so no cache key)."""

    every_steps: int | None = None
    every_minutes: float = 10.0

    def __post_init__(self):
        if (self.every_steps is not None and self.every_steps < 1) or not self.every_minutes > 0:
            raise UserError("--checkpoint-steps and --checkpoint-minutes must be positive.")


@dataclass
class TrainingCheckpoint:
    """One loop's checkpoint file in a stage's checkpoint folder (None: the loop runs outside a cached stage).

    `state` maps names to what the loop must restore: modules, optimisers, schedulers (anything with
    `state_dict`), numpy `Generator`s, torch `Generator`s, and `TORCH_RNG` for torch's global generators.
    """

    folder: Path | None
    name: str
    identity: str  # the stage key: a checkpoint of another configuration is never resumed
    policy: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    writes: bool = True  # False on the ranks other than 0 of a run over several processes: they only resume
    _last_save: float = field(default_factory=time.monotonic)

    @property
    def path(self) -> Path | None:
        return self.folder / f"{self.name}.pt" if self.folder is not None else None

    def resume(self, state: dict[str, Any]) -> int:
        """Restore `state` from the last save; the step to continue from (0 when there is none)."""
        if self.path is None or not self.path.is_file():
            return 0
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        if saved.get("identity") != self.identity or set(saved["state"]) != set(state):
            raise ForeignCheckpoint(f"{self.path} was written by another configuration of this stage; delete it (or "
                                    "run `harness cache gc --leftovers-only`) to train from the start.")
        for name, target in state.items():
            _restore(target, saved["state"][name])
        log.info("%s: resumed from the checkpoint at step %d", self.name, saved["step"])
        return int(saved["step"])

    def save_if_due(self, step: int, state: dict[str, Any], force: bool = False) -> None:
        """Save after `step` steps when the policy's steps or minutes have passed, or now when `force` (the end of
        a phase that later phases build on, so a resumed run skips it)."""
        if self.path is None or not self.writes:
            return
        every = self.policy.every_steps
        due = force or (every is not None and step % every == 0) or \
            time.monotonic() - self._last_save >= 60 * self.policy.every_minutes
        if not due:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {"identity": self.identity, "step": step, "state": {k: _capture(v) for k, v in state.items()}}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.path)  # a kill mid-save leaves the previous checkpoint whole
        self._last_save = time.monotonic()


class LoopValues(dict):
    """Plain values a loop carries from step to step (the best score so far, a patience counter), saved with it."""

    def state_dict(self) -> dict[str, Any]:
        return dict(self)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.clear()
        self.update(saved)


def _capture(target: Any) -> Any:
    if isinstance(target, str):  # TORCH_RNG
        return {"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}
    if isinstance(target, np.random.Generator):
        return _ints_as_text(target.bit_generator.state)
    if isinstance(target, torch.Generator):
        return target.get_state()
    return target.state_dict()


def _restore(target: Any, saved: Any) -> None:
    if isinstance(target, str):
        torch.set_rng_state(saved["cpu"])
        if saved["cuda"]:
            torch.cuda.set_rng_state_all(saved["cuda"])
    elif isinstance(target, np.random.Generator):
        target.bit_generator.state = _text_as_ints(saved)
    elif isinstance(target, torch.Generator):
        target.set_state(saved)
    else:
        target.load_state_dict(saved)


def _ints_as_text(state: dict[str, Any]) -> dict[str, Any]:
    """A numpy bit generator's state holds 128-bit integers; they are kept as decimal strings."""
    return {k: _ints_as_text(v) if isinstance(v, dict) else (str(v) if isinstance(v, int) else v)
            for k, v in state.items()}


def _text_as_ints(state: dict[str, Any]) -> dict[str, Any]:
    return {k: _text_as_ints(v) if isinstance(v, dict) else (int(v) if isinstance(v, str) and v.isdigit() else v)
            for k, v in state.items()}
