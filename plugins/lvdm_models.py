"""echo-lvdm's networks and noise schedule: the diffusers UNets of the LIDM and the LVDM in the published layout
(or a smaller one for the CPU presets), the v-prediction DDPM/DDIM schedulers, and the replicate padding of 14x14
latents to the 16x16 the UNets need."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 1  # 14x14 -> 16x16, replicate padding as the seed code's padf


def build_lidm(channels: tuple[int, ...], channels_in: int):
    from diffusers import UNet2DModel

    n = len(channels)
    if n == 4:  # the published layout: attention in the first three blocks
        down = ("AttnDownBlock2D",) * 3 + ("DownBlock2D",)
    else:  # small presets: attention only where the maps are small
        down = ("DownBlock2D",) + ("AttnDownBlock2D",) * (n - 1)
    up = tuple(reversed([d.replace("Down", "Up") for d in down]))
    return UNet2DModel(sample_size=16, in_channels=channels_in, out_channels=channels_in, block_out_channels=channels,
                       down_block_types=down, up_block_types=up, layers_per_block=2 if n == 4 else 1,
                       attention_head_dim=8, norm_num_groups=min(32, channels[0]), resnet_time_scale_shift="default")


def build_lvdm(channels: tuple[int, ...], heads: tuple[int, ...], channels_in: int, window: int,
               ef_embedding: int = 0):
    """The video UNet; `ef_embedding` > 0 gives it a time-id projection of that size, through which the EF is
    added to the timestep embedding of every block (SVD's added time ids), besides its cross-attention token that
    only the attention blocks see. The published model has a 1-wide projection, which maps every input to zero."""
    from diffusers import UNetSpatioTemporalConditionModel

    n = len(channels)
    if n == 4:  # the published layout: attention in the first three blocks
        down = ("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",)
    else:  # small presets: attention only below full resolution, which halves a CPU step
        down = ("DownBlockSpatioTemporal",) + ("CrossAttnDownBlockSpatioTemporal",) * (n - 1)
    up = tuple(reversed([d.replace("Down", "Up") for d in down]))
    return UNetSpatioTemporalConditionModel(
        sample_size=16, in_channels=2 * channels_in, out_channels=channels_in, down_block_types=down,
        up_block_types=up, block_out_channels=channels, num_attention_heads=heads,
        layers_per_block=2 if n == 4 else 1, transformer_layers_per_block=1, cross_attention_dim=1,
        addition_time_embed_dim=max(ef_embedding, 1), projection_class_embeddings_input_dim=max(ef_embedding, 1),
        num_frames=window)


def scheduler(kind: str):
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  prediction_type="v_prediction", clip_sample=True, clip_sample_range=4.0)
    return DDIMScheduler(**common) if kind == "ddim" else DDPMScheduler(**common, variance_type="fixed_small")


def pad(x: torch.Tensor) -> torch.Tensor:
    """[..., C, 14, 14] -> [..., C, 16, 16] by replicating the border."""
    shape = x.shape
    return F.pad(x.reshape(-1, *shape[-3:]), (PAD,) * 4, mode="replicate").reshape(*shape[:-2], shape[-2] + 2 * PAD,
                                                                                 shape[-1] + 2 * PAD)


def crop(x: torch.Tensor) -> torch.Tensor:
    return x[..., PAD:-PAD, PAD:-PAD]
