"""Built-in clip feature extractors, the spaces fidelity is measured in (`fidelity.features`).

`video-contrast` (the default) is a small spatio-temporal network trained in the run on the real training clips
only. It learns two things at once: to tell real videos apart (two augmented views of one clip are positives, the
other clips of the batch negatives, as in SimCLR), and to tell real clips from clips no real video looks like,
made from the training clips on the fly: pixel noise, frames shuffled, frozen or jittered in time, a cut to another
video half-way, heavy blur. Without the second part, a network shown only real clips maps anything off the data
manifold to an arbitrary point, which may sit among the real ones. `local-network` loads a network from a local
file, such as the I3D network FVD is computed with.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt
from safetensors.torch import load_file, save_file
from torch import nn

from harness import hookimpl
from harness.checkpoint import TORCH_RNG, LoopValues
from harness.components import ComponentConfig, FeatureExtractor
from harness.context import RunContext
from harness.errors import UserError
from harness.plan import Estimate, Probe, Workload

#: the off-manifold families a training batch's negatives are drawn from (`off_manifold`)
FAMILIES = ("noise", "shuffled", "frozen", "jittered", "spliced", "blurred")


def _unit(clips: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(clips, dtype=np.float32), device=device) / 255.0  # a writable copy


class ClipNet(nn.Module):
    """(2+1)-D convolutions over a clip and its frame differences: spatial 3x3 steps that halve the size, each
    followed by a temporal step over 3 frames; the last map, averaged over time, and its variation over time give
    the features."""

    def __init__(self, width: int, features: int, size: int):
        super().__init__()
        channels = [2, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels, channels[1:], strict=False)):
            layers += [nn.Conv3d(c_in, c_out, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
                       nn.GroupNorm(4, c_out), nn.ReLU(),
                       nn.Conv3d(c_out, c_out, (3, 1, 1), stride=(1 if i == 0 else 2, 1, 1), padding=(1, 0, 0)),
                       nn.GroupNorm(4, c_out), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        side = math.ceil(size / 8)
        self.out = nn.Linear(channels[-1] * (side * side + 1), features)
        self.projection = nn.Sequential(nn.ReLU(), nn.Linear(features, features))  # the contrastive loss's space
        self.realness = nn.Linear(features, 1)  # logit: a real clip, not an off-manifold one
        # the training clips' grey level, its spread and the spread of its frame-to-frame change (`calibrate`), and
        # their features' means and deviations (`standardise`)
        self.register_buffer("inputs", torch.tensor([0.5, 0.25, 1.0]))
        self.register_buffer("centre", torch.zeros(features))
        self.register_buffer("spread", torch.ones(features))

    @torch.no_grad()
    def calibrate(self, clips: torch.Tensor) -> None:
        """Measure the inputs in the training clips' units: the grey level by its mean and spread, the frame-to-frame
        change by its own spread. A heart moves little between frames (on the phantom, 3 % of the grey level's
        spread), so without its own unit the motion would hardly reach the features, and a frozen or shuffled
        clip would look like the real one."""
        mean, spread = clips.mean(), clips.std().clamp_min(1e-6)
        change = torch.diff(clips, dim=1).std().clamp_min(1e-6) if clips.shape[1] > 1 else torch.ones(())
        self.inputs.copy_(torch.stack([mean, spread, change]))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Features `[B, D]` of clips `float [B, T, H, W]` in [0, 1]."""
        mean, spread, change = self.inputs
        x = clips[:, None]
        moved = torch.diff(x, dim=2, prepend=x[:, :, :1]) / change
        h = self.body(torch.cat([(x - mean) / spread, moved], dim=1))  # [B, C, T', h, w]
        layout = h.mean(dim=2).flatten(1)
        change = h.mean(dim=(3, 4)).std(dim=2, correction=0) if h.shape[2] > 1 else h.new_zeros(h.shape[:2])
        return self.out(torch.cat([layout, change], dim=1))

    @torch.no_grad()
    def standardise(self, features: torch.Tensor) -> None:
        """Measure every feature in the deviations of the training clips' (`features`), so each dimension counts
        alike in the Fréchet distance and the k-NN balls, and the numbers do not depend on the training's scale."""
        self.centre.copy_(features.mean(dim=0))
        self.spread.copy_(features.std(dim=0).clamp_min(1e-6))

    def embed(self, clips: torch.Tensor) -> torch.Tensor:
        """The standardised features of clips, as the fidelity columns use them."""
        return (self(clips) - self.centre) / self.spread


def augmented(clips: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """A view of clips that is still the same video: shifted by up to 2 pixels, its gain and offset changed a
    little. No pixel noise: it would swamp a heart's small frame-to-frame change, the very thing that tells a real
    clip from a frozen or shuffled one."""
    n, device = len(clips), clips.device
    shifts = torch.randint(-2, 3, (2,), generator=rng).tolist()
    view = torch.roll(clips, shifts=shifts, dims=(2, 3))
    gain = 1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=rng) * 2 - 1)
    offset = 0.03 * (torch.rand(n, 1, 1, 1, generator=rng) * 2 - 1)
    return (view * gain.to(device) + offset.to(device)).clamp(0, 1)


def off_manifold(clips: torch.Tensor, others: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """One clip no real video looks like per real clip (`clips`, `others`: `[B, T, H, W]` in [0, 1]), each of a
    family of `FAMILIES` drawn at random."""
    n, frames = clips.shape[:2]
    out = clips.clone()
    family = torch.randint(0, len(FAMILIES), (n,), generator=rng).tolist()
    for i, kind in enumerate(FAMILIES[f] for f in family):
        clip = clips[i]
        if kind == "noise":  # Gaussian or uniform pixels around a random grey, of any spread down to none
            level, spread = torch.rand(2, generator=rng).tolist()
            pixels = torch.randn(clip.shape, generator=rng) if level < 0.5 else torch.rand(clip.shape, generator=rng)
            out[i] = (0.1 + 0.6 * level + 0.4 * spread * (pixels - (0 if level < 0.5 else 0.5))).clamp(0, 1)
        elif kind == "shuffled":
            out[i] = clip[torch.randperm(frames, generator=rng)]
        elif kind == "frozen":
            out[i] = clip[int(torch.randint(0, frames, (1,), generator=rng))].expand_as(clip)
        elif kind == "jittered":  # every frame replaced by one up to 3 frames away, in no order
            moved = torch.arange(frames) + torch.randint(-3, 4, (frames,), generator=rng)
            out[i] = clip[moved.clamp(0, frames - 1)]
        elif kind == "spliced":  # another video from a random frame on
            cut = int(torch.randint(1, max(frames, 2), (1,), generator=rng))
            out[i, cut:] = others[i, cut:]
        else:  # heavy blur: a Gaussian of 1.5 to 3 pixels at 32 pixels a side
            sigma = (1.5 + 1.5 * float(torch.rand(1, generator=rng))) * clip.shape[-1] / 32
            out[i] = _blur(clip, sigma)
    return out


def _blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, device=frames.device) / sigma) ** 2)
    taps = (taps / taps.sum()).float()
    x = frames[:, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), taps.view(1, 1, -1, 1))
    return x[:, 0]


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent: each view must pick its partner among every other view of the batch."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = len(a)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)


class VideoContrast(FeatureExtractor):
    """A spatio-temporal network trained in the run on the real training clips to tell videos apart and real
    clips from off-manifold ones (noise, shuffled, frozen, jittered, spliced, blurred)."""

    class Config(ComponentConfig):
        frames: PositiveInt = Field(16, description="frames of a clip it reads, evenly spaced")
        size: PositiveInt = Field(32, description="pixels a side each frame is resized to")
        steps: PositiveInt = Field(300, description="training steps")
        batch_size: PositiveInt = Field(32, description="real clips per step (as many off-manifold ones)")
        lr: PositiveFloat = 2e-3
        width: PositiveInt = Field(16, description="channels of the first layer (doubling twice)")
        features: PositiveInt = Field(128, description="feature dimensions")
        temperature: PositiveFloat = 0.2
        realness_weight: PositiveFloat = Field(1.0, description="weight of the real vs off-manifold loss")

    def __init__(self, config: ComponentConfig | None = None):
        super().__init__(config)
        self.net: ClipNet | None = None
        self.report: dict[str, Any] = {}

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.config.frames, self.config.size

    def _build(self) -> ClipNet:
        cfg = self.config
        return ClipNet(cfg.width, cfg.features, cfg.size)

    def fit(self, train: np.ndarray, ctx: RunContext) -> None:
        if len(train) < 2:
            raise UserError("the video-contrast feature extractor needs at least 2 training videos.")
        cfg = self.config
        torch.manual_seed(ctx.seed_for("video-contrast-init"))
        net = self._build().to(ctx.device)
        x = torch.from_numpy(np.array(train))  # a copy: the cached clips are read-only
        net.calibrate(_unit(x[:512], ctx.device))
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
        rng = torch.Generator().manual_seed(ctx.seed_for("video-contrast-batches"))
        progress = LoopValues(losses=[], accuracy=[], seconds=0.0)
        checkpoint = ctx.checkpoint("video-contrast")
        state = {"net": net, "optimiser": opt, "schedule": schedule, "batches": rng, "progress": progress,
                 "torch": TORCH_RNG}
        start = checkpoint.resume(state)
        batch = min(cfg.batch_size, len(x))
        # every process trains the same small model on the same batches; the others load what rank 0 saved
        bar = ctx.progress(range(start, cfg.steps), initial=start, total=cfg.steps, desc="video-contrast training")
        for step in bar:
            started = time.perf_counter()
            net.train()
            chosen = torch.randperm(len(x), generator=rng)[:batch]
            others = torch.randperm(len(x), generator=rng)[:batch]
            clips, other = _unit(x[chosen], ctx.device), _unit(x[others], ctx.device)
            fakes = augmented(off_manifold(clips, other, rng), rng)  # augmented alike: augmentation is no cue
            out = net(torch.cat([augmented(clips, rng), augmented(clips, rng), fakes]))
            realness = net.realness(out)[:, 0]
            labels = torch.cat([torch.ones(2 * batch), torch.zeros(batch)]).to(ctx.device)
            loss = contrastive_loss(net.projection(out[:batch]), net.projection(out[batch:2 * batch]),
                                    cfg.temperature) \
                + cfg.realness_weight * F.binary_cross_entropy_with_logits(realness, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            progress["losses"].append(float(loss.detach()))
            progress["accuracy"].append(float(((realness > 0).float() == labels).float().mean()))
            progress["seconds"] += time.perf_counter() - started
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(progress['losses'][-10:]):.3f}")
            checkpoint.save_if_due(step + 1, state)
        self.net = net.eval()
        self.net.standardise(self._raw(train, ctx))
        last = slice(-max(1, cfg.steps // 10), None)
        self.report = {"steps": cfg.steps, "loss": round(float(np.mean(progress["losses"][last])), 5),
                       "realness_accuracy": round(float(np.mean(progress["accuracy"][last])), 5),
                       "step_seconds": round(progress["seconds"] / max(1, cfg.steps - start), 5)}

    @torch.no_grad()
    def features(self, clips: np.ndarray, ctx: RunContext) -> torch.Tensor:
        net = self.net.to(ctx.device)
        return torch.cat([net.embed(_unit(clips[i:i + 256], ctx.device)).float().cpu()
                          for i in range(0, len(clips), 256)])

    @torch.no_grad()
    def _raw(self, clips: np.ndarray, ctx: RunContext) -> torch.Tensor:
        net = self.net.to(ctx.device)
        return torch.cat([net(_unit(clips[i:i + 256], ctx.device)) for i in range(0, len(clips), 256)])

    def fit_report(self) -> dict[str, Any]:
        return self.report

    def save_state(self, folder: Path) -> bool:
        save_file({k: v.contiguous().cpu() for k, v in self.net.state_dict().items()},
                  folder / "video-contrast.safetensors")
        (folder / "video-contrast.json").write_text(json.dumps({"report": self.report}))
        return True

    def load_state(self, folder: Path) -> None:
        net = self._build()
        net.load_state_dict(load_file(folder / "video-contrast.safetensors"))
        self.net, self.report = net.eval(), json.loads((folder / "video-contrast.json").read_text())["report"]

    def plan(self, work: Workload, probe: Probe) -> list[Estimate]:
        cfg = self.config
        net = self._build().to(probe.device)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
        clips = torch.rand(3 * cfg.batch_size, min(cfg.frames, work.frames), cfg.size, cfg.size, device=probe.device)

        def step() -> None:
            opt.zero_grad()
            net(clips).square().mean().backward()
            opt.step()

        per_step = probe.seconds("video-contrast step", step)
        with torch.no_grad():
            per_clip = probe.seconds("video-contrast features", lambda: net(clips)) / len(clips)
        clips_scored = sum(work.videos.get(s, 0) for s in ("train", "test")) + work.rows * work.samples
        return [Estimate("fidelity-fit", f"{cfg.steps} steps of {cfg.batch_size} real clips", per_step * cfg.steps),
                Estimate("fidelity-features", f"{clips_scored:,} clips", per_clip * clips_scored)]


class LocalNetwork(FeatureExtractor):
    """A network from a local file, e.g. the I3D FVD is computed with: a TorchScript archive (.pt) or a
    `torch.export` program (.pt2). Loading runs the file's code: use files you trust. Grayscale clips are repeated to
    the channels it wants and scaled to its pixel range; nothing is downloaded."""

    class Config(ComponentConfig):
        path: Path = Field(description="the network file (.pt TorchScript or .pt2 torch.export), read from disk")
        frames: PositiveInt = Field(16, description="frames of a clip it reads, evenly spaced")
        size: PositiveInt = Field(224, description="pixels a side each frame is resized to")
        channels: Literal[1, 3] = 3
        layout: Literal["NCTHW", "NTCHW"] = Field("NCTHW", description="the input's axis order")
        pixel_range: tuple[float, float] = Field((-1.0, 1.0), description="what black and white map to")
        call_args: dict[str, bool | int | float | str] = Field(
            default_factory=dict, description="keyword arguments of each call (the FVD I3D file takes rescale, "
                                              "resize and return_features)")
        batch_size: PositiveInt = 16

    def __init__(self, config: ComponentConfig | None = None):
        super().__init__(config)
        self.model: Callable[..., torch.Tensor] | None = None

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.config.frames, self.config.size

    def _load(self, device: torch.device) -> Callable[..., torch.Tensor]:
        if self.model is None:
            path = self.config.path
            if not path.is_file():
                raise UserError(f"fidelity.features.args.path: {path} is not a file; give the path of a local "
                                "TorchScript (.pt) or torch.export (.pt2) file.")
            try:
                with warnings.catch_warnings():  # TorchScript is deprecated, but it is how FVD's I3D is shared
                    warnings.simplefilter("ignore", FutureWarning)
                    if path.suffix == ".pt2":
                        self.model = torch.export.load(str(path)).module().to(device)
                    else:
                        self.model = torch.jit.load(str(path), map_location=device).eval()
            except (RuntimeError, ValueError, OSError) as exc:
                raise UserError(f"fidelity.features.args.path: {path} is not a network torch can load "
                                f"({str(exc).splitlines()[0]}).") from None
        return self.model

    @torch.no_grad()
    def features(self, clips: np.ndarray, ctx: RunContext) -> torch.Tensor:
        cfg, model = self.config, self._load(ctx.device)
        low, high = cfg.pixel_range
        out = []
        for i in range(0, len(clips), cfg.batch_size):
            x = _unit(clips[i:i + cfg.batch_size], ctx.device) * (high - low) + low  # [B, T, H, W]
            x = x[:, :, None].expand(-1, -1, cfg.channels, -1, -1)  # NTCHW
            if cfg.layout == "NCTHW":
                x = x.permute(0, 2, 1, 3, 4)
            out.append(torch.as_tensor(model(x.contiguous(), **cfg.call_args)).float().flatten(1).cpu())
        return torch.cat(out)


@hookimpl
def register_feature_extractors(register):
    register("video-contrast", VideoContrast)
    register("local-network", LocalNetwork)
