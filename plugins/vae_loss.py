"""The VAE's training loss: L1 reconstruction + a small KL term, and for the published preset the rest of the
latent-diffusion autoencoder loss EchoNet-Synthetic trained with: a PatchGAN discriminator switched on after
`disc_start` steps, and LPIPS when local weights for it are given.

The discriminator is a PatchGAN (Isola et al., 2017): strided 4x4 convolutions whose output is one real/fake logit
per image patch, trained with the hinge loss. The generator's adversarial term is scaled by the ratio of the
gradient norms of the reconstruction term and the adversarial term at the decoder's last layer (Esser et al.,
2021), so neither drowns the other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from harness.errors import UserError


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers + 1):
            previous, mult = mult, min(2 ** n, 8)
            stride = 2 if n < layers else 1  # the last block keeps the resolution: finer patches
            blocks += [nn.Conv2d(width * previous, width * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(width * mult), nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(width * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss: real patches pushed above +1, generated ones below -1."""
    return 0.5 * (torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean())


def _local(gradient: torch.Tensor) -> torch.Tensor:
    return gradient


def adaptive_weight(reconstruction: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor,
                    scale: float, whole_batch: Callable[[torch.Tensor], torch.Tensor] = _local) -> torch.Tensor:
    """`scale` x |grad of the reconstruction term| / |grad of the adversarial term| at `last_layer`; `whole_batch`
    turns a process's gradient on its part of the batch into the whole batch's (a multiple of it will do)."""
    rec = whole_batch(torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0])
    adv = whole_batch(torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0])
    return (rec.norm() / (adv.norm() + 1e-4)).clamp(0.0, 1e4).detach() * scale


class Perceptual(nn.Module):
    """LPIPS (Zhang et al., 2018) on VGG-16 features, from a local safetensors file holding torchvision's VGG-16
    `features.*` weights and the five linear heads `lin{0..4}.weight` ([1, C, 1, 1]); frames in [-1, 1]."""

    LAYERS = (3, 8, 15, 22, 29)  # the ReLU after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, weights: Path):
        super().__init__()
        import torchvision
        from safetensors.torch import load_file

        if not Path(weights).is_file():
            raise UserError(f"vae: perceptual_weights {weights} does not exist; give a local safetensors file with "
                            "VGG-16 features.* and lin0..lin4 weights, or leave it unset (no perceptual loss).")
        state = load_file(str(weights))
        self.features = torchvision.models.vgg16(weights=None).features[: self.LAYERS[-1] + 1]
        channels = (64, 128, 256, 512, 512)
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        try:
            self.features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                           if k.startswith("features.")})
            self.lin.load_state_dict({k[len("lin"):]: v for k, v in state.items()
                                      if k.startswith("lin")})
        except RuntimeError as exc:
            raise UserError(f"vae: {weights} does not hold VGG-16 features.* and lin0..lin4 weights "
                            f"({str(exc).splitlines()[0]}).") from None
        self.requires_grad_(False).eval()
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image distance `[B]` between frames `a` and `b` `[B, C, H, W]` (grey frames are repeated to RGB)."""
        x = (torch.cat([a, b]).expand(-1, 3, -1, -1) - self.shift) / self.scale
        total, layer = 0.0, 0
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.LAYERS:
                f = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                fa, fb = f[: len(a)], f[len(a):]
                total = total + self.lin[layer]((fa - fb).pow(2)).mean((1, 2, 3))
                layer += 1
        return total


class AutoencoderLoss(nn.Module):
    """The generator side of a training step as one module, so DDP (which hooks a module's forward) can train it.

    `per_image`: terms summed over each image's pixels and averaged over the batch, as the published loss is (the
    KL weight of 1e-6 is relative to that); else means over pixels (the `cpu` preset). The discriminator is not a
    submodule: it trains in its own step and its own DDP wrapper, and gets no gradient here. Over several
    processes, `whole_batch` makes the adaptive weight the whole batch's (see `adaptive_weight`).
    """

    def __init__(self, vae, kl_weight: float, per_image: bool, perceptual: Perceptual | None = None,
                 perceptual_weight: float = 1.0, discriminator: nn.Module | None = None, disc_weight: float = 0.5,
                 whole_batch: Callable[[torch.Tensor], torch.Tensor] = _local):
        super().__init__()
        self.vae, self.kl_weight, self.per_image = vae, kl_weight, per_image
        self.perceptual, self.perceptual_weight, self.disc_weight = perceptual, perceptual_weight, disc_weight
        self._discriminator = [discriminator]  # in a list: not registered, not trained by this module's DDP
        self._whole_batch = whole_batch

    def forward(self, x: torch.Tensor, eps: torch.Tensor, adversarial: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of frames `x` from a posterior sample with standard normal noise `eps`, and the reconstruction
        (the discriminator's fake input)."""
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.mean + posterior.std * eps).sample
        error = (recon - x).abs()
        if self.perceptual is not None:
            error = error + self.perceptual_weight * self.perceptual(x, recon).view(-1, 1, 1, 1)
        if self.per_image:
            reconstruction = error.sum() / len(x)
            loss = reconstruction + self.kl_weight * posterior.kl().sum() / len(x)
        else:
            reconstruction = error.mean()
            loss = reconstruction + self.kl_weight * posterior.kl().mean()
        if adversarial:
            judge = self._discriminator[0].requires_grad_(False)  # the gradient flows to `recon` only
            fooled = -judge(recon).mean()
            judge.requires_grad_(True)
            last = self.vae.decoder.conv_out.weight
            loss = loss + adaptive_weight(reconstruction, fooled, last, self.disc_weight, self._whole_batch) * fooled
        return loss, recon
