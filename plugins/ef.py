"""Built-in `ef-regression` task: predict ejection fraction from a clip, evaluated on the REAL test split.

`r2plus1d` follows EchoNet-Dynamic's protocol on decoded pixels: torchvision `r2plus1d_18` (random init; local
weights to fine-tune from), 32-frame clips taking every 2nd frame, SGD with momentum, the output bias set to the
mean training EF, the best epoch by validation loss, and test-time averaging over every clip start. `latent-cnn` is
a small 3-D CNN on the latents themselves, for CPU runs.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt
from safetensors.torch import load_file, save_file
from torch import nn

from harness import hookimpl
from harness.checkpoint import TORCH_RNG, LoopValues
from harness.components import ComponentConfig, Task
from harness.context import RunContext, mixed_precision
from harness.data import LatentSet
from harness.errors import UserError
from harness.metrics.regression import regression_metrics
from harness.plan import Estimate, Probe, Workload
from harness.weights import load_state_dict


class LatentCNN(nn.Module):
    """Two strided 3-D convolutions, then the mean and standard deviation over time of every feature at every
    position. EF is a ratio of end-diastolic to end-systolic size, so how much each place changes over the clip
    is the signal; a global average would wash it out. The output is scaled to the training EF's mean and spread.
    """

    def __init__(self, channels: int, width: int = 16, size: int = 14):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(channels, width, 3, stride=(1, 2, 2), padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv3d(width, 2 * width, 3, stride=(1, 2, 2), padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU())
        cells = ((size + 1) // 2 + 1) // 2
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(2 * 2 * width * cells**2, 1)
        self.register_buffer("ef_mean", torch.tensor(0.0))
        self.register_buffer("ef_scale", torch.tensor(1.0))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:  # x: [B, C, T, h, w]
        """`keep`: the dropout's scaled mask, when the training loop drew it for a whole batch split over
        processes (`dropout_mask`); else the module's own dropout."""
        h = self.features(x).flatten(3).transpose(2, 3).flatten(1, 2)  # [B, features x positions, T]
        h = torch.cat([h.mean(2), h.std(2)], dim=1)
        return self.fc(h * keep if keep is not None else self.dropout(h))[:, 0] * self.ef_scale + self.ef_mean

    def dropout_mask(self, batch: int) -> torch.Tensor:
        """The scaled keep-mask of a batch, drawn from torch's global generator exactly as `nn.Dropout` draws it."""
        p = self.dropout.p
        return torch.empty((batch, self.fc.in_features)).bernoulli_(1 - p).div_(1 - p)


def r2plus1d() -> nn.Module:
    from torchvision.models.video import r2plus1d_18

    net = r2plus1d_18(weights=None)
    net.fc = nn.Linear(net.fc.in_features, 1)
    return net


class EFRegression(Task):
    """EF regressor trained on (synthetic or real) clips; R², MAE, RMSE with bootstrap intervals on real test."""

    # 2: latent-cnn pools temporal statistics, flips clips in time and space while training; 3: fused AdamW
    version = "3"

    class Config(ComponentConfig):
        model: Literal["latent-cnn", "r2plus1d"] = "latent-cnn"
        epochs: PositiveInt | None = Field(None, description="default: 45 (r2plus1d, EchoNet), 60 (latent-cnn)")
        batch_size: PositiveInt = 16
        lr: float | None = Field(None, gt=0, description="default: 1e-4 SGD (r2plus1d), 3e-3 AdamW (latent-cnn)")
        frames: PositiveInt = Field(32, description="frames per pixel clip")
        period: PositiveInt = Field(2, description="take every period-th frame (pixel clips)")
        bootstrap_resamples: PositiveInt = 10_000
        weights: str | None = Field(None, description="local state dict to start from (e.g. a Dynamic model)")

    def __init__(self, config=None):
        super().__init__(config)
        self.net: nn.Module | None = None
        self.report: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ inputs

    def _inputs(self, data: LatentSet, ctx: RunContext) -> torch.Tensor:
        """Model inputs `[N, C, T, H, W]`: latents as they are, or decoded pixels standardised per dataset."""
        if self.config.model == "latent-cnn":
            return torch.from_numpy(np.asarray(data.latents, dtype=np.float32)).permute(0, 2, 1, 3, 4)
        frames = torch.from_numpy(np.asarray(ctx.encoder.decode(data, ctx).frames, dtype=np.float32))
        frames = (frames - self.pixel_mean) / self.pixel_std
        return frames[:, None].expand(-1, 3, -1, -1, -1)  # grey -> the 3 channels the video network expects

    def _clip_starts(self, length: int) -> list[int]:
        span = (self.config.frames - 1) * self.config.period + 1
        return list(range(0, max(length - span, 0) + 1))

    def _clip(self, x: torch.Tensor, start: int) -> torch.Tensor:
        if self.config.model == "latent-cnn":
            return x
        idx = start + self.config.period * torch.arange(self.config.frames)
        clip = x[:, :, idx.clamp(max=x.shape[2] - 1)]
        clip[:, :, idx >= x.shape[2]] = 0  # zero-pad clips shorter than frames x period, as EchoNet does
        return clip

    # ------------------------------------------------------------------------------------------ training

    def fit(self, train: LatentSet, val: LatentSet, ctx: RunContext) -> None:
        cfg = self.config
        y_train = torch.as_tensor(train.table["ef"].to_numpy(dtype=np.float32))
        y_val = torch.as_tensor(val.table["ef"].to_numpy(dtype=np.float32))
        if len(train) < 2 or len(val) < 1:
            raise UserError("ef-regression: needs at least 2 training and 1 validation videos.")
        if cfg.model == "r2plus1d":
            sample = np.asarray(train.latents[:128], dtype=np.float32)
            pixels = ctx.encoder.decode(LatentSet(sample, train.table.iloc[:len(sample)]), ctx)
            self.pixel_mean = float(np.mean(pixels.frames))
            self.pixel_std = float(np.std(pixels.frames)) or 1.0
        torch.manual_seed(ctx.seed_for("ef-regression-init"))
        x_train, x_val = self._inputs(train, ctx), self._inputs(val, ctx)
        self.size = x_train.shape[-1]
        net = self._network(x_train.shape[1], self.size)
        with torch.no_grad():  # start at the mean EF, as EchoNet-Dynamic does
            if cfg.model == "latent-cnn":
                net.ef_mean.fill_(float(y_train.mean()))
                net.ef_scale.fill_(float(y_train.std()) if len(y_train) > 1 and y_train.std() > 0 else 1.0)
            else:
                net.fc.bias.fill_(float(y_train.mean()))
        if cfg.weights:
            net.load_state_dict(load_state_dict(Path(cfg.weights), net, "ef-regression", "; check `model`"))
        net.to(ctx.device)
        if cfg.model == "r2plus1d":
            opt = torch.optim.SGD(net.parameters(), lr=cfg.lr or 1e-4, momentum=0.9, weight_decay=1e-4)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=15, gamma=0.1)
        else:
            opt, sched = torch.optim.AdamW(net.parameters(), lr=cfg.lr or 3e-3, weight_decay=1e-2, fused=True), None
        rng = ctx.rng("ef-regression-batches")
        epochs = cfg.epochs or (45 if cfg.model == "r2plus1d" else 60)
        progress = LoopValues(best_loss=float("inf"), best_epoch=-1, best_state=None, train_seconds=0.0)
        checkpoint = ctx.checkpoint("ef-regression")
        state = {"net": net, "optimiser": opt, "batches": rng, "progress": progress, "torch": TORCH_RNG,
                 **({"schedule": sched} if sched is not None else {})}
        start = checkpoint.resume(state)
        trained = ctx.group.wrap(net, ctx.device)  # DDP over the processes of the run, else `net` itself
        for epoch in ctx.progress(range(start, epochs), initial=start, total=epochs, desc="EF regression"):
            net.train()
            started = time.perf_counter()
            for batch in np.array_split(rng.permutation(len(x_train)), max(1, len(x_train) // cfg.batch_size)):
                start = int(rng.choice(self._clip_starts(x_train.shape[2])))
                clip = self._augment(self._clip(x_train[batch], start), rng)  # the batch's draws, made whole
                part, weight = ctx.group.batch_part(len(batch))  # this process's videos of the batch
                # a split batch draws its dropout whole; r2plus1d has none
                keep = {"keep": net.dropout_mask(len(batch))[part].to(ctx.device)} \
                    if ctx.group.active and isinstance(net, LatentCNN) else {}
                with mixed_precision(ctx.device):
                    pred = trained(clip[part].to(ctx.device), **keep).float().reshape(-1)  # r2plus1d's fc: [B, 1]
                loss = nn.functional.mse_loss(pred, y_train[batch][part].to(ctx.device)) * weight
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            progress["train_seconds"] += time.perf_counter() - started
            if sched is not None:
                sched.step()
            val_loss = float(nn.functional.mse_loss(self._predict(net, x_val, ctx), y_val))
            if val_loss < progress["best_loss"]:
                progress.update(best_loss=val_loss, best_epoch=epoch, best_state=copy.deepcopy(net.state_dict()))
            checkpoint.save_if_due(epoch + 1, state)
        net.load_state_dict(progress["best_state"])
        self.net = net.eval()
        self.report = {"best_epoch": progress["best_epoch"] + 1, "epochs": epochs,
                       "val_mse": round(progress["best_loss"], 4), "model": cfg.model, "train_videos": len(x_train),
                       "epoch_seconds": round(progress["train_seconds"] / epochs, 4)}

    def _augment(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Latent clips are reversed in time and mirrored left-right at random: neither changes the EF."""
        if self.config.model != "latent-cnn":
            return clip
        for dim in (2, 4):
            flip = torch.from_numpy(rng.random(len(clip)) < 0.5).view(-1, 1, 1, 1, 1)
            clip = torch.where(flip, clip.flip(dim), clip)
        return clip

    def _network(self, channels: int, size: int) -> nn.Module:
        return LatentCNN(channels, size=size) if self.config.model == "latent-cnn" else r2plus1d()

    @torch.no_grad()
    def _predict(self, net: nn.Module, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """Mean prediction over every clip start (test-time averaging); one pass for the latent model."""
        net.eval()
        starts = self._clip_starts(x.shape[2]) if self.config.model == "r2plus1d" else [0]
        out = torch.zeros(len(x))
        for start in starts:
            for chunk in torch.split(torch.arange(len(x)), self.config.batch_size):
                with mixed_precision(ctx.device):
                    out[chunk] += net(self._clip(x[chunk], start).to(ctx.device)).float().cpu().reshape(-1)
        return out / len(starts)

    def predict(self, data: LatentSet, ctx: RunContext) -> np.ndarray:
        return self._predict(self.net.to(ctx.device), self._inputs(data, ctx), ctx).numpy()

    def evaluate(self, test: LatentSet, ctx: RunContext, predictions: np.ndarray | None = None) -> dict[str, Any]:
        truth = test.table["ef"].to_numpy(dtype=np.float64)
        predictions = self.predict(test, ctx) if predictions is None else predictions
        return regression_metrics(truth, predictions, resamples=self.config.bootstrap_resamples,
                                  seed=ctx.seed_for("ef-bootstrap"))

    # ------------------------------------------------------------------------------------------ state

    def fit_report(self) -> dict[str, Any]:
        return self.report

    def plan(self, work: Workload, probe: Probe) -> list[Estimate]:
        """Training on the real training split timed per step (the decoding of pixel clips is not included);
        every generator row trains it again once per strategy on about as many videos."""
        cfg = self.config
        epochs = cfg.epochs or (45 if cfg.model == "r2plus1d" else 60)
        if cfg.model == "latent-cnn":
            shape = (work.latent[0], work.frames, *work.latent[1:])
        else:
            shape = (3, cfg.frames, work.size, work.size)
        net = self._network(shape[0], shape[-1]).to(probe.device)
        opt = torch.optim.AdamW(net.parameters(), fused=True)

        def step_at(b: int):
            x, y = torch.rand(b, *shape, device=probe.device), torch.rand(b, device=probe.device)

            def step():
                with mixed_precision(probe.device):
                    loss = nn.functional.mse_loss(net(x).float().reshape(-1), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            return step

        steps = epochs * max(1, work.videos["train"] // cfg.batch_size)
        step = probe.batch_seconds("EF training step", cfg.batch_size, step_at, 2)
        return [Estimate("downstream-fit", f"{epochs} epochs x {work.videos['train']:,} videos "
                                           f"(batch {cfg.batch_size})", steps * step)]

    def save_state(self, folder: Path) -> bool:
        save_file({k: v.contiguous().cpu() for k, v in self.net.state_dict().items()}, folder / "ef.safetensors")
        extra = {"pixel_mean": getattr(self, "pixel_mean", 0.0), "pixel_std": getattr(self, "pixel_std", 1.0),
                 "channels": self.channels(), "size": self.size, "report": self.report}
        (folder / "ef.json").write_text(json.dumps(extra))
        return True

    def load_state(self, folder: Path) -> None:
        extra = json.loads((folder / "ef.json").read_text())
        self.pixel_mean, self.pixel_std, self.report = extra["pixel_mean"], extra["pixel_std"], extra["report"]
        self.size = extra["size"]
        net = self._network(extra["channels"], self.size)
        net.load_state_dict(load_file(folder / "ef.safetensors"))
        self.net = net.eval()

    def channels(self) -> int:
        return self.net.features[0].in_channels if self.config.model == "latent-cnn" else 3


@hookimpl
def register_tasks(register):
    register("ef-regression", EFRegression)
