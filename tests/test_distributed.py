"""Runs over several processes: one DDP step equals one process's step, and the tiny spec runs as 2 gloo processes."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from harness.distributed import SINGLE, ProcessGroup, concat
from harness.errors import UserError
from tests.conftest import TINY, run_cli


def test_shards_cover_every_item_in_order_without_cutting_a_batch():
    for n, align, world in [(30, 1, 2), (30, 16, 2), (5, 16, 3), (0, 4, 2), (100, 7, 8)]:
        blocks = [ProcessGroup(rank, world).shard(n, align) for rank in range(world)]
        assert [i for block in blocks for i in block] == list(range(n))
        assert all(block.start % align == 0 for block in blocks if len(block))
    assert SINGLE.map(lambda block: list(block), 5) == [[0, 1, 2, 3, 4]]


def test_a_batch_smaller_than_the_processes_is_one_sentence():
    with pytest.raises(UserError, match="cannot be split over 4 processes"):
        ProcessGroup(0, 4).batch_part(3)
    assert SINGLE.batch_part(5) == (slice(0, 5), 1.0)


def _model() -> nn.Module:
    from plugins.ef import LatentCNN

    torch.manual_seed(0)
    return nn.ModuleDict({"conv": nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU()),
                          "ef": LatentCNN(4, size=8)})


def _step(group: ProcessGroup) -> dict[str, torch.Tensor]:
    """One training step of a batch-norm model and of the EF model (with dropout) on this rank's part of a batch
    of 10; gradients, batch-norm statistics and the dropout mask must come out as one process's."""
    model = _model()
    gen = torch.Generator().manual_seed(1)
    images, clips, y = torch.randn(10, 4, 8, 8, generator=gen), torch.randn(10, 4, 6, 8, 8, generator=gen), \
        torch.randn(10, generator=gen)
    part, weight = group.batch_part(10)
    conv, ef = group.wrap(model["conv"], torch.device("cpu")), group.wrap(model["ef"], torch.device("cpu"))
    torch.manual_seed(2)
    keep = model["ef"].dropout_mask(10)[part]
    loss = (conv(images[part]).mean((1, 2, 3)) - y[part]).pow(2).mean() * weight
    loss = loss + (ef(clips[part], keep=keep) - y[part]).pow(2).mean() * weight
    loss.backward()
    return {**{f"grad.{k}": p.grad for k, p in model.named_parameters()},
            **{f"buffer.{k}": b.float() for k, b in model.named_buffers()}}


def _scores(group: ProcessGroup) -> dict[str, torch.Tensor]:
    """All-pairs scoring of 9 queries (an odd count: the shards differ in size) over the group's processes: first
    frames against the training set, and best frame matches of frame stacks."""
    from harness.evaluation import Reference

    gen = torch.Generator().manual_seed(3)
    train, query = torch.randn(40, 16, generator=gen), torch.randn(9, 16, generator=gen)
    frames_train, frames_query = torch.randn(40, 3, 16, generator=gen), torch.randn(9, 3, 16, generator=gen)
    ref = Reference(train_first=train, train_ids=[], test_first=train, test_frames=frames_train[:, :1],
                    weight=-torch.rand(16, generator=gen), bias=0.5, group=group)
    pmax, nearest = ref.pmax(query, "pred")
    content, content_nearest = ref.best_frames(frames_query, frames_train)
    return {"score.pmax": pmax, "score.nearest": nearest.float(), "score.content": torch.from_numpy(content),
            "score.content_nearest": torch.from_numpy(content_nearest).float()}


def _vae_step(group: ProcessGroup) -> dict[str, torch.Tensor]:
    """One adversarial step of the published VAE loss (per-image L1 + KL, the discriminator's term scaled by the
    adaptive weight) and one discriminator step, on this rank's part of a batch of 6."""
    from diffusers import AutoencoderKL

    from plugins.vae_loss import AutoencoderLoss, PatchDiscriminator, hinge_loss

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=(8, 8), layers_per_block=1,
                        latent_channels=2, norm_num_groups=4, sample_size=16)
    disc = PatchDiscriminator(1, width=8, layers=2)
    gen = torch.Generator().manual_seed(4)
    x, eps = torch.rand(6, 1, 16, 16, generator=gen) * 2 - 1, torch.randn(6, 2, 8, 8, generator=gen)
    part, weight = group.batch_part(6)
    cpu = torch.device("cpu")
    loss_of = group.wrap(AutoencoderLoss(vae, 1e-6, True, discriminator=disc,
                                         whole_batch=lambda g: group.sum(g * weight)), cpu)
    judge = group.wrap(disc, cpu)
    loss, recon = loss_of(x[part], eps[part], True)
    (loss * weight).backward()
    assert all(p.grad is None for p in disc.parameters())  # the generator's step leaves the discriminator alone
    (hinge_loss(judge(x[part]), judge(recon.detach())) * weight).backward()
    return {**{f"vae.grad.{k}": p.grad for k, p in vae.named_parameters()},
            **{f"disc.grad.{k}": p.grad for k, p in disc.named_parameters()},
            **{f"disc.buffer.{k}": b.float() for k, b in disc.named_buffers()}}


def _built_alone(group: ProcessGroup, folder: str) -> dict[str, torch.Tensor]:
    """A stage built `alone` (reading a dataset): rank 0 builds it as a single process would, every rank reads
    it; each build says in `builders.txt` which rank made it and whether it saw the other ranks."""
    from harness.cache import ArtifactCache

    def build(tmp, meta):
        with open(f"{folder}/builders.txt", "a") as log:
            log.write(f"rank {group.rank} in step: {group.active}\n")
        np.save(tmp / "value.npy", np.arange(3.0))

    artifact, _ = ArtifactCache(f"{folder}/cache", group).get_or_build("dataset", "k", build, alone=True)
    return {"cache.alone": torch.from_numpy(np.load(artifact.path / "value.npy"))}


LVDM_LR = 3e-4


def _lvdm(group: ProcessGroup, folder: str, steps: int = 2) -> dict[str, torch.Tensor]:
    """The EMA weights of echo-lvdm (tiny) after `steps` LIDM and LVDM steps on the group (0: the initial ones)."""
    from harness.cache import ArtifactCache
    from harness.context import RunContext
    from plugins.lvdm import EchoLVDM
    from tests.test_lvdm import _latents

    model = EchoLVDM(EchoLVDM.Config(preset="tiny", lidm_steps=steps, lvdm_steps=steps, batch_size=4,
                                     video_batch_size=2, lr=LVDM_LR, video_lr=LVDM_LR))
    train = _latents(4)
    model.fit({"train": train, "val": train}, RunContext(torch.device("cpu"), 0, ArtifactCache(folder),
                                                         show_progress=False, group=group))
    return {f"lvdm.{name}.{k}": v for name in ("lidm", "lvdm") for k, v in getattr(model, name).state_dict().items()}


def _worker(rank: int, port: int, queue, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        group = ProcessGroup(rank, 2, rank)
        results = {**_step(group), **_vae_step(group), **_scores(group), **_lvdm(group, f"{folder}/{rank}"),
                   **_built_alone(group, folder)}
        queue.put((rank, {k: v.detach().float().numpy().copy() for k, v in results.items()}))
    finally:
        dist.destroy_process_group()


def test_one_ddp_step_and_all_pairs_scoring_over_two_processes_equal_one_process(tmp_path):
    """Over 2 gloo processes, one training step (batch norm, dropout; the published VAE loss's adversarial step,
    whose adaptive weight must be the whole batch's) and all-pairs scoring equal one process's; echo-lvdm's
    trainings keep the ranks identical and land on the one-process weights up to the reduction-order differences
    Adam amplifies (at most about 2 learning rates per step; most weights agree far closer). A stage built alone
    (a dataset) is built by rank 0 only and read by both."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(rank, port, queue, str(tmp_path))) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    torch.set_num_threads(1)
    (tmp_path / "single").mkdir()
    alone = {**_step(SINGLE), **_vae_step(SINGLE), **_scores(SINGLE), **_lvdm(SINGLE, str(tmp_path / "alone")),
             **_built_alone(SINGLE, str(tmp_path / "single"))}
    assert (tmp_path / "builders.txt").read_text() == "rank 0 in step: False\n"  # the other rank did not build
    alone = {k: v.detach().float().numpy() for k, v in alone.items()}
    assert set(results[0]) == set(alone)
    for rank in range(2):
        for name, value in alone.items():
            if name.startswith(("vae.", "disc.")):  # per-image sums: large gradients, compared at their scale
                assert np.abs(results[rank][name] - value).max() <= 2e-4 * np.abs(value).max() + 1e-6, (rank, name)
            elif not name.startswith("lvdm."):
                assert np.allclose(results[rank][name], value, rtol=1e-4, atol=1e-6), (rank, name)
    trained = [k for k in alone if k.startswith("lvdm.")]
    assert all(np.array_equal(results[0][k], results[1][k]) for k in trained)  # DDP keeps the ranks in step
    init = _lvdm(SINGLE, str(tmp_path / "init"), steps=0)
    moved = np.concatenate([np.abs(alone[k] - init[k].float().numpy()).ravel() for k in trained])
    apart = np.concatenate([np.abs(results[0][k] - alone[k]).ravel() for k in trained])
    assert moved.mean() > 1e-4 and apart.max() <= 4 * LVDM_LR + 1e-6 and apart.mean() < 0.05 * moved.mean()


def test_rows_concatenate_in_order():
    from harness.data import VideoSet

    table = __import__("pandas").DataFrame({"video_id": list("abc"), "patient_id": "", "ef": 50.0, "split": "x",
                                            "fps": 25.0, "source_file": ""})
    videos = VideoSet(np.arange(3 * 2 * 4 * 4, dtype=np.uint8).reshape(3, 2, 4, 4), table)
    joined = concat([videos.subset(range(0, 2)), videos.subset(range(2, 3))])
    assert np.array_equal(joined.frames, videos.frames) and joined.table["video_id"].tolist() == list("abc")


@pytest.mark.parametrize("args, message", [(["--nproc", "3"], "--nproc-force"), (["--nproc", "0"], "positive")])
def test_too_many_processes_on_a_cpu_is_one_sentence(tmp_path, args, message):
    if torch.cuda.is_available():
        pytest.skip("counts GPUs on a GPU machine")
    done = run_cli("--cache", str(tmp_path / "cache"), "run", str(TINY), "--out", str(tmp_path / "run"), *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_a_process_group_that_cannot_start_is_one_sentence(tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "no-such-host.invalid",
           "MASTER_PORT": "29500", "HARNESS_JOIN_SECONDS": "3"}
    done = run_cli("--cache", str(tmp_path / "cache"), "run", str(TINY), "--out", str(tmp_path / "run"), env=env)
    assert done.returncode == 2, done.stderr
    assert "process group did not start" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "cache").exists()


def test_the_tiny_spec_runs_as_two_processes_like_one(tiny_run, tmp_path):
    """2 gloo processes: rank 0 alone writes; every row asks for the same samples (ids, seeds, EFs); the VAE trained
    with DDP agrees with the one-process run's up to floating point (different thread counts and reduction order);
    samples drawn from seeds agree likewise; the controls land where they must."""
    cache, out = tmp_path / "cache", tmp_path / "run"
    done = run_cli("--cache", str(cache), "run", str(TINY), "--out", str(out), "--no-progress", "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Done in") == 1  # rank 0 reports, the other rank is silent
    results = json.loads((out / "results.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert results["environment"]["device"]["processes"] == 2
    assert not list(cache.glob("*/.tmp-*")) and not list(cache.glob("**/*rank*"))
    alone = tiny_run["results"]
    assert [r["generator"] for r in results["rows"]] == [r["generator"] for r in alone["rows"]]
    rows = {r["generator"]: r for r in results["rows"]}
    for row in alone["rows"]:
        ours = rows[row["generator"]]
        assert ours["error"] is None and ours["n_returned"] == row["n_returned"]
        table = (out / "samples" / f"{row['generator']}.csv").read_text().splitlines()
        theirs = (tiny_run["out"] / "samples" / f"{row['generator']}.csv").read_text().splitlines()
        assert [line.split(",")[:3] for line in table] == [line.split(",")[:3] for line in theirs]  # id, seed, EF
    # copies of training frames reach the re-ID model's ceiling in any number of processes (1: test_reid)
    assert rows["copy"]["memorised_pct"] == 100.0 and rows["collapse"]["memorised_pct"] >= 90
    assert rows["noise"]["memorised_pct"] <= rows["holdout"]["memorised_pct_high"]  # no more than real unseen videos

    def artifact(root, stage, key, name):
        return root / stage / key / name

    keys = {s["stage"]: s["key"] for s in manifest["stages"] if s["stage"] == "encoder-fit"}
    weights = "state/diffusion_pytorch_model.safetensors"
    ours = load_file(artifact(cache, "encoder-fit", keys["encoder-fit"], weights))
    theirs = load_file(artifact(tiny_run["cache"], "encoder-fit", keys["encoder-fit"], weights))
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) < 1e-3
    noise = rows["noise"]["artifacts"]["samples"]  # each sample's own seed, scaled by the training latents' spread
    assert np.allclose(np.load(artifact(cache, "samples", noise, "latents.npy")).astype(np.float32),
                       np.load(artifact(tiny_run["cache"], "samples", noise, "latents.npy")).astype(np.float32),
                       atol=2e-2)
