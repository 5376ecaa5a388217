"""The echo-lvdm generator: trains and samples for real (tiny preset), carries provenance, regenerates exactly."""

import json

import numpy as np
import pytest

from harness.errors import UserError
from harness_plugins.lvdm import EchoLVDM
from tests.conftest import TINY, run_cli


@pytest.fixture(scope="module")
def lvdm_run(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("lvdm") / "run"
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(TINY), "--generator", "echo-lvdm",
                   "--generator-args", '{"preset": "tiny"}', "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    return {"cache": tiny_run["cache"], "out": out, "results": json.loads((out / "results.json").read_text())}


def test_echo_lvdm_row_joins_the_benchmark_with_provenance(lvdm_run, tiny_run):
    import pandas as pd

    (row,) = lvdm_run["results"]["rows"]
    assert row["error"] is None and row["n_returned"] == 30 and "memorised_pct" in row
    assert lvdm_run["results"]["benchmark"]["benchmark_hash"] == tiny_run["results"]["benchmark"]["benchmark_hash"]
    table = pd.read_csv(lvdm_run["out"] / "samples" / "echo-lvdm.csv")
    assert {"seed", "requested_ef", "sampler", "steps", "model_hash", "batch"} <= set(table.columns)
    assert table["model_hash"].nunique() == 1 and (table["sampler"] == "ddim").all()
    copy = pd.read_csv(tiny_run["out"] / "samples" / "copy.csv")
    np.testing.assert_allclose(table["requested_ef"], copy["requested_ef"])  # the benchmark's shared conditions


def test_regenerate_reproduces_a_sample_bit_for_bit(lvdm_run):
    done = run_cli("--cache", str(lvdm_run["cache"]), "regenerate", str(lvdm_run["out"]), "s000007")
    assert done.returncode == 0 and "bit-for-bit identical" in done.stdout, done.stdout + done.stderr
    done = run_cli("--cache", str(lvdm_run["cache"]), "regenerate", str(lvdm_run["out"]), "s999999")
    assert done.returncode == 2 and "no row has a sample 's999999'" in done.stderr


def test_bad_weights_and_conditions_are_one_sentence(tmp_path):
    from harness.data import Condition

    (tmp_path / "lidm").mkdir()
    with pytest.raises(UserError, match="is not a diffusers model folder"):
        EchoLVDM()._load_weights(tmp_path)
    model = EchoLVDM(EchoLVDM.Config(preset="tiny"))
    model.lidm = model.lvdm = object()
    with pytest.raises(UserError, match="requested EF 120.0 of sample a is outside 0-100"):
        model.sample([Condition("a", 1, 120.0)], ctx=None)


def _latents(n: int = 4, frames: int = 8):
    import pandas as pd

    from harness.data import LatentSet

    table = pd.DataFrame({"video_id": [f"v{i}" for i in range(n)], "patient_id": "",
                          "ef": np.linspace(30.0, 70.0, n), "split": "train", "fps": 25.0, "source_file": ""})
    latents = np.random.default_rng(0).standard_normal((n, frames, 4, 14, 14)).astype(np.float16)
    return LatentSet(latents, table)


def _ctx(tmp_path):
    import torch

    from harness.cache import ArtifactCache
    from harness.context import RunContext

    return RunContext(torch.device("cpu"), 0, ArtifactCache(tmp_path), show_progress=False)


def test_published_preset_trains_with_the_published_settings(tmp_path):
    """Without weights the echonet-synthetic preset trains at the published shapes; its defaults are the seed
    code's (one step of each model here, with small batches)."""
    published = EchoLVDM.Config(preset="echonet-synthetic")
    assert [published.setting(k) for k in ("lidm_steps", "lvdm_steps", "batch_size", "video_batch_size", "lr",
                                           "video_lr", "noise_offset", "condition_dropout")] == [
        500_000, 500_000, 256, 16, 3e-4, 1e-4, 0.1, 0.1]
    model = EchoLVDM(EchoLVDM.Config(preset="echonet-synthetic", lidm_steps=1, lvdm_steps=1, batch_size=2,
                                     video_batch_size=1))
    train = _latents(2)
    model.fit({"train": train, "val": train}, _ctx(tmp_path))
    assert tuple(model.lvdm.config.block_out_channels) == (128, 256, 256, 512) and model.window == 8


def test_guidance_moves_samples_and_needs_condition_dropout(tmp_path):
    from harness.data import Condition

    train, ctx = _latents(), _ctx(tmp_path)
    with pytest.raises(UserError, match="guidance needs a video model that learned without its EF"):
        EchoLVDM(EchoLVDM.Config(preset="tiny", guidance=2.0)).fit({"train": train, "val": train}, ctx)
    guided = EchoLVDM(EchoLVDM.Config(preset="tiny", condition_dropout=0.5, noise_offset=0.1, guidance=3.0))
    guided.fit({"train": train, "val": train}, ctx)
    plain = EchoLVDM(EchoLVDM.Config(preset="tiny", condition_dropout=0.5, noise_offset=0.1))
    plain.__dict__.update({k: v for k, v in guided.__dict__.items() if k != "config"})  # the same trained models
    conditions = [Condition("a", 1, 30.0), Condition("b", 2, 70.0)]
    a, b = guided.sample(conditions, ctx).latents, plain.sample(conditions, ctx).latents
    assert np.isfinite(a).all() and a.shape == b.shape and not np.allclose(a, b)


def test_condition_dropout_replaces_the_ef_in_training():
    import torch

    from harness_plugins.lvdm import NULL_EF
    from harness_plugins.lvdm_models import scheduler

    seen = []
    model = EchoLVDM(EchoLVDM.Config(preset="tiny", condition_dropout=0.5))
    model._video_forward = lambda net, noisy, cond, ef, t: seen.append(ef) or torch.zeros_like(noisy)
    clips, ef = torch.zeros(400, 2, 4, 16, 16), torch.full((400,), 0.5)
    model._video_loss(None, scheduler("ddpm"), (clips, clips[:, 0], ef), torch.Generator().manual_seed(0), "cpu",
                      slice(None))
    dropped = (seen[0] == NULL_EF).float().mean().item()
    assert set(seen[0].tolist()) == {NULL_EF, 0.5} and 0.4 < dropped < 0.6


def test_privacy_filter_redraws_flagged_conditioning_frames(lvdm_run, tiny_run):
    """A filter that flags every first draw makes each sample redraw its frame once, with other output."""
    from pathlib import Path

    import torch

    from harness.cache import ArtifactCache
    from harness.context import RunContext
    from harness.data import Condition

    (row,) = lvdm_run["results"]["rows"]
    state = Path(ArtifactCache(lvdm_run["cache"]).path("generator-fit", row["artifacts"]["generator-fit"])) / "state"
    conditions = [Condition(f"s{i}", 10 + i, 50.0) for i in range(3)]
    ctx = RunContext(torch.device("cpu"), 0, ArtifactCache(lvdm_run["cache"]), show_progress=False)
    plain = EchoLVDM(EchoLVDM.Config(preset="tiny"))
    plain.load_state(state)
    filtered = EchoLVDM(EchoLVDM.Config(preset="tiny", privacy_filter=True))
    filtered.load_state(state)
    with pytest.raises(UserError, match="privacy_filter needs a re-ID model"):
        filtered.sample(conditions, ctx)

    class FirstDrawFlagged:
        def __init__(self):
            self.calls = 0

        def memorised(self, frames):
            self.calls += 1
            return np.full(len(frames), self.calls == 1)

    ctx = ctx.using(privacy_filter=FirstDrawFlagged())
    out = filtered.sample(conditions, ctx)
    assert out.provenance["filter_redraws"].tolist() == [1, 1, 1]
    assert not out.provenance["conditioning_memorised"].any()
    assert not np.array_equal(out.latents, plain.sample(conditions, ctx).latents)


def test_filtered_row_runs_with_the_spec_re_id(tiny_run, tmp_path):
    import pandas as pd

    out = tmp_path / "run"
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(TINY), "--generator", "echo-lvdm",
                   "--generator-args", '{"preset": "tiny", "privacy_filter": true}', "--row-name", "lvdm-filtered",
                   "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["generator"] == "lvdm-filtered" and row["error"] is None
    table = pd.read_csv(out / "samples" / "lvdm-filtered.csv")
    assert {"filter_redraws", "conditioning_memorised"} <= set(table.columns)


def test_weight_folder_of_another_preset_is_one_sentence(tmp_path):
    import pandas as pd

    from harness.data import LatentSet
    from harness_plugins.lvdm import PRESETS
    from harness_plugins.lvdm_models import build_lidm, build_lvdm

    tiny = PRESETS["tiny"]
    build_lidm(tiny["lidm_channels"], 4).save_pretrained(tmp_path / "lidm")
    build_lvdm(tiny["lvdm_channels"], tiny["heads"], 4, tiny["window"]).save_pretrained(tmp_path / "lvdm")
    table = pd.DataFrame({"video_id": ["a"], "patient_id": "", "ef": [50.0], "split": "train", "fps": 25.0,
                          "source_file": ""})
    train = LatentSet(np.zeros((1, 8, 4, 14, 14), np.float16), table)
    model = EchoLVDM(EchoLVDM.Config(preset="echonet-synthetic", weights=str(tmp_path)))
    with pytest.raises(UserError, match=r"lidm has block_out_channels \[16, 32\], but preset 'echonet-synthetic' "
                                        r"expects \[128, 256, 256, 512\]"):
        model.fit({"train": train, "val": train}, ctx=None)
    loaded = EchoLVDM(EchoLVDM.Config(preset="tiny", weights=str(tmp_path)))
    loaded.fit({"train": train, "val": train}, ctx=None)  # the matching preset loads them
    assert loaded.window == 8 and loaded.model_hash()


def test_the_ema_warms_up_like_diffusers_ema_model():
    """diffusers' EMAModel default: the first step copies the model, then min(decay, (1 + k) / (10 + k))."""
    from harness_plugins.lvdm import ema_decay

    assert ema_decay(0, 0.995) == 0.0
    assert ema_decay(1, 0.995) == pytest.approx(2 / 11)
    assert ema_decay(90, 0.995) == pytest.approx(91 / 100)
    assert ema_decay(10_000, 0.995) == 0.995
