import numpy as np
import pandas as pd
import pytest
import torch

from harness.cache import ArtifactCache
from harness.context import RunContext
from harness.data import VideoSet
from harness.errors import UserError
from harness.metrics.reconstruction import psnr
from harness_plugins.encoders import VAE, Identity


@pytest.fixture
def ctx(tmp_path):
    return RunContext(torch.device("cpu"), 0, ArtifactCache(tmp_path / "cache"), show_progress=False)


def videos(n=3, t=4, seed=0) -> VideoSet:
    frames = np.random.default_rng(seed).integers(0, 256, (n, t, 112, 112), dtype=np.uint8)
    table = pd.DataFrame({"video_id": [f"v{i}" for i in range(n)], "patient_id": "p", "ef": 50.0,
                          "split": "train", "fps": 25.0, "source_file": ""})
    return VideoSet(frames, table)


def test_identity_round_trip_is_exact(ctx):
    v = videos()
    latents = Identity().encode(v, ctx)
    assert latents.latents.shape == (3, 4, 1, 112, 112) and latents.latents.dtype == np.float16
    np.testing.assert_array_equal(Identity().decode(latents, ctx).frames, v.frames)


def test_vae_latent_shape_and_save_pretrained_round_trip(ctx, tmp_path):
    vae = VAE(VAE.Config(train_steps=2, batch_size=2, crop=32))
    v = videos()
    vae.fit(v, ctx)
    latents = vae.encode(v, ctx)
    assert latents.latents.shape == (3, 4, 4, 14, 14) and latents.latents.dtype == np.float16
    assert vae.save_state(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = VAE(VAE.Config(weights=tmp_path / "vae"))
    reloaded.fit(v, ctx)  # with weights: loads, does not train
    np.testing.assert_array_equal(reloaded.encode(v, ctx).latents, latents.latents)
    assert vae.decode(latents, ctx).frames.shape == v.frames.shape


def test_vae_rejects_mismatched_or_missing_weights(ctx, tmp_path):
    vae = VAE(VAE.Config(train_steps=1, batch_size=2, crop=32))
    vae.fit(videos(1, 2), ctx)
    vae.save_state(tmp_path / "small")
    with pytest.raises(UserError, match="preset 'echonet-synthetic' expects"):
        VAE(VAE.Config(preset="echonet-synthetic", weights=tmp_path / "small")).fit(videos(1, 2), ctx)
    with pytest.raises(UserError, match="not a diffusers AutoencoderKL folder"):
        VAE(VAE.Config(weights=tmp_path / "nothing")).fit(videos(1, 2), ctx)
    with pytest.raises(UserError, match="encoder.args.weights"):
        VAE(VAE.Config(preset="echonet-synthetic")).fit(videos(1, 2), ctx)


def test_echonet_synthetic_preset_has_the_published_shape():
    model = VAE(VAE.Config(preset="echonet-synthetic"))._build()
    assert tuple(model.config.block_out_channels) == (128, 256, 256, 512)
    assert model.config.layers_per_block == 2 and model.config.latent_channels == 4
    with torch.no_grad():
        z = model.encode(torch.zeros(1, 3, 112, 112)).latent_dist.mode()
    assert z.shape == (1, 4, 14, 14)


def test_psnr_matches_the_definition():
    a = np.zeros((2, 4, 4), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / (255**2 / 32)))
    assert psnr(a, a) == float("inf")


def test_published_preset_trains_with_its_discriminator_from_disc_start(ctx, monkeypatch):
    from harness_plugins import encoders

    calls = []
    hinge = encoders.hinge_loss
    monkeypatch.setattr(encoders, "hinge_loss", lambda real, fake: calls.append(real.shape) or hinge(real, fake))
    with pytest.raises(UserError, match="train_steps"):
        VAE(VAE.Config(preset="echonet-synthetic")).fit(videos(1, 2), ctx)
    vae = VAE(VAE.Config(preset="echonet-synthetic", train_steps=3, batch_size=2, crop=32, disc_start=2))
    vae.fit(videos(2, 2), ctx)
    assert len(calls) == 1  # step 2 of 0, 1, 2: the discriminator is off before disc_start
    latents = vae.encode(videos(1, 2), ctx).latents
    assert latents.shape == (1, 2, 4, 14, 14) and np.isfinite(latents.astype(np.float32)).all()


def test_perceptual_loss_loads_local_lpips_weights(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    from harness_plugins.vae_loss import Perceptual

    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in torchvision.models.vgg16(weights=None).features.state_dict().items()}
    state.update({f"lin{i}.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))})
    save_file(state, tmp_path / "lpips.safetensors")
    lpips = Perceptual(tmp_path / "lpips.safetensors")
    a, b = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    assert torch.allclose(lpips(a, a), torch.zeros(2)) and (lpips(a, b) > 0).all()
    save_file({"lin0.weight": torch.rand(1, 64, 1, 1)}, tmp_path / "partial.safetensors")
    with pytest.raises(UserError, match="does not hold VGG-16"):
        Perceptual(tmp_path / "partial.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        Perceptual(tmp_path / "missing.safetensors")
