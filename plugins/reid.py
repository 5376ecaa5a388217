"""Built-in `siamese` re-identification filter (Packhaeuser et al.; the seed paper's privacy model).

A torchvision ResNet whose first convolution takes the encoder's channels maps a frame to 128 sigmoid features;
the head `Linear(128 -> 1)` on `|f_a - f_b|` gives the logit that two frames come from the same video. The seed
code trains it (`objective: pairs`, the paper presets) with BCE-with-logits on one pair per training video per
epoch, half positive (two different frames of one video) and half negative (frames of two videos), with Adam and
early stopping on the validation loss.

With the pairs objective, negatives may be hard (`hard_negatives`): drawn among the videos the model being trained
finds nearest. Random negatives soon become easy, and a model that never meets a near neighbour ranks a frame of one
patient no higher than the nearest of thousands of other patients' frames; content memorisation compares every frame
with every training frame and needs that resolution. On the phantom default, random negatives left a training
patient's frames shown with new motion (`content-copy`) 23 % content-memorised; hard negatives, 96-100 % (holdout
4-5 %).

A memorising generator's samples reach the harness decoded, compressed, resampled or re-scaled, never as exact
latents. The seed code normalises a clip by its min and max over all frames (`normalise: clip`, the default), so a
codec that changes later frames more rescales frame 0 too. `normalise: frame` standardises every frame on its own:
on the phantom default (three models pooled) it took near-copies from 55 / 42 % memorised (H.264 crf 23 / 28) to
77 / 64 %, 88 to 100 % (MJPEG), 6 to 73 % (gain 1.1), with perturbed held-out videos at 1-11 %. But a frame's own
brightness, which it cancels, is also what tells one patient from another: a training patient's anatomy with new
motion (`content-copy`) fell from 99 to 62 % content-memorised, and frames of a training video at another phase
(`collapse`) from 95 to 27 % first-frame memorised, so it is not the default. `perturbed` trains a share of the
pairs on perturbed copies of the videos (every perturbation of `harness_plugins.perturbations` at a random strength,
encoded by the run's encoder).

The `cpu` preset trains with the `batch` objective (SSCD's lesson for copy detectors: train on the transformations
as positives, keep many negatives): a batch of videos, each with a partner frame of its own, half of the partners
from a perturbed copy, and every anchor scored against every partner of the batch; InfoNCE ranks a video's own
partner first, a BCE balanced between positives and negatives keeps one absolute bar (τ is one threshold for every
query); a few off-manifold frames (Gaussian latents with the training latents' moments, and batch frames with their
latent pixels scrambled) are negatives of every anchor and of each other (`off_manifold`), so the model neither
matches noise with a patient nor two noise frames with each other. A
batch of 64 gives 4,032 negative pairs a step where the seed code's pairs give 32. On the phantom default (three
models pooled, 60 near-copies a side, first-frame memorised %, with P_max against every training frame), against
the pairs objective with hard negatives (first frames): H.264 crf 23 / 28 61 / 43 -> 100 / 98 %, gamma 0.9 4 -> 94 %,
noise 84 -> 100 %, the encoder's round trip 4 -> 71 %, gain 1.1 7 -> 65 %, scale 0.95 2 -> 55 %, shift 4 6 -> 14 %,
crop 0.9 3 -> 12 %; content-copy 60 -> 87 % (perturbed held-out videos 2-8 %). The same perturbed partners with the
pairs objective did worse on nearly everything (one model: H.264 50 / 35 %, collapse 28 %): 32 negatives a step did
not teach invariance and identity at once. The perturbed partners come from 8 copies of every training video, 4
frames of each (`views`, `view_frames`, `harness_plugins.reid_views`).

The head's weights are kept <= 0 (projected after every step; `monotone_head`), so the logit can only fall as two
frames' features differ and an exact copy of a training video always scores highest against it. Unconstrained, as
in the paper, a head can learn positive weights on a few features; then an unrelated pair that differs in those
features outscores an exact copy, and P_max (a maximum over training videos) rewards difference: on the phantom
default that sent τ above a copy's own score and the copy control to 1 % memorised.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt
from safetensors.torch import load_file, save_file
from torch import nn

from harness import hookimpl
from harness.checkpoint import TORCH_RNG, LoopValues
from harness.components import PresetConfig, ReIdFilter
from harness.context import RunContext, mixed_precision
from harness.data import LatentSet
from harness.errors import UserError
from harness.hashing import stable_hash
from harness.metrics.classification import roc_auc
from harness.metrics.reid import sample_pairs
from harness.plan import Estimate, Probe, Workload
from harness.weights import load_state_dict
from harness_plugins.reid_objective import hard_negatives, in_batch_loss, latent_moments, off_manifold, positive_pairs
from harness_plugins.reid_views import frames_of, perturbed_partners, shared_views

PRESETS = {
    # the seed paper's latent-space model (UltrasoundPrivacy config_*.json, "Final")
    "paper-latent": dict(backbone="resnet50", lr=5e-4, batch_size=1024, patience=150, max_epochs=1000,
                         hard_negatives=0.0, normalise="clip", perturbed=0.0, objective="pairs"),
    # the seed paper's image-space model (config_*_is.json)
    "paper-image": dict(backbone="resnet50", lr=1e-4, batch_size=128, patience=50, max_epochs=1000,
                        hard_negatives=0.0, normalise="clip", perturbed=0.0, objective="pairs"),
    # minutes on a 2-core CPU for phantom-sized cohorts; a higher lr because few steps fit in that time (at 5e-4
    # the head barely leaves its random init in 200 steps and exact copies are not their own nearest video); every
    # pair of a batch scored, half the partners perturbed copies: near-copies are flagged (see the module's doc)
    "cpu": dict(backbone="resnet18", lr=2e-3, batch_size=64, patience=30, max_epochs=150, hard_negatives=1.0,
                normalise="clip", perturbed=0.5, objective="batch"),
}

#: EchoNet-Synthetic's re-ID checkpoints name the backbone `model` and the head `fc_end` (outside-formats.md §3).
ECHONET_SYNTHETIC_NAMES = {"model.": "backbone.", "fc_end.": "head."}


def normalise_videos(x: torch.Tensor) -> torch.Tensor:
    """Per-video min-max to [-1, 1] over the whole clip (T x C x H x W), as the seed code's "pmone"."""
    flat = x.reshape(len(x), -1)
    low = flat.min(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    high = flat.max(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    return 2.0 * (x - low) / (high - low).clamp_min(1e-8) - 1.0


def normalise_frames(x: torch.Tensor) -> torch.Tensor:
    """Every channel of every frame (`[..., C, H, W]`) to zero mean and unit variance on its own: what a frame
    looks like to the model does not depend on the clip's other frames (a codec that changes later frames more, or
    a clip cut elsewhere, leaves it alone), and a global gain or offset of a channel cancels."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / std.clamp_min(1e-6)


NORMALISE = {"clip": normalise_videos, "frame": normalise_frames}


class SiameseNetwork(nn.Module):
    def __init__(self, backbone: str, in_channels: int, features: int):
        super().__init__()
        import torchvision  # here, not at import: `harness plugins` and warm runs need no model code

        net = getattr(torchvision.models, backbone)(weights=None, num_classes=features)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.backbone = net
        self.head = nn.Linear(features, 1)
        # Negative initial weights make the untrained head a distance (identical frames score highest), as the
        # seed code's tests set it; training then refines it. With the default symmetric init, a briefly trained
        # head still ranks some different videos above an exact copy.
        nn.init.uniform_(self.head.weight, -2.0 / features**0.5, 0.0)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.backbone(frames))

    def forward(self, a: torch.Tensor, b: torch.Tensor, every_pair: bool = False) -> torch.Tensor:
        """The logit of each pair `(a[i], b[i])`, or with `every_pair` of every `(a[i], b[j])` as `[len(a), len(b)]`."""
        f = self.embed(torch.cat([a, b]))  # one batch, so batch-norm statistics see both sides
        fa, fb = f[: len(a)], f[len(a):]
        if every_pair:
            return (fa[:, None] - fb[None]).abs().matmul(self.head.weight[0]) + self.head.bias
        return self.head((fa - fb).abs()).squeeze(1)


class Siamese(ReIdFilter):
    """Siamese ResNet re-ID model; `paper-latent`, `paper-image` and `cpu` presets set backbone and optimiser."""

    # editing a preset (or, by hand, the training) invalidates old models; 6: fused Adam; 7: off-manifold frames
    # scrambled as well as Gaussian, negatives of each other too
    version = "7-" + stable_hash(PRESETS)[:8]

    class Config(PresetConfig):
        presets = PRESETS
        preset: Literal["cpu", "paper-latent", "paper-image"] = "cpu"
        backbone: Literal["resnet18", "resnet34", "resnet50"] | None = Field(None, description="preset's if unset")
        features: PositiveInt = 128
        lr: float | None = Field(None, gt=0)
        batch_size: PositiveInt | None = None
        patience: PositiveInt | None = Field(None, description="epochs without a better validation loss (objective "
                                                               "pairs; batch trains all `max_epochs`)")
        max_epochs: PositiveInt | None = None
        hard_negatives: float | None = Field(None, ge=0, le=1, description="share of negative pairs whose second "
                                             "video is one of the `hard_pool` videos the model being trained finds "
                                             "nearest to the first (objective pairs); 0: random negatives, as the "
                                             "paper")
        hard_pool: PositiveInt = Field(3, description="how many nearest videos a hard negative is drawn from")
        weights: str | None = Field(None, description="local .safetensors or torch state dict to start from")
        monotone_head: bool = Field(True, description="keep the head's weights <= 0 while training, so the score "
                                                      "only falls as two frames' features differ; false: the "
                                                      "paper's unconstrained head")
        normalise: Literal["clip", "frame"] | None = Field(
            None, description="clip: per-video min-max over the whole clip (the seed code's); frame: every frame's "
                              "channels standardised on their own; preset's if unset")
        perturbed: float | None = Field(
            None, ge=0, le=1, description="share of training pairs whose second frame comes from a perturbed copy "
                                          "of its video (codec, frame rate, start, shift, scale, crop, gain, gamma, "
                                          "noise, the encoder's round trip), positives and negatives alike; 0: the "
                                          "paper's frame pairs; preset's if unset")
        views: PositiveInt = Field(8, description="perturbed copies made of every training video")
        view_frames: PositiveInt = Field(4, description="frames of every perturbed copy encoded (drawn at random): "
                                                        "more copies of fewer frames show more perturbations for "
                                                        "the same cost")
        objective: Literal["pairs", "batch"] | None = Field(
            None, description="pairs: one pair per training video per epoch, BCE (the seed code's); batch: batches of "
                              "videos, each video's frame scored against a partner frame of every video of the batch "
                              "(InfoNCE both ways plus BCE balanced between positives and negatives); preset's if "
                              "unset")

    def __init__(self, config=None):
        super().__init__(config)
        self.net: SiameseNetwork | None = None
        self.report: dict = {}

    # ------------------------------------------------------------------------------------------ model

    def _build(self, in_channels: int) -> SiameseNetwork:
        net = SiameseNetwork(self.config.setting("backbone"), in_channels, self.config.features)
        if self.config.weights:
            state = load_state_dict(Path(self.config.weights), net, "re-ID", "; check `backbone` and `features`",
                                    aliases=ECHONET_SYNTHETIC_NAMES)
            net.load_state_dict(state, strict=True)
        return net

    def head_parameters(self) -> tuple[torch.Tensor, float]:
        return self.net.head.weight.detach().float().cpu()[0], float(self.net.head.bias.detach().cpu()[0])

    # ------------------------------------------------------------------------------------------ training

    def fit(self, train: LatentSet, val: LatentSet, ctx: RunContext) -> None:
        if len(train) < 2 or len(val) < 2:
            raise UserError("the siamese re-ID model needs at least 2 training and 2 validation videos.")
        cfg = self.config
        torch.manual_seed(ctx.seed_for("siamese-init"))
        normalise = NORMALISE[cfg.setting("normalise")]
        x_train = normalise(torch.from_numpy(np.asarray(train.latents, dtype=np.float32)))
        x_val = normalise(torch.from_numpy(np.asarray(val.latents, dtype=np.float32)))
        perturbed = cfg.setting("perturbed")
        moments = latent_moments(train.latents)
        x_views = None  # the perturbed copies a pair's second frame may come from (`frames_of`)
        if perturbed > 0:
            x_views = normalise(torch.from_numpy(shared_views(train, cfg.views, cfg.view_frames, ctx)))
        net = self._build(x_train.shape[2]).to(ctx.device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.setting("lr"), fused=True)
        loss_fn = nn.BCEWithLogitsLoss()
        rng = ctx.rng("siamese-pairs")
        val_pairs = sample_pairs(len(x_val), x_val.shape[1], np.random.default_rng(0))  # fixed, as the seed code
        progress = LoopValues(best_loss=float("inf"), best_epoch=-1, best_state=None, best_auc=float("nan"),
                              epoch_seconds=[], bad_epochs=0)
        checkpoint = ctx.checkpoint("siamese")
        state = {"net": net, "optimiser": opt, "pairs": rng, "progress": progress, "torch": TORCH_RNG}
        start = checkpoint.resume(state)
        trained = ctx.group.wrap(net, ctx.device)  # DDP over the processes of the run, else `net` itself
        epochs = cfg.setting("max_epochs")
        epoch = start - 1
        bar = ctx.progress(range(start, epochs), initial=start, total=epochs, desc="re-ID training")
        for epoch in bar:
            net.train()
            started = time.perf_counter()
            every_pair = cfg.setting("objective") == "batch"
            pairs = self._epoch_pairs(net, x_train, every_pair, rng, ctx)
            if perturbed > 0:
                pairs = perturbed_partners(pairs, len(x_train), cfg.views, x_views.shape[1], perturbed, rng)
            for batch in np.array_split(pairs, max(1, -(-len(pairs) // cfg.setting("batch_size")))):
                part, weight = ctx.group.batch_part(len(batch))  # this process's pairs of the batch
                if every_pair:
                    anchors = x_train[batch[part, 0], batch[part, 1]]
                    off = off_manifold(moments, anchors, max(2, len(batch[part]) // 4), normalise, rng)
                    loss = in_batch_loss(_pair_logits(trained, x_train, x_views, batch[part], ctx.device, off),
                                         len(batch[part]))
                else:
                    loss = loss_fn(_pair_logits(trained, x_train, x_views, batch[part], ctx.device),
                                   torch.as_tensor(batch[part, 4], dtype=torch.float32, device=ctx.device))
                loss = loss * weight
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if cfg.monotone_head:
                    with torch.no_grad():
                        net.head.weight.clamp_(max=0.0)
            progress["epoch_seconds"].append(time.perf_counter() - started)
            # the batch objective trains its whole schedule and keeps its last state: its partners are perturbed
            # copies, the validation pairs are not, and their loss stopped models before they learned to see
            # through the perturbations (phantom default: best epochs 5-87 of 150, gamma near-copies 0-100 %).
            # So only its last epoch is validated, for the report.
            if not every_pair or epoch == epochs - 1:
                val_loss, val_auc = self._validate(net, x_val, val_pairs, ctx)
                if val_loss < progress["best_loss"] or every_pair:
                    progress.update(best_loss=val_loss, best_epoch=epoch, best_auc=val_auc, bad_epochs=0,
                                    best_state={k: v.detach().clone() for k, v in net.state_dict().items()})
                else:
                    progress["bad_epochs"] += 1
                bar.set_postfix(val_loss=f"{val_loss:.3f}", val_auc=f"{val_auc:.3f}")
            if progress["bad_epochs"] >= cfg.setting("patience"):
                break
            checkpoint.save_if_due(epoch + 1, state)
        net.load_state_dict(progress["best_state"])
        self.net = net.eval()
        self.report = {"epochs": epoch + 1, "best_epoch": progress["best_epoch"] + 1,
                       "val_loss": round(progress["best_loss"], 5), "val_auc": round(progress["best_auc"], 5),
                       "epoch_seconds": round(float(np.median(progress["epoch_seconds"])), 5),
                       "train_pairs_per_epoch": len(x_train), "backbone": cfg.setting("backbone"),
                       "normalise": cfg.setting("normalise"), "perturbed": perturbed,
                       "objective": cfg.setting("objective")}

    def _epoch_pairs(self, net: SiameseNetwork, x: torch.Tensor, every_pair: bool, rng: np.random.Generator,
                     ctx: RunContext) -> np.ndarray:
        """An epoch's pairs: for the `batch` objective every video once, in random order, with another of its frames
        (the other videos of its batch are its negatives); for `pairs`, one pair per video, half negative, hard
        negatives redrawn among the nearest videos."""
        if every_pair:
            return positive_pairs(len(x), x.shape[1], rng)
        pairs = sample_pairs(len(x), x.shape[1], rng)
        if self.config.setting("hard_negatives") > 0:
            pairs = hard_negatives(net, x, pairs, self.config.setting("hard_negatives"), self.config.hard_pool, rng,
                                    ctx.device)
        return pairs

    @torch.no_grad()
    def _validate(self, net: SiameseNetwork, x: torch.Tensor, pairs: np.ndarray, ctx: RunContext):
        net.eval()
        logits = torch.cat([_pair_logits(net, x, None, chunk, ctx.device).float().cpu()
                            for chunk in np.array_split(pairs, max(1, len(pairs) // 256))])
        labels = torch.as_tensor(pairs[:, 4], dtype=torch.float32)
        loss = float(nn.functional.binary_cross_entropy_with_logits(logits, labels))
        return loss, roc_auc(labels.numpy(), logits.numpy())

    # ------------------------------------------------------------------------------------------ inference

    @torch.no_grad()
    def embed(self, videos: np.ndarray, ctx: RunContext, frames: list[int] | None = None,
              batch_videos: int = 64) -> torch.Tensor:
        """Features `[N, F, D]` of the chosen frames (all when None), normalised as in training (`normalise`)."""
        self.net.eval().to(ctx.device)
        chosen = list(range(videos.shape[1])) if frames is None else list(frames)
        normalise = NORMALISE[self.config.setting("normalise")]
        out = []
        for start in ctx.progress(range(0, len(videos), batch_videos), desc="re-ID features"):
            clip = torch.from_numpy(np.asarray(videos[start:start + batch_videos], dtype=np.float32))
            x = normalise(clip)[:, chosen].to(ctx.device)
            f = self.net.embed(x.reshape(-1, *x.shape[2:])).float().cpu()
            out.append(f.view(len(x), len(chosen), -1))
        return torch.cat(out)

    # ------------------------------------------------------------------------------------------ state

    def fit_report(self) -> dict:
        return self.report

    def plan(self, work: Workload, probe: Probe) -> list[Estimate]:
        """Training timed per step on pairs of random frames of the encoder's shape, run to `max_epochs` (early
        stopping may end it sooner); embedding timed per frame."""
        cfg = self.config
        net = self._build(work.latent[0]).to(probe.device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.setting("lr"), fused=True)

        def step_at(b: int):
            a, other = (torch.rand(b, *work.latent, device=probe.device) for _ in range(2))

            def step():
                with mixed_precision(probe.device):
                    loss = net(a, other).float().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            return step

        batch, epochs = cfg.setting("batch_size"), cfg.setting("max_epochs")
        steps = epochs * -(-work.videos["train"] // batch)
        step = probe.batch_seconds("re-ID training step", batch, step_at, 4)
        net.eval()
        with torch.no_grad():
            per_frame = probe.batch_seconds("re-ID embedding", 256, lambda b: lambda: net.embed(
                torch.rand(b, *work.latent, device=probe.device)), 16) / 256
        kept = len(range(0, work.frames, work.stride))
        real = sum(work.videos.values()) + work.videos.get("test", 0) * work.frames + \
            (work.videos["train"] + work.videos.get("test", 0)) * kept
        samples = work.rows * work.samples * (1 + kept)
        return [Estimate("reid-fit", f"{epochs} epochs x {work.videos['train']:,} pairs (batch {batch})", steps * step,
                         "at most: early stopping"),
                Estimate("embed real", f"{real:,} frames", real * per_frame),
                Estimate("embed samples", f"{samples:,} frames, all rows", samples * per_frame)]

    def save_state(self, folder: Path) -> bool:
        save_file({k: v.contiguous().cpu() for k, v in self.net.state_dict().items()}, folder / "siamese.safetensors")
        meta = {"in_channels": self.net.backbone.conv1.in_channels, "report": self.report}
        (folder / "siamese.json").write_text(json.dumps(meta))
        return True

    def load_state(self, folder: Path) -> None:
        meta = json.loads((folder / "siamese.json").read_text())
        net = SiameseNetwork(self.config.setting("backbone"), meta["in_channels"], self.config.features)
        net.load_state_dict(load_file(folder / "siamese.safetensors"))
        self.net, self.report = net.eval(), meta["report"]


def _pair_logits(net: SiameseNetwork, x: torch.Tensor, views: torch.Tensor | None, pairs: np.ndarray,
                 device: torch.device, off_manifold_partners: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the pairs (second frames from the videos `x` or their perturbed copies `views`); given
    off-manifold frames, of every anchor and off-manifold frame against every partner and off-manifold frame
    (`[len(pairs) + k, len(pairs) + k]`, the batch objective)."""
    a = x[pairs[:, 0], pairs[:, 1]].to(device, non_blocking=True)
    b = frames_of(x, views, pairs[:, 2], pairs[:, 3]).to(device, non_blocking=True)
    with mixed_precision(device):
        if off_manifold_partners is None:
            return net(a, b).float()
        off = off_manifold_partners.to(device)
        return net(torch.cat([a, off]), torch.cat([b, off]), every_pair=True).float()


@hookimpl
def register_reid_filters(register):
    register("siamese", Siamese)
