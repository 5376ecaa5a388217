"""Phase 2, encoding: fit the encoder on the training clips, encode every split, measure reconstruction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.components import Encoder
from harness.context import RunContext
from harness.data import LatentSet, VideoSet
from harness.metrics.reconstruction import psnr
from harness.pipeline.real_data import RealData
from harness.pipeline.stages import Chosen, Fitted, Stages, Stored


@dataclass(frozen=True)
class Encoded:
    encoder: Fitted[Encoder]
    latents: dict[str, Stored[LatentSet]]
    summary: dict[str, Any]  # plugin, space, latent shape, reconstruction PSNR


def encode_real(stages: Stages, chosen: Chosen[Encoder], data: RealData, ctx: RunContext) -> Encoded:
    encoder = stages.fit("encoder-fit", chosen, _fit, train=data.videos["train"], ctx=ctx)
    latents = {split: encode(stages, encoder, videos, split, ctx) for split, videos in data.videos.items()}
    recon = stages.run("reconstruction", _reconstruction, encoder=encoder, videos=data.videos["test"],
                       latents=latents["test"], ctx=ctx)
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
    encoder.get().encode(videos.value, ctx).save(folder)


def _reconstruction(folder: Path, encoder: Fitted[Encoder], videos: Stored[VideoSet], latents: Stored[LatentSet],
                    ctx: RunContext) -> dict[str, float]:
    decoded = encoder.get().decode(latents.value, ctx)
    return {"recon_psnr_db": round(psnr(videos.value.frames, decoded.frames), 3)}
