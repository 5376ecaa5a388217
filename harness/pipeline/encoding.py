"""Phase 2, encoding: fit the encoder on the training clips, encode every split, measure reconstruction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.components import Encoder
from harness.context import RunContext
from harness.data import LatentSet, VideoSet
from harness.distributed import concat
from harness.metrics.reconstruction import psnr
from harness.pipeline.real_data import RealData
from harness.pipeline.stages import Chosen, Fitted, Stages, Stored

#: Reconstruction PSNR is measured on the first test videos (a random order): decoding a large test split costs
#: minutes on a CPU and narrows an aggregate that needs no more.
RECONSTRUCTION_VIDEOS = 64


@dataclass(frozen=True)
class Encoded:
    encoder: Fitted[Encoder]
    latents: dict[str, Stored[LatentSet]]
    summary: dict[str, Any]  # plugin, space, latent shape, reconstruction PSNR


def encode_real(stages: Stages, chosen: Chosen[Encoder], data: RealData, ctx: RunContext) -> Encoded:
    encoder = stages.fit("encoder-fit", chosen, _fit, train=data.videos["train"], ctx=ctx)
    latents = {split: encode(stages, encoder, videos, split, ctx) for split, videos in data.videos.items()}
    recon = stages.run("reconstruction", _reconstruction, encoder=encoder, videos=data.videos["test"],
                       latents=latents["test"], limit=RECONSTRUCTION_VIDEOS, ctx=ctx)
    summary = {"plugin": chosen.name, "space": chosen.factory.space,
               "latent_shape": list(latents["train"].value.clip_shape), "recon_psnr_db": recon.meta["recon_psnr_db"]}
    return Encoded(encoder, latents, summary)


def encode(stages: Stages, encoder: Fitted[Encoder], videos: Stored[VideoSet], split: str,
           ctx: RunContext) -> Stored[LatentSet]:
    """One split in the encoder's space (also another dataset's split, in a re-ID study)."""
    artifact = stages.run(f"encode-{split}", _encode, encoder=encoder, videos=videos, ctx=ctx)
    return Stored(artifact.key, LatentSet.load(artifact.path))


def _fit(encoder: Encoder, train: Stored[VideoSet], ctx: RunContext) -> None:
    encoder.fit(train.value, ctx)


def _encode(folder: Path, encoder: Fitted[Encoder], videos: Stored[VideoSet], ctx: RunContext) -> None:
    model = encoder.get()
    concat(ctx.group.map(lambda block: model.encode(videos.value.subset(block), ctx), len(videos.value))).save(folder)


def _reconstruction(folder: Path, encoder: Fitted[Encoder], videos: Stored[VideoSet], latents: Stored[LatentSet],
                    limit: int, ctx: RunContext) -> dict[str, float]:
    shown = np.arange(min(limit, len(latents.value)))
    decoded = encoder.get().decode(latents.value.subset(shown), ctx)
    return {"recon_psnr_db": round(psnr(videos.value.frames[shown], decoded.frames), 3), "videos": len(shown)}
