"""The decode that the pixel tests and fidelity share: a latent set's clips decoded once by the run's encoder (every
frame when motion's position view or fidelity is on, else every `privacy.motion.frame_gap`-th), and what the motion
test (`harness.pipeline.motion`: optical-flow step profiles and positions), the copy test (`harness.pipeline.copy`:
small frames) and the fidelity feature extractor (`harness.pipeline.fidelity`: small clips) keep of it.

Real videos are decoded too, so a sample and the real video it is compared with pass through the same decoder.
Decoding is the costly part of these tests; doing it once for all of them saves the rest.
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
from harness.metrics.motion import motion_profiles, positions
from harness.pipeline.stages import Fitted, Stages, Stored

#: videos decoded at a time: bounds the memory of a large split's decoded frames
CHUNK_VIDEOS = 256


@dataclass(frozen=True)
class Decoding:
    """How the clips are decoded and what is kept: motion step profiles of every `gap`-th frame at `flow_size`
    pixels and, with `positions`, the positions of every frame; every `gap`-th frame area-resized to `copy_size`
    pixels; `clip` = (frames, size): that many frames evenly spaced over the clip (all of a shorter clip's),
    area-resized to size x size, as uint8 (None: that test is off)."""

    encoder: Fitted[Encoder]
    gap: int
    precision: str  # the decoder's precision: float32 or bfloat16
    flow_size: int | None = None
    copy_size: int | None = None
    positions: bool = False  # motion's position view: every frame is decoded
    clip: tuple[int, int] | None = None  # the fidelity feature extractor's input: every frame is decoded

    @property
    def stride(self) -> int:
        """Every how many frames the clips are decoded."""
        return 1 if self.positions or self.clip is not None else self.gap

    @property
    def cache_identity(self) -> dict[str, Any]:
        return {"encoder": self.encoder.key, "gap": self.gap, "precision": self.precision,
                "flow_size": self.flow_size, "copy_size": self.copy_size, "positions": self.positions,
                **({"clip": list(self.clip)} if self.clip is not None else {})}


@dataclass(frozen=True)
class Decoded:
    """A latent set's decoded clips as the tests keep them."""

    profiles: np.ndarray | None  # [N, F - 1, 4] motion step profiles of the F kept frames of each clip
    positions: np.ndarray | None  # [N, T, 4] motion positions at each of a clip's T frames
    frames: np.ndarray | None  # float32 [N, F, copy_size, copy_size]
    clips: np.ndarray | None = None  # uint8 [N, frames, size, size]: the fidelity feature extractor's input


def decoded(stages: Stages, name: str, decoding: Decoding, latents: Stored[LatentSet], ctx: RunContext
            ) -> Stored[Decoded]:
    """The cached decode of a latent set (stage `name`): the motion and copy tests ask for the same stage and
    the second one reads the first one's artifact."""
    artifact = stages.run(name, _decode, decoding=decoding, latents=latents, ctx=ctx)
    kept = {part: np.load(artifact.path / f"{part}.npy", mmap_mode="r") if (artifact.path / f"{part}.npy").exists()
            else None for part in ("profiles", "positions", "frames", "clips")}
    return Stored(artifact.key, Decoded(**kept))


def _decode(folder: Path, decoding: Decoding, latents: Stored[LatentSet], ctx: RunContext) -> None:
    model, clips, table = decoding.encoder.get(), latents.value.latents, latents.value.table
    unique, inverse = _distinct(clips)  # a collapsed or copying generator repeats clips: decode each once
    threads, every = torch.get_num_threads(), decoding.gap // decoding.stride
    count, kept = len(range(0, clips.shape[1], decoding.stride)), len(range(0, clips.shape[1], decoding.gap))
    side = decoding.copy_size or 0
    frames, size = decoding.clip or (0, 0)
    spaced = np.linspace(0, count - 1, min(frames, count)).round().astype(int)  # the frames the extractor reads
    empty = {"profiles": np.zeros((0, max(kept - 1, 0), 4)), "positions": np.zeros((0, count, 4)),
             "frames": np.zeros((0, kept, side, side), np.float32),
             "clips": np.zeros((0, len(spaced), size, size), np.uint8)}

    def shard(block: range) -> dict[str, np.ndarray]:  # this process's distinct clips, in chunks as one process cuts
        parts = {name: [array] for name, array in empty.items()}
        for start in ctx.progress(range(block.start, block.stop, CHUNK_VIDEOS), desc="decode (pixel tests)"):
            chosen = unique[start:min(start + CHUNK_VIDEOS, block.stop)]
            chunk = LatentSet(np.asarray(clips[chosen, ::decoding.stride]), table.iloc[chosen].reset_index(drop=True))
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=decoding.precision == "bfloat16"):
                pixels = np.asarray(model.decode(chunk, ctx).frames)
            if decoding.flow_size is not None:
                parts["profiles"].append(motion_profiles(pixels[:, ::every], decoding.flow_size, threads))
                if decoding.positions:
                    parts["positions"].append(positions(motion_profiles(pixels, decoding.flow_size, threads)))
            if decoding.copy_size is not None:
                parts["frames"].append(small_frames(torch.from_numpy(pixels[:, ::every]), decoding.copy_size).numpy())
            if decoding.clip is not None:
                small = small_frames(torch.from_numpy(pixels[:, spaced]), size)
                parts["clips"].append(small.round().clamp(0, 255).to(torch.uint8).numpy())
        return {name: np.concatenate(arrays) for name, arrays in parts.items()}

    parts = ctx.group.map(shard, len(unique), CHUNK_VIDEOS)
    wanted = {"profiles": decoding.flow_size is not None, "positions": decoding.flow_size is not None
              and decoding.positions, "frames": decoding.copy_size is not None, "clips": decoding.clip is not None}
    for name in (name for name, on in wanted.items() if on):
        array = np.concatenate([part[name] for part in parts])[inverse]
        np.save(folder / f"{name}.npy", array if name == "clips" else array.astype(np.float32))


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
