"""What echo-lvdm's stages cost (`harness plan`): a few training steps and denoising steps of its models, timed."""

from __future__ import annotations

import torch

from harness.context import mixed_precision
from harness.plan import Estimate, Probe, Workload
from harness_plugins.lvdm import PRESETS, EchoLVDM
from harness_plugins.lvdm_models import PAD, scheduler


def plan(generator: EchoLVDM, work: Workload, probe: Probe) -> list[Estimate]:
    """Training timed per step of each model at the preset's batches; sampling timed per denoising step of
    both models (the LVDM once per window, twice with guidance), on untrained models of the preset's shape."""
    cfg, preset, device = generator.config, PRESETS[generator.config.preset], probe.device
    generator.clip_frames, generator.window = work.frames, min(preset["window"], work.frames)
    generator.build(work.latent[0])
    lidm, lvdm, sched = generator.lidm.to(device), generator.lvdm.to(device), scheduler("ddpm")
    frame = (work.latent[0], work.latent[1] + 2 * PAD, work.latent[2] + 2 * PAD)
    noise = torch.Generator().manual_seed(0)

    def image_step(b: int):
        x = torch.randn(b, *frame, device=device)
        return lambda: _backward(lambda: generator._image_loss(lidm, sched, [x], noise, device, slice(None)), device)

    def video_step(b: int):
        inputs = [torch.randn(b, generator.window, *frame, device=device), torch.randn(b, *frame, device=device),
                  torch.rand(b, device=device)]
        return lambda: _backward(lambda: generator._video_loss(lvdm, sched, inputs, noise, device, slice(None)), device)

    def forwards(b: int):
        x, cond = torch.randn(b, generator.window, *frame, device=device), torch.randn(b, *frame, device=device)
        ef, t = torch.rand(b, device=device), torch.full((b,), 500, device=device)

        @torch.no_grad()
        def run():
            with mixed_precision(device):
                lidm(x[:, 0], t)
                for _ in range(n_windows * (1 if cfg.guidance == 1.0 else 2)):
                    generator._video_forward(lvdm, x, cond, ef, t)
        return run

    starts = range(0, max(work.frames - generator.window, 0) + 1, max(generator.window // 2, 1))  # as `_windowed`
    n_windows = len(starts) + int(starts[-1] + generator.window < work.frames)
    batch, steps = min(cfg.sample_batch, probe.per_process(work.samples)), cfg.setting("sample_steps")
    timed = min(batch, 2) if device.type == "cpu" else batch
    per_sample = probe.seconds(f"echo-lvdm denoising step (batch {timed})", forwards(timed)) / timed * steps
    sampling = Estimate("samples", f"{work.samples:,} videos x {steps} steps ({n_windows} windows of "
                        f"{generator.window} frames)", work.samples * per_sample / probe.processes)
    if cfg.weights:
        return [Estimate("generator-fit", f"load {cfg.weights}", 0.0), sampling]
    lidm_steps, lvdm_steps = cfg.setting("lidm_steps"), cfg.setting("lvdm_steps")
    image = probe.batch_seconds("LIDM training step", cfg.setting("batch_size"), image_step, 4)
    video = probe.batch_seconds("LVDM training step", cfg.setting("video_batch_size"), video_step, 1)
    return [Estimate("generator-fit", f"LIDM {lidm_steps:,} steps x {cfg.setting('batch_size')} frames, LVDM "
                     f"{lvdm_steps:,} steps x {cfg.setting('video_batch_size')} clips",
                     lidm_steps * image + lvdm_steps * video), sampling]


def _backward(loss_of, device: torch.device) -> None:
    """One training step's forward (in the training's precision) and backward, for `harness plan`."""
    with mixed_precision(device):
        loss = loss_of()
    loss.backward()
