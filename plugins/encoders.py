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
from harness.components import Encoder, PresetConfig
from harness.context import RunContext
from harness.data import LatentSet, VideoSet
from harness.errors import UserError
from harness.plan import Estimate, Probe, Workload
from harness_plugins.vae_loss import AutoencoderLoss, PatchDiscriminator, Perceptual, hinge_loss


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
#: How each preset trains. `cpu`: L1 + KL on crops, means over pixels. `echonet-synthetic` (seed-code notes §2):
#: whole frames, batch 32 at about 5e-4, per-image sums with KL 1e-6, the PatchGAN discriminator from step 50001
#: at weight 0.5; its step count was never published (8 A100s for 5 days), so it must be set.
TRAINING = {
    "cpu": dict(train_steps=1500, batch_size=32, crop=48, lr=2e-3, discriminator=False, per_image=False),
    "echonet-synthetic": dict(train_steps=None, batch_size=32, crop=112, lr=5e-4, discriminator=True,
                              per_image=True),
}


class VAE(Encoder):
    """A diffusers AutoencoderKL: 112x112 grayscale frames -> 4x14x14 latents, scaled by `scaling_factor`.

    The `cpu` preset is trained on the dataset's training frames with L1 + a small KL term (no pretrained
    perceptual network exists offline); `weights` loads any local diffusers folder instead (`save_pretrained`).
    """

    space: ClassVar = "latent"
    version = "3"  # 3: fused Adam

    class Config(PresetConfig):
        presets = TRAINING
        preset: Literal["cpu", "echonet-synthetic"] = "cpu"
        weights: Path | None = Field(None, description="local diffusers AutoencoderKL folder to load")
        train_steps: int | None = Field(None, ge=0, description="preset's: cpu 1500; echonet-synthetic must set it")
        batch_size: PositiveInt | None = None
        crop: PositiveInt | None = Field(None, description="training crop size (multiple of 8)")
        lr: PositiveFloat | None = None
        kl_weight: float = Field(1e-6, ge=0)
        discriminator: bool | None = Field(None, description="train against a PatchGAN discriminator")
        disc_start: int = Field(50_001, ge=0, description="step the discriminator switches on (published: 50001)")
        disc_weight: float = Field(0.5, ge=0)
        perceptual_weights: Path | None = Field(None, description="local LPIPS weights (VGG-16 features.* and "
                                                                  "lin0..lin4, safetensors); unset: no perceptual loss")
        perceptual_weight: float = Field(1.0, ge=0)
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
        if self.config.setting("train_steps") is None:
            raise UserError(f"vae: preset '{self.config.preset}' trains for a number of steps that was never "
                            "published; set encoder.args.train_steps, or encoder.args.weights to a local diffusers "
                            "folder with trained weights.")
        torch.manual_seed(ctx.seed_for("vae-init"))
        model = self._build().to(ctx.device).train()
        self._train(model, train, ctx)
        model.eval()
        model.register_to_config(scaling_factor=self._scaling_factor(model, train, ctx))
        self.model = model

    def _train(self, model, train: VideoSet, ctx: RunContext) -> None:
        c = self.config
        steps, batch, crop = c.setting("train_steps"), c.setting("batch_size"), c.setting("crop")
        if crop > min(train.frames.shape[2:]):
            raise UserError(f"vae: crop {crop} is larger than the {train.frames.shape[2]}-pixel frames; set "
                            "encoder.args.crop to at most the frame size.")
        rng = ctx.rng("vae-batches")
        frames = train.frames.reshape(-1, *train.frames.shape[2:])
        optimiser = torch.optim.Adam(model.parameters(), lr=c.setting("lr"), fused=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
        state = {"model": model, "optimiser": optimiser, "schedule": schedule, "batches": rng, "torch": TORCH_RNG}
        disc = None
        if c.setting("discriminator"):
            disc = PatchDiscriminator(model.config.in_channels).to(ctx.device)
            disc_optimiser = torch.optim.Adam(disc.parameters(), lr=c.setting("lr"), betas=(0.5, 0.9), fused=True)
            state.update(discriminator=disc, disc_optimiser=disc_optimiser)
        perceptual = Perceptual(c.perceptual_weights).to(ctx.device) if c.perceptual_weights else None
        checkpoint = ctx.checkpoint("vae")
        start = checkpoint.resume(state)
        part, weight = ctx.group.batch_part(batch)
        loss_of = ctx.group.wrap(AutoencoderLoss(model, c.kl_weight, c.setting("per_image"), perceptual,
                                                 c.perceptual_weight, disc, c.disc_weight,
                                                 lambda gradient: ctx.group.sum(gradient * weight)), ctx.device)
        judge = ctx.group.wrap(disc, ctx.device) if disc is not None else None
        latent_side = crop // 2 ** (len(model.config.block_out_channels) - 1)
        bar = ctx.progress(range(start, steps), initial=start, total=steps, desc="training vae")
        for step in bar:
            idx = np.sort(rng.choice(len(frames), size=batch, replace=len(frames) < batch))
            y0, x0 = rng.integers(0, frames.shape[1] - crop + 1, 2)
            x = to_unit(frames[idx[part], y0:y0 + crop, x0:x0 + crop])[:, None]
            x = self._frames_in(x, model).to(ctx.device)
            # the whole batch's posterior noise, drawn as one process draws it, so every rank takes its own rows
            eps = torch.randn((batch, model.config.latent_channels, latent_side, latent_side))
            adversarial = judge is not None and step >= c.disc_start
            loss, recon = loss_of(x, eps[part].to(ctx.device), adversarial)
            optimiser.zero_grad(set_to_none=True)
            (loss * weight).backward()
            optimiser.step()
            schedule.step()
            if adversarial:  # the discriminator's own step, on real frames and these reconstructions
                disc_loss = hinge_loss(judge(x), judge(recon.detach())) * weight
                disc_optimiser.zero_grad(set_to_none=True)
                disc_loss.backward()
                disc_optimiser.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
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

    def frame_shape(self, size: int) -> tuple[int, int, int]:
        scale = 2 ** (len(PRESETS[self.config.preset]["block_out_channels"]) - 1)
        return (4, size // scale, size // scale)

    def plan(self, work: Workload, probe: Probe) -> list[Estimate]:
        """Encoding every frame of every split, timed per frame; training timed per step (untrained weights of the
        preset's shape, so nothing is loaded)."""
        c, model = self.config, self._build().to(probe.device)
        channels = model.config.in_channels
        frames = sum(work.videos.values()) * work.frames
        with torch.no_grad():
            per_frame = probe.batch_seconds("vae encode", 256, lambda b: lambda: model.encode(
                torch.rand(b, channels, work.size, work.size, device=probe.device)).latent_dist.mode(), 16) / 256
        plan = [Estimate("encode", f"{frames:,} frames", frames * per_frame)]
        if c.weights is not None:
            return [Estimate("encoder-fit", f"load {c.weights}", 0.0), *plan]
        steps, crop = c.setting("train_steps"), c.setting("crop")
        if steps is None:
            return [Estimate("encoder-fit", "refused: set train_steps (or weights)", None), *plan]
        disc = PatchDiscriminator(channels).to(probe.device) if c.setting("discriminator") else None
        loss = AutoencoderLoss(model, c.kl_weight, c.setting("per_image"), discriminator=disc)

        def step_at(adversarial: bool):
            def at(b: int):
                x = torch.rand(b, channels, crop, crop, device=probe.device)
                eps = torch.randn(b, 4, *self.frame_shape(crop)[1:], device=probe.device)

                def step():
                    value, recon = loss(x, eps, adversarial)
                    value.backward()
                    if adversarial:
                        hinge_loss(disc(x), disc(recon.detach())).backward()
                return step
            return at

        plain = probe.batch_seconds("vae training step", c.setting("batch_size"), step_at(False), 8)
        adversarial = max(0, steps - c.disc_start) if disc is not None else 0
        seconds = (steps - adversarial) * plain
        if adversarial:
            seconds += adversarial * probe.batch_seconds("vae + discriminator step", c.setting("batch_size"),
                                                         step_at(True), 8)
        return [Estimate("encoder-fit", f"{steps:,} steps x {c.setting('batch_size')} crops of {crop} px"
                         + (f", discriminator from step {c.disc_start:,}" if disc is not None else ""), seconds),
                *plan]

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


@hookimpl
def register_encoders(register):
    register("identity", Identity)
    register("vae", VAE)
