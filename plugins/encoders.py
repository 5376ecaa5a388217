"""Built-in encoders: `identity` (image space) and `vae` (a diffusers AutoencoderKL, 4 channels at 1/8 size)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from harness import hookimpl
from harness.checkpoint import TORCH_RNG
from harness.components import ComponentConfig, Encoder
from harness.context import RunContext
from harness.data import LatentSet, VideoSet
from harness.errors import UserError


def to_unit(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1]."""
    return torch.from_numpy(np.array(frames, dtype=np.float32)) / 127.5 - 1.0


def to_pixels(x: torch.Tensor) -> np.ndarray:
    return ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()


class Identity(Encoder):
    """Image space as an encoder: pixels scaled to [-1, 1], one channel, full resolution."""

    space: ClassVar = "image"

    def encode(self, videos: VideoSet, ctx: RunContext) -> LatentSet:
        x = to_unit(videos.frames)[:, :, None].to(torch.float16)
        return LatentSet(x.numpy(), videos.table.copy())

    def decode(self, latents: LatentSet, ctx: RunContext) -> VideoSet:
        x = torch.from_numpy(np.asarray(latents.latents, dtype=np.float32)).mean(dim=2)
        return VideoSet(to_pixels(x), latents.table.copy())


PRESETS = {
    # Small enough to train on a laptop CPU in minutes, fully convolutional so it trains on crops. Two norm
    # groups, not one per channel: per-channel normalisation of the 8-channel first layers discards intensity
    # and cost about 8 dB of reconstruction PSNR on the phantom at equal training time.
    "cpu": dict(in_channels=1, out_channels=1, block_out_channels=(8, 16, 32, 64), layers_per_block=1,
                norm_num_groups=2, mid_block_add_attention=False),
    # EchoNet-Synthetic's published shape (CompVis ch 128, ch_mult 1,2,2,4, 2 res blocks, RGB input).
    "echonet-synthetic": dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 512),
                              layers_per_block=2, norm_num_groups=32),
}


class VAE(Encoder):
    """A diffusers AutoencoderKL: 112x112 grayscale frames -> 4x14x14 latents, scaled by `scaling_factor`.

    The `cpu` preset is trained on the dataset's training frames with L1 + a small KL term (no pretrained
    perceptual network exists offline); `weights` loads any local diffusers folder instead (`save_pretrained`).
    """

    space: ClassVar = "latent"
    version = "2"

    class Config(ComponentConfig):
        preset: Literal["cpu", "echonet-synthetic"] = "cpu"
        weights: Path | None = Field(None, description="local diffusers AutoencoderKL folder to load")
        train_steps: int = Field(1500, ge=0)
        batch_size: PositiveInt = 32
        crop: PositiveInt = Field(48, description="training crop size (multiple of 8)")
        lr: PositiveFloat = 2e-3
        kl_weight: float = Field(1e-6, ge=0)
        sample_posterior: bool = Field(False, description="encode with a posterior sample instead of its mode")
        batch_frames: PositiveInt | None = Field(
            None, description="frames per encode/decode batch; unset: 16 on a CPU, where batches that stay in the "
                              "processor's caches run about twice as fast as 128, and 256 on a GPU")

    def __init__(self, config=None):
        super().__init__(config)
        self.model = None

    def _build(self):
        from diffusers import AutoencoderKL

        shape = PRESETS[self.config.preset]
        n = len(shape["block_out_channels"])
        return AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                             latent_channels=4, sample_size=112, **shape)

    def _load(self, folder: Path):
        from diffusers import AutoencoderKL

        if not (folder / "config.json").is_file():
            raise UserError(f"vae: {folder} is not a diffusers AutoencoderKL folder (no config.json); set "
                            "encoder.args.weights to a folder written by save_pretrained.")
        if not (folder / "diffusion_pytorch_model.safetensors").is_file():
            raise UserError(f"vae: {folder} has no diffusion_pytorch_model.safetensors; convert the weights to "
                            "safetensors (pickled .bin files are not loaded, they can run code).")
        model = AutoencoderKL.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False)
        want = PRESETS[self.config.preset]["block_out_channels"]
        if tuple(model.config.block_out_channels) != tuple(want) or model.config.latent_channels != 4:
            raise UserError(f"vae: weights in {folder} have block_out_channels {model.config.block_out_channels}, "
                            f"but preset '{self.config.preset}' expects {want}; pick the matching preset.")
        return model

    def fit(self, train: VideoSet, ctx: RunContext) -> None:
        if self.config.weights is not None:
            self.model = self._load(Path(self.config.weights)).to(ctx.device).eval()
            return
        if self.config.preset != "cpu":
            raise UserError(f"vae: preset '{self.config.preset}' is not trained by the harness; set "
                            "encoder.args.weights to a local diffusers folder with its weights.")
        torch.manual_seed(ctx.seed_for("vae-init"))
        model = self._build().to(ctx.device).train()
        self._train(model, train, ctx)
        model.eval()
        model.register_to_config(scaling_factor=self._scaling_factor(model, train, ctx))
        self.model = model

    def _train(self, model, train: VideoSet, ctx: RunContext) -> None:
        c = self.config
        rng = ctx.rng("vae-batches")
        frames = train.frames.reshape(-1, *train.frames.shape[2:])
        optimiser = torch.optim.Adam(model.parameters(), lr=c.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, c.train_steps) / max(c.train_steps, 1))))
        checkpoint = ctx.checkpoint("vae")
        state = {"model": model, "optimiser": optimiser, "schedule": schedule, "batches": rng, "torch": TORCH_RNG}
        start = checkpoint.resume(state)
        loss_of = ctx.group.wrap(_ReconstructionLoss(model, c.kl_weight), ctx.device)
        part, weight = ctx.group.batch_part(c.batch_size)
        latent_side = c.crop // 2 ** (len(model.config.block_out_channels) - 1)
        bar = ctx.progress(range(start, c.train_steps), initial=start, total=c.train_steps, desc="training vae")
        for step in bar:
            idx = np.sort(rng.choice(len(frames), size=c.batch_size, replace=len(frames) < c.batch_size))
            y0, x0 = rng.integers(0, frames.shape[1] - c.crop + 1, 2)
            x = to_unit(frames[idx[part], y0:y0 + c.crop, x0:x0 + c.crop])[:, None].to(ctx.device)
            # the whole batch's posterior noise, drawn as one process draws it, so every rank takes its own rows
            eps = torch.randn((c.batch_size, model.config.latent_channels, latent_side, latent_side))
            loss = loss_of(x, eps[part].to(ctx.device)) * weight
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.set_postfix(l1=f"{loss.item():.4f}")
            checkpoint.save_if_due(step + 1, state)

    @torch.no_grad()
    def _scaling_factor(self, model, train: VideoSet, ctx: RunContext) -> float:
        """1 / std of training latents, as Stable Diffusion sets it, so latents have unit scale."""
        sample = train.frames[:: max(1, len(train) // 32), 0]
        z = model.encode(self._frames_in(to_unit(sample)[:, None], model).to(ctx.device)).latent_dist.mode()
        return float(1.0 / z.float().std().clamp_min(1e-6))

    def _batch_frames(self, ctx: RunContext) -> int:
        return self.config.batch_frames or (256 if ctx.device.type == "cuda" else 16)

    @staticmethod
    def _frames_in(x: torch.Tensor, model) -> torch.Tensor:
        return x.repeat(1, model.config.in_channels, 1, 1) if model.config.in_channels != 1 else x

    def save_state(self, folder) -> bool:
        self.model.save_pretrained(folder, safe_serialization=True)
        return True

    def load_state(self, folder) -> None:
        self.model = self._load(Path(folder)).eval()

    @torch.no_grad()
    def encode(self, videos: VideoSet, ctx: RunContext) -> LatentSet:
        model = self.model.to(ctx.device, memory_format=torch.channels_last)  # about twice as fast on a CPU
        n, t = videos.frames.shape[:2]
        flat = videos.frames.reshape(n * t, *videos.frames.shape[2:])
        gen = ctx.torch_generator("vae-encode") if self.config.sample_posterior else None
        out = []
        batch = self._batch_frames(ctx)
        for start in ctx.progress(range(0, len(flat), batch), desc="encoding"):
            x = self._frames_in(to_unit(flat[start:start + batch])[:, None], model)
            dist = model.encode(x.to(ctx.device).contiguous(memory_format=torch.channels_last)).latent_dist
            z = dist.sample(generator=gen) if gen is not None else dist.mode()
            out.append((z * model.config.scaling_factor).to(torch.float16).cpu())
        z = torch.cat(out) if out else torch.zeros((0, 4, 14, 14), dtype=torch.float16)
        return LatentSet(z.reshape(n, t, *z.shape[1:]).numpy(), videos.table.copy())

    @torch.no_grad()
    def decode(self, latents: LatentSet, ctx: RunContext) -> VideoSet:
        model = self.model.to(ctx.device, memory_format=torch.channels_last)
        n, t = latents.latents.shape[:2]
        flat = latents.latents.reshape(n * t, *latents.latents.shape[2:])
        out = []
        batch = self._batch_frames(ctx)
        for start in ctx.progress(range(0, len(flat), batch), desc="decoding"):
            z = torch.from_numpy(np.asarray(flat[start:start + batch], dtype=np.float32))
            z = z.to(ctx.device).contiguous(memory_format=torch.channels_last)
            x = model.decode(z / model.config.scaling_factor).sample.mean(dim=1)
            out.append(to_pixels(x))
        frames = np.concatenate(out) if out else np.zeros((0, 112, 112), np.uint8)
        return VideoSet(frames.reshape(n, t, *frames.shape[1:]), latents.table.copy())


class _ReconstructionLoss(torch.nn.Module):
    """The VAE's training loss on a batch as one module, so DDP (which hooks a module's forward) can train it: L1
    reconstruction from a posterior sample (`eps`: its standard normal noise) plus the weighted KL term."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.mean + posterior.std * eps).sample
        return (recon - x).abs().mean() + self.kl_weight * posterior.kl().mean()


@hookimpl
def register_encoders(register):
    register("identity", Identity)
    register("vae", VAE)
