"""Built-in `echo-lvdm` generator: EchoNet-Synthetic's latent image + latent video diffusion pipeline (diffusers).

A latent image diffusion model (LIDM, `UNet2DModel`) samples a conditioning frame; a latent video diffusion model
(LVDM, `UNetSpatioTemporalConditionModel`) samples the clip from noise concatenated channel-wise with that frame
repeated over time, with EF/100 as its single cross-attention token. Both predict v, keep an EMA copy for sampling,
and work on 14x14 latents replicate-padded to 16x16. Clips longer than the model's window are sampled as
overlapping windows whose predictions are averaged at every denoising step.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from harness import hookimpl
from harness.checkpoint import TORCH_RNG
from harness.components import Generator, PresetConfig
from harness.context import RunContext, mixed_precision
from harness.data import Condition, LatentSet, SampleSet
from harness.errors import UserError
from harness.hashing import stable_hash
from harness.plan import Estimate, Probe, Workload
from harness_plugins.lvdm_models import build_lidm, build_lvdm, crop, pad, scheduler

# minutes on a 2-core CPU for the phantom benchmark (the video UNet needs multiples of 32 channels)
_PHANTOM = dict(lidm_channels=(32, 64, 64), lvdm_channels=(32, 64, 64), heads=(2, 4, 4), lidm_steps=600,
                lvdm_steps=200, batch_size=16, video_batch_size=4, lr=1e-3, video_lr=1e-3, ema_decay=0.995,
                noise_offset=0.0, condition_dropout=0.0, window=16, sample_steps=10, ef_embedding=16)
PRESETS = {
    # seconds on a CPU: exercises every code path in the tests
    "tiny": dict(lidm_channels=(16, 32), lvdm_channels=(32, 32), heads=(2, 2), lidm_steps=30, lvdm_steps=20,
                 batch_size=8, video_batch_size=2, lr=3e-4, video_lr=3e-4, ema_decay=0.995, noise_offset=0.0,
                 condition_dropout=0.0, window=8, sample_steps=4, ef_embedding=16),
    "phantom": _PHANTOM,  # 2 minutes of training
    # the video model trained 10x longer, long enough to learn the EF conditioning (11 minutes)
    "phantom-long": {**_PHANTOM, "lvdm_steps": 2000},
    # the published shapes and training (seed-code notes §3-4): LIDM batch 256 at 3e-4, LVDM batch 16 at 1e-4 with
    # noise offset 0.1 and 10 % of the EF conditions dropped (for classifier-free guidance), 500k steps each, EMA
    "echonet-synthetic": dict(lidm_channels=(128, 256, 256, 512), lvdm_channels=(128, 256, 256, 512),
                              heads=(8, 16, 16, 32), lidm_steps=500_000, lvdm_steps=500_000, batch_size=256,
                              video_batch_size=16, lr=3e-4, video_lr=1e-4, ema_decay=0.9999, noise_offset=0.1,
                              condition_dropout=0.1, window=64, sample_steps=64, ef_embedding=0),
}
#: The EF a dropped condition is replaced by (EF / 100 lies in [0, 1]): the unconditional input of guidance.
NULL_EF = -1.0


class EchoLVDM(Generator):
    """LIDM + LVDM with v-prediction, EMA and DDPM/DDIM sampling; presets `tiny`, `phantom`, `phantom-long`,
    `echonet-synthetic`."""

    version = "6-" + stable_hash(PRESETS)[:8]  # 5: the EMA warms up as diffusers' EMAModel does; 6: fused AdamW

    class Config(PresetConfig):
        presets = PRESETS
        preset: Literal["tiny", "phantom", "phantom-long", "echonet-synthetic"] = "phantom"
        lidm_steps: int | None = Field(None, ge=0, description="training steps of the image model")
        lvdm_steps: int | None = Field(None, ge=0, description="training steps of the video model")
        batch_size: PositiveInt | None = Field(None, description="frames per image-model step")
        video_batch_size: PositiveInt | None = Field(None, description="clips per video-model step")
        lr: float | None = Field(None, gt=0, description="AdamW learning rate of the image model")
        video_lr: float | None = Field(None, gt=0, description="AdamW learning rate of the video model")
        ema_decay: float | None = Field(None, ge=0, lt=1)
        noise_offset: float | None = Field(None, ge=0, description="video model: per-sample, per-channel offset "
                                                                   "added to the training noise")
        condition_dropout: float | None = Field(None, ge=0, lt=1, description="video model: share of training "
                                                                              "clips whose EF is dropped")
        ef_embedding: int | None = Field(None, ge=0, description="video model: also add the EF to the timestep "
                                         "embedding, projected sinusoidally to this size (0: the EF enters only as "
                                         "its cross-attention token, as published)")
        guidance: float = Field(1.0, ge=0, description="classifier-free guidance scale at sampling (1: none)")
        sampler: Literal["ddpm", "ddim"] = "ddim"
        sample_steps: PositiveInt | None = None
        sample_batch: PositiveInt = 16
        privacy_filter: bool = Field(False, description="redraw conditioning frames the run's re-ID flags (paper)")
        filter_tries: PositiveInt = Field(5, description="redraws per flagged frame before it is kept, marked")
        weights: str | None = Field(None, description="local folder with lidm/ and lvdm/ diffusers model folders")

    def __init__(self, config=None):
        super().__init__(config)
        self.lidm = self.lvdm = None

    # ------------------------------------------------------------------------------------------ training

    def fit(self, data: dict[str, LatentSet], ctx: RunContext) -> None:
        train = data["train"]
        cfg, preset = self.config, PRESETS[self.config.preset]
        channels = train.clip_shape[1]
        self.clip_frames = train.clip_shape[0]
        self.window = min(preset["window"], self.clip_frames)
        self.fps = float(train.table["fps"].iloc[0])
        if cfg.weights:
            self._load_weights(Path(cfg.weights))
            self._check_shapes(Path(cfg.weights))
            self.window = min(self.lvdm.config.num_frames, self.clip_frames)
            return
        if cfg.guidance != 1.0 and cfg.setting("condition_dropout") == 0:
            raise UserError("echo-lvdm: guidance needs a video model that learned without its EF; set "
                            "condition_dropout above 0 (the echonet-synthetic preset uses 0.1) or guidance to 1.")
        torch.manual_seed(ctx.seed_for("echo-lvdm-init"))
        self.build(channels)
        latents = torch.from_numpy(np.asarray(train.latents, dtype=np.float32))
        efs = torch.as_tensor(train.table["ef"].to_numpy(dtype=np.float32)) / 100.0
        rng = ctx.torch_generator("echo-lvdm-batches")
        self.lidm = self._train(self.lidm, cfg.setting("lidm_steps"), cfg.setting("lr"), ctx, "LIDM training", rng,
                                lambda: self._image_batch(latents, rng), self._image_loss)
        self.lvdm = self._train(self.lvdm, cfg.setting("lvdm_steps"), cfg.setting("video_lr"), ctx, "LVDM training",
                                rng, lambda: self._video_batch(latents, efs, rng), self._video_loss)
        self._hash = _weights_hash(self.lidm, self.lvdm)

    def build(self, channels: int) -> None:
        """Untrained models of the preset (`fit` trains them; `tests/test_perf.py` times sampling with them)."""
        preset = PRESETS[self.config.preset]
        self.lidm = build_lidm(preset["lidm_channels"], channels)
        self.lvdm = build_lvdm(preset["lvdm_channels"], preset["heads"], channels, self.window,
                               self.config.setting("ef_embedding"))
        self._hash = _weights_hash(self.lidm, self.lvdm)

    def _image_batch(self, latents, rng):
        idx = torch.randint(0, len(latents), (self.config.setting("batch_size"),), generator=rng)
        frame = torch.randint(0, latents.shape[1], (len(idx),), generator=rng)
        return (pad(latents[idx, frame]),)

    def _video_batch(self, latents, efs, rng):
        idx = torch.randint(0, len(latents), (self.config.setting("video_batch_size"),), generator=rng)
        start = torch.randint(0, latents.shape[1] - self.window + 1, (len(idx),), generator=rng)
        clips = torch.stack([latents[i, s:s + self.window] for i, s in zip(idx.tolist(), start.tolist(), strict=True)])
        cond = latents[idx, torch.randint(0, latents.shape[1], (len(idx),), generator=rng)]  # a frame of that video
        return pad(clips), pad(cond), efs[idx]

    def _train(self, model, steps, lr, ctx, desc, batches, batch, loss_fn):
        """Train `model` for `steps` steps and return its EMA. Resumable; the last step is saved too, so a run
        killed in the LVDM phase does not retrain the LIDM."""
        model.to(ctx.device).train()
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2, fused=True)
        sched = scheduler("ddpm")
        gen = ctx.torch_generator("echo-lvdm-noise", desc)
        checkpoint = ctx.checkpoint(desc.split()[0].lower())
        state = {"model": model, "ema": ema, "optimiser": opt, "batches": batches, "noise": gen, "torch": TORCH_RNG}
        start = checkpoint.resume(state)
        trained = ctx.group.wrap(model, ctx.device)  # DDP over the processes of the run, else `model` itself
        for step in ctx.progress(range(start, steps), initial=start, total=steps, desc=desc):
            inputs = [x.to(ctx.device) for x in batch()]
            part, weight = ctx.group.batch_part(len(inputs[0]))  # every rank draws the batch, each trains on a part
            with mixed_precision(ctx.device):
                loss = loss_fn(trained, sched, inputs, gen, ctx.device, part) * weight
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                decay = ema_decay(step, self.config.setting("ema_decay"))
                for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                    e.lerp_(p, 1.0 - decay)
            checkpoint.save_if_due(step + 1, state, force=step + 1 == steps)
        return ema

    @staticmethod
    def _noised(sched, x, gen, device, offset: float = 0.0):
        """Noised `x`, its timesteps and the v-prediction target; `offset` adds a constant per sample and channel
        to the noise (noise offset), which lets a model learn overall brightness."""
        noise = torch.randn(x.shape, generator=gen)
        if offset > 0:
            noise = noise + offset * torch.randn((len(x), *[1] * (x.dim() - 4), x.shape[-3], 1, 1), generator=gen)
        noise = noise.to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(x),), generator=gen).to(device)
        return sched.add_noise(x, noise, t), t, sched.get_velocity(x, noise, t)

    def _image_loss(self, model, sched, inputs, gen, device, part: slice):
        """The loss on this process's `part` of the batch; the batch's noise is drawn whole."""
        (x,) = inputs
        noisy, t, target = self._noised(sched, x, gen, device)
        return F.mse_loss(model(noisy[part], t[part]).sample, target[part])

    def _video_loss(self, model, sched, inputs, gen, device, part: slice):
        clips, cond, ef = inputs
        dropout = self.config.setting("condition_dropout")
        if dropout > 0:  # the model also learns the clip without its EF: the unconditional branch of guidance
            dropped = (torch.rand(len(ef), generator=gen) < dropout).to(device)
            ef = torch.where(dropped, torch.full_like(ef, NULL_EF), ef)
        noisy, t, target = self._noised(sched, clips, gen, device, self.config.setting("noise_offset"))
        pred = self._video_forward(model, noisy[part], cond[part], ef[part], t[part])
        return F.mse_loss(pred, target[part])

    @staticmethod
    def _video_forward(model, noisy, cond, ef, t):
        """One LVDM prediction. The EF is the cross-attention token; a model built with an EF embedding also gets
        it, in percent, as its added time id (published models have a 1-wide time-id projection, which is zero
        whatever its input, so they get zeros)."""
        x = torch.cat([noisy, cond[:, None].expand_as(noisy)], dim=2)
        ef = ef.to(x.dtype)
        embeds_ef = getattr(model, "module", model).config.addition_time_embed_dim > 1  # DDP wraps it in training
        ids = 100 * ef if embeds_ef else torch.zeros_like(ef)
        return model(x, t, encoder_hidden_states=ef.view(-1, 1, 1), added_time_ids=ids.view(-1, 1)).sample

    # ------------------------------------------------------------------------------------------ sampling

    @property
    def sample_batch_size(self) -> int:
        return self.config.sample_batch

    @property
    def uses_privacy_filter(self) -> bool:
        return self.config.privacy_filter

    @torch.no_grad()
    def sample(self, conditions: list[Condition], ctx: RunContext) -> SampleSet:
        for c in conditions:
            if not 0 <= c.ef <= 100:
                raise UserError(f"echo-lvdm: requested EF {c.ef} of sample {c.sample_id} is outside 0-100.")
        steps, kind = self.config.setting("sample_steps"), self.config.sampler
        self.lidm.to(ctx.device).eval()
        self.lvdm.to(ctx.device).eval()
        out = []
        batches = range(0, len(conditions), self.config.sample_batch)
        for start in ctx.progress(batches, desc="echo-lvdm sampling"):
            with mixed_precision(ctx.device):
                out.append(self._sample_batch(conditions[start:start + self.config.sample_batch], ctx, kind, steps))
        return SampleSet.from_conditions(
            torch.cat([o[0] for o in out]).numpy(), conditions, fps=self.fps,
            sources=[[f"lidm:{c.sample_id}"] for c in conditions], sampler=kind, steps=steps,
            model_hash=self.model_hash(),
            # samples drawn in one batch (named by its first sample); regenerating one redraws its batch (bit-exact)
            batch=[conditions[i - i % self.sample_batch_size].sample_id for i in range(len(conditions))],
            filter_redraws=np.concatenate([o[1] for o in out]),
            conditioning_memorised=np.concatenate([o[2] for o in out]))

    def _initial_noise(self, conditions, shape, what):
        """Noise from each sample's own seed, so a sample does not depend on its batch."""
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(c.seed + what))
                            for c in conditions])

    @staticmethod
    def _denoise(x, kind, steps, seeds, predict):
        """Run the sampler from noise `x`; DDPM's per-step noise comes from each sample's own seed."""
        sched = scheduler(kind)
        sched.set_timesteps(steps)
        gens = [torch.Generator().manual_seed(seed) for seed in seeds]
        x = x * sched.init_noise_sigma
        for t in sched.timesteps:
            out = predict(x, int(t))
            if kind == "ddpm":
                x = torch.cat([sched.step(out[i:i + 1], t, x[i:i + 1], generator=g).prev_sample
                               for i, g in enumerate(gens)])
            else:
                x = sched.step(out, t, x).prev_sample
        return x

    def _frames(self, conditions, ctx, kind, steps, draw: int) -> torch.Tensor:
        """Conditioning frames from the LIDM; draw k > 0 uses fresh seeds (a redraw after the privacy filter)."""
        noise = self._initial_noise(conditions, (self.channels, 16, 16), 10 * draw).to(ctx.device)

        def predict(x, t):
            return self.lidm(x, torch.full((len(x),), t, device=x.device)).sample.float()

        return self._denoise(noise, kind, steps, [c.seed + 2 + 10 * draw for c in conditions], predict)

    def _sample_batch(self, conditions, ctx, kind, steps):
        cond = self._frames(conditions, ctx, kind, steps, draw=0)
        redraws = np.zeros(len(conditions), dtype=np.int64)
        flagged = np.zeros(len(conditions), dtype=bool)
        if self.config.privacy_filter:
            check = ctx.privacy_filter
            if check is None:
                raise UserError("echo-lvdm: privacy_filter needs a re-ID model; add a `reid` section to the spec.")
            flagged = check.memorised(crop(cond).float().cpu().numpy())
            for draw in range(1, self.config.filter_tries + 1):
                if not flagged.any():
                    break
                idx = np.flatnonzero(flagged)
                cond[idx] = self._frames([conditions[i] for i in idx], ctx, kind, steps, draw)
                redraws[idx] += 1
                flagged[idx] = check.memorised(crop(cond[idx]).float().cpu().numpy())
        ef = torch.tensor([c.ef / 100.0 for c in conditions], device=ctx.device)
        noise = self._initial_noise(conditions, (self.clip_frames, self.channels, 16, 16), 1).to(ctx.device)
        video = self._denoise(noise, kind, steps, [c.seed + 3 for c in conditions],
                              lambda x, t: self._windowed(x, cond, ef, t))
        return crop(video).float().cpu(), redraws, flagged

    def _windowed(self, video, cond, ef, t) -> torch.Tensor:
        """The LVDM's prediction for the whole clip: overlapping windows (half a window apart), averaged."""
        frames, window = video.shape[1], self.window
        starts = list(range(0, max(frames - window, 0) + 1, max(window // 2, 1)))
        if starts[-1] + window < frames:
            starts.append(frames - window)
        total = torch.zeros_like(video)
        count = torch.zeros(frames, device=video.device)
        tt = torch.full((len(video),), t, device=video.device)
        for s in starts:
            total[:, s:s + window] += self._guided(video[:, s:s + window], cond, ef, tt)
            count[s:s + window] += 1
        return total / count.view(1, -1, 1, 1, 1)

    def _guided(self, window, cond, ef, t) -> torch.Tensor:
        """The LVDM's prediction, moved away from its EF-free prediction by the guidance scale (1: plain)."""
        pred = self._video_forward(self.lvdm, window, cond, ef, t).float()
        if self.config.guidance == 1.0:
            return pred
        free = self._video_forward(self.lvdm, window, cond, torch.full_like(ef, NULL_EF), t).float()
        return free + self.config.guidance * (pred - free)

    # ------------------------------------------------------------------------------------------ plan

    def plan(self, work: Workload, probe: Probe) -> list[Estimate]:
        from harness_plugins.lvdm_plan import plan  # here: that module reads this one's PRESETS

        return plan(self, work, probe)

    # ------------------------------------------------------------------------------------------ state

    @property
    def channels(self) -> int:
        return self.lidm.config.in_channels

    def model_hash(self) -> str:
        return self._hash

    def save_state(self, folder: Path) -> bool:
        self.lidm.save_pretrained(folder / "lidm", safe_serialization=True)
        self.lvdm.save_pretrained(folder / "lvdm", safe_serialization=True)
        (folder / "echo-lvdm.json").write_text(json.dumps({"window": self.window, "fps": self.fps,
                                                           "clip_frames": self.clip_frames}))
        return True

    def load_state(self, folder: Path) -> None:
        meta = json.loads((folder / "echo-lvdm.json").read_text())
        self.window, self.fps, self.clip_frames = meta["window"], meta["fps"], meta["clip_frames"]
        self._load_weights(folder)

    def _check_shapes(self, folder: Path) -> None:
        """A user's folder must hold the preset's models: diffusers would load any shape its config.json names."""
        preset = PRESETS[self.config.preset]
        for part, model, want in (("lidm", self.lidm, preset["lidm_channels"]),
                                  ("lvdm", self.lvdm, preset["lvdm_channels"])):
            have = tuple(model.config.block_out_channels)
            if have != tuple(want):
                raise UserError(f"echo-lvdm: {folder / part} has block_out_channels {list(have)}, but preset "
                                f"'{self.config.preset}' expects {list(want)}; pick the preset these weights were "
                                "trained with.")

    def _load_weights(self, folder: Path) -> None:
        from diffusers import UNet2DModel, UNetSpatioTemporalConditionModel

        for part in ("lidm", "lvdm"):
            if not (folder / part / "config.json").is_file():
                raise UserError(f"echo-lvdm: {folder / part} is not a diffusers model folder (no config.json); "
                                "`weights` must hold lidm/ and lvdm/ saved with save_pretrained.")
        try:
            load = dict(use_safetensors=True, low_cpu_mem_usage=False)
            self.lidm = UNet2DModel.from_pretrained(folder / "lidm", **load).eval()
            self.lvdm = UNetSpatioTemporalConditionModel.from_pretrained(folder / "lvdm", **load).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"echo-lvdm: the weights in {folder} cannot be loaded ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}); check that they match the preset.") from None
        self._hash = _weights_hash(self.lidm, self.lvdm)


def ema_decay(step: int, decay: float) -> float:
    """The EMA's decay after 0-based training step `step`: diffusers' `EMAModel` default warm-up
    min(decay, (1 + step) / (10 + step)), 0 at the first step. Without it, a short training's EMA would still hold a
    large share of the random initial weights (0.995 ** 200 = 37 % after 200 steps)."""
    return 0.0 if step == 0 else min(decay, (1 + step) / (10 + step))


def _weights_hash(*models) -> str:
    """A digest of every weight, recorded with each sample so it can be traced to the exact models."""
    digest = hashlib.sha256()
    for model in models:
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@hookimpl
def register_generators(register):
    register("echo-lvdm", EchoLVDM)
