import numpy as np
import pytest
import torch

from harness.checkpoint import TORCH_RNG, CheckpointPolicy, TrainingCheckpoint
from harness.errors import UserError

STEPS = 10


class Killed(Exception):
    pass


def _train(folder, kill_after: int | None = None, identity: str = "key-a") -> torch.Tensor:
    """A loop that draws from every kind of generator a checkpoint restores: torch's global one (dropout, init), a
    numpy Generator (batches) and an explicit torch Generator (noise)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=3, gamma=0.5)
    batches, noise = np.random.default_rng(1), torch.Generator().manual_seed(2)
    data = torch.randn(64, 4)
    checkpoint = TrainingCheckpoint(folder, "toy", identity, CheckpointPolicy(every_steps=2))
    state = {"model": model, "optimiser": optimiser, "schedule": schedule, "batches": batches, "noise": noise,
             "torch": TORCH_RNG}
    for step in range(checkpoint.resume(state), STEPS):
        x = data[batches.choice(64, 8)] + 0.1 * torch.randn(8, 4, generator=noise)
        loss = model(x).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        checkpoint.save_if_due(step + 1, state)
        if kill_after is not None and step + 1 == kill_after:
            raise Killed
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_resumed_loop_reaches_the_uninterrupted_weights(tmp_path):
    uninterrupted = _train(None)
    with pytest.raises(Killed):
        _train(tmp_path, kill_after=5)
    assert torch.load(tmp_path / "toy.pt", weights_only=True)["step"] == 4  # the last save before the kill
    assert torch.equal(_train(tmp_path), uninterrupted)


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    with pytest.raises(Killed):
        _train(tmp_path, kill_after=3)
    with pytest.raises(UserError, match="another configuration"):
        _train(tmp_path, identity="key-b")


def test_outside_a_stage_nothing_is_saved(tmp_path):
    checkpoint = TrainingCheckpoint(None, "toy", "key", CheckpointPolicy(every_steps=1))
    checkpoint.save_if_due(1, {"torch": TORCH_RNG})
    assert checkpoint.resume({"torch": TORCH_RNG}) == 0 and not list(tmp_path.iterdir())


def test_a_foreign_checkpoint_stops_a_stage_without_becoming_its_cached_outcome(tmp_path):
    from harness.cache import CHECKPOINTS, TMP_PREFIX, ArtifactCache
    from harness.context import RunContext
    from harness.pipeline.stages import Stages

    cache = ArtifactCache(tmp_path)
    stages = Stages(cache)
    ctx = RunContext(torch.device("cpu"), 0, cache, show_progress=False)

    def build(folder, ctx):
        return {"step": ctx.checkpoint("toy").resume({"torch": TORCH_RNG})}

    key = stages.key("toy", {"ctx": ctx})
    killed = tmp_path / "toy" / f"{TMP_PREFIX}{key}-dead" / CHECKPOINTS
    TrainingCheckpoint(killed, "toy", "another key", CheckpointPolicy()).save_if_due(3, {"torch": TORCH_RNG},
                                                                                    force=True)
    with pytest.raises(UserError, match="written by another configuration"):
        stages.run("toy", build, ctx=ctx)
    assert cache.get("toy", key) is None and cache.leftovers()  # not cached; the checkpoint stays for the user
    cache.gc(keep=None)
    assert stages.run("toy", build, ctx=ctx).meta["step"] == 0


def test_a_checkpoint_interval_that_is_not_positive_is_one_sentence():
    from tests.conftest import TINY, run_cli

    done = run_cli("run", str(TINY), "--checkpoint-steps", "0", "--no-progress")
    assert done.returncode == 2 and "must be positive" in done.stderr and "Traceback" not in done.stderr
