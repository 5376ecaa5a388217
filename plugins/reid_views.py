"""Perturbed copies of the training videos for the `siamese` model's `perturbed` pairs: each video's own file
through a perturbation of `harness_plugins.perturbations` at a random strength, a few of its frames encoded by the
run's encoder, made once per training set and shared by every re-ID model of the run.

Many copies of a few frames each see more perturbations than a few whole copies for the same cost (the encoder's
frames are most of it): on the phantom default (three models pooled, first-frame memorised %), 8 copies of 4 frames
against 2 copies of 16 took gain 1.1 from 52 to 65 %, scale 0.95 from 46 to 55 %, shift 4 px from 11 to 14 %, crop
0.9 from 7 to 12 % (the encoder's round trip stayed at 71 %); perturbed held-out videos stayed at 2-8 %."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from harness.context import RunContext
from harness.data import LatentSet, VideoSet
from harness.hashing import stable_hash
from harness_plugins.perturbations import PERTURBATIONS, Video, as_clip, perturb, perturbed_clip
from harness_plugins.perturbations import VERSION as PERTURBATIONS_VERSION


def shared_views(train: LatentSet, views: int, frames: int, ctx: RunContext) -> np.ndarray:
    """`training_views`, made once per training set (latents, so data and encoder) and count, in a cached folder
    that every re-ID model of the run shares: the models of `privacy.reid_seeds` differ in their initialisation and
    pairs, not in the copies they see (making the copies costs about as much as training two models)."""
    digest = hashlib.blake2b(np.ascontiguousarray(train.latents).tobytes(), digest_size=16).hexdigest()
    key = {"latents": digest, "views": views, "frames": frames, "perturbations": stable_hash(
        {name: p.strengths for name, p in PERTURBATIONS.items()}), "version": PERTURBATIONS_VERSION}
    rng = np.random.default_rng(int(digest[:15], 16))
    folder = ctx.cached_folder("siamese-views", key, lambda tmp: np.save(
        tmp / "views.npy", training_views(train, views, frames, rng, ctx)))
    return np.load(folder / "views.npy")


def training_views(train: LatentSet, views: int, frames: int, rng: np.random.Generator, ctx: RunContext,
                   chunk: int = 64) -> np.ndarray:
    """`[N * views, frames, C, h, w]` latents of perturbed copies of every training video (copy k of video i at
    i * views + k): each through a perturbation and strength drawn at random from every known one, from the video's
    own file (read as the datasets read it) or, without one, from its decoded clip; `frames` of its frames, drawn
    at random, are encoded by the run's encoder as one short clip (exactly the frames' own latents for a frame-wise
    encoder such as the built-in VAE). These are the paths a memorising generator's output takes
    (`harness_plugins.perturbations`)."""
    encoder, clip = ctx.encoder, ctx.clip
    names = list(PERTURBATIONS)
    table = train.table.loc[np.repeat(np.arange(len(train)), views)].reset_index(drop=True)
    parts = []
    decoded: dict[int, np.ndarray] = {}  # the last video an `encoder` copy (or one without a file) needed, decoded

    def decoded_clip(video: int) -> np.ndarray:  # a video's copies are consecutive rows: one decode serves them all
        if video not in decoded:
            decoded.clear()
            one = LatentSet(np.asarray(train.latents[[video]]), train.table.iloc[[video]].reset_index(drop=True))
            decoded[video] = np.asarray(encoder.decode(one, ctx).frames[0])
        return decoded[video]

    for start in ctx.progress(range(0, len(table), chunk), desc="re-ID training views"):
        rows = range(start, min(start + chunk, len(table)))
        chosen = []
        for i in rows:
            name = names[rng.integers(len(names))]
            strength = PERTURBATIONS[name].strengths[rng.integers(len(PERTURBATIONS[name].strengths))]
            path = Path(str(table["source_file"].iloc[i] or ""))
            if name != "encoder" and path.is_file():
                fps = table["source_fps"].iloc[i] if "source_fps" in table else None
                chosen.append(_some_frames(perturbed_clip(path, fps, name, strength, rng, clip), frames, rng))
                continue
            video = decoded_clip(i // views)
            if name == "encoder":
                for _ in range(int(strength) - 1):
                    one = VideoSet(video[None], table.iloc[[i]])
                    video = np.asarray(encoder.decode(encoder.encode(one, ctx), ctx).frames[0])
            else:
                video = as_clip(perturb(Video(video, clip.fps, clip.fps), name, strength, rng), clip)
            chosen.append(_some_frames(video, frames, rng))
        parts.append(np.asarray(encoder.encode(VideoSet(np.stack(chosen), table.iloc[list(rows)]), ctx).latents,
                                dtype=np.float32))
    return np.concatenate(parts)


def _some_frames(video: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct frames of a clip (all of a shorter clip), drawn at random, in their order."""
    return video[np.sort(rng.choice(len(video), min(count, len(video)), replace=False))]


def perturbed_partners(pairs: np.ndarray, videos: int, views: int, frames: int, share: float,
                       rng: np.random.Generator) -> np.ndarray:
    """`pairs` with `share` of them (positives and negatives alike, so a perturbation is no cue) taking their
    second frame from a random frame of a random perturbed copy of the second video (video index
    `videos + video * views + copy`, frame index below `frames`)."""
    out = pairs.copy()
    chosen = rng.random(len(pairs)) < share
    out[chosen, 2] = videos + out[chosen, 2] * views + rng.integers(0, views, int(chosen.sum()))
    out[chosen, 3] = rng.integers(0, frames, int(chosen.sum()))
    return out


def frames_of(x: torch.Tensor, views: torch.Tensor | None, videos: np.ndarray, frames: np.ndarray) -> torch.Tensor:
    """Frames `[len(videos), C, h, w]` by (video, frame) index: below `len(x)` the training videos, from there on
    their perturbed copies."""
    if views is None:
        return x[videos, frames]
    copy = videos >= len(x)
    out = torch.empty((len(videos), *x.shape[2:]), dtype=x.dtype)
    out[torch.from_numpy(~copy)] = x[videos[~copy], frames[~copy]]
    out[torch.from_numpy(copy)] = views[videos[copy] - len(x), frames[copy]]
    return out
