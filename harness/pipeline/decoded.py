"""The decode that the pixel tests share: every `privacy.motion.frame_gap`-th frame of a latent set's clips decoded
once by the run's encoder, and what the motion test (`harness.pipeline.motion`: optical-flow profiles) and the copy
test (`harness.pipeline.copy`: small frames) keep of it.

Real videos are decoded too, so a sample and the real video it may copy pass through the same decoder. Decoding is
the costly part of both tests; doing it once halves it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.components import Encoder
from harness.context import RunContext
from harness.data import LatentSet
from harness.metrics.copy import small_frames
from harness.metrics.motion import motion_profiles
from harness.pipeline.stages import Fitted, Stages, Stored

#: videos decoded at a time: bounds the memory of a large split's decoded frames
CHUNK_VIDEOS = 256


@dataclass(frozen=True)
class Decoding:
    """How the clips are decoded and what is kept: motion profiles at `flow_size` pixels, frames area-resized to
    `copy_size` pixels (None: that test is off)."""

    encoder: Fitted[Encoder]
    gap: int
    precision: str  # the decoder's precision: float32 or bfloat16
    flow_size: int | None = None
    copy_size: int | None = None

    @property
    def cache_identity(self) -> dict[str, Any]:
        return {"encoder": self.encoder.key, "gap": self.gap, "precision": self.precision,
                "flow_size": self.flow_size, "copy_size": self.copy_size}


@dataclass(frozen=True)
class Decoded:
    """A latent set's decoded clips as the tests keep them."""

    profiles: np.ndarray | None  # [N, F - 1, 4] motion profiles of the F decoded frames of each clip
    frames: np.ndarray | None  # float32 [N, F, copy_size, copy_size]


def decoded(stages: Stages, name: str, decoding: Decoding, latents: Stored[LatentSet], ctx: RunContext
            ) -> Stored[Decoded]:
    """The cached decode of a latent set (stage `name`): the motion and copy tests ask for the same stage and
    the second one reads the first one's artifact."""
    artifact = stages.run(name, _decode, decoding=decoding, latents=latents, ctx=ctx)
    kept = {part: np.load(artifact.path / f"{part}.npy", mmap_mode="r") if (artifact.path / f"{part}.npy").exists()
            else None for part in ("profiles", "frames")}
    return Stored(artifact.key, Decoded(**kept))


def _decode(folder: Path, decoding: Decoding, latents: Stored[LatentSet], ctx: RunContext) -> None:
    model, clips, table = decoding.encoder.get(), latents.value.latents, latents.value.table
    unique, inverse = _distinct(clips)  # a collapsed or copying generator repeats clips: decode each once
    threads = torch.get_num_threads()
    frames = len(range(0, clips.shape[1], decoding.gap))

    def shard(block: range) -> list[np.ndarray]:  # this process's distinct clips, in chunks as one process cuts them
        side = decoding.copy_size or 0
        profiles, small = [np.zeros((0, max(frames - 1, 0), 4))], [np.zeros((0, frames, side, side), np.float32)]
        for start in ctx.progress(range(block.start, block.stop, CHUNK_VIDEOS), desc="decode (pixel tests)"):
            chosen = unique[start:min(start + CHUNK_VIDEOS, block.stop)]
            chunk = LatentSet(np.asarray(clips[chosen, ::decoding.gap]), table.iloc[chosen].reset_index(drop=True))
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=decoding.precision == "bfloat16"):
                pixels = np.asarray(model.decode(chunk, ctx).frames)
            if decoding.flow_size is not None:
                profiles.append(motion_profiles(pixels, decoding.flow_size, threads))
            if decoding.copy_size is not None:
                small.append(small_frames(torch.from_numpy(pixels), decoding.copy_size).numpy())
        return [np.concatenate(profiles), np.concatenate(small)]

    parts = ctx.group.map(shard, len(unique), CHUNK_VIDEOS)
    if decoding.flow_size is not None:
        np.save(folder / "profiles.npy", np.concatenate([p for p, _ in parts])[inverse].astype(np.float32))
    if decoding.copy_size is not None:
        np.save(folder / "frames.npy", np.concatenate([f for _, f in parts])[inverse])


def _distinct(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The index of the first of every distinct clip, and for every clip the position of its distinct clip."""
    seen: dict[bytes, int] = {}
    first, inverse = [], np.empty(len(clips), np.int64)
    for i, clip in enumerate(clips):
        key = hashlib.blake2b(np.ascontiguousarray(clip).tobytes(), digest_size=16).digest()
        inverse[i] = seen.setdefault(key, len(first))
        if inverse[i] == len(first):
            first.append(i)
    return np.asarray(first, np.int64), inverse
