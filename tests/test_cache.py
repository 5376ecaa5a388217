import errno
import json

import pytest

from harness import cli
from harness.cache import ArtifactCache
from harness.errors import UserError
from harness.pipeline.stages import Stages


def test_failed_write_leaves_no_artifact(tmp_path):
    cache = ArtifactCache(tmp_path)
    key = cache.key("s", x=1)
    with pytest.raises(RuntimeError), cache.writing("s", key) as (tmp, _):
        (tmp / "half.npy").write_bytes(b"12")
        raise RuntimeError("killed")
    assert cache.get("s", key) is None and cache.leftovers() == []


def test_a_full_disk_mid_stage_is_one_sentence_and_leaves_the_cache_intact(tmp_path):
    """The disk fills while a stage writes (simulated: its build raises ENOSPC after 3 MiB): one sentence naming the
    cache folder and what the stage had written; no half artifact; the artifacts already there untouched; and an
    enclosing stage does not cache the failure, so the re-run after freeing space builds it."""
    cache = ArtifactCache(tmp_path)
    stages = Stages(cache)
    stages.run("kept", lambda folder: (folder / "a.txt").write_text("a") and None)
    full = [True]

    def inner(folder):
        (folder / "part.bin").write_bytes(b"0" * 3 * 2**20)
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "more.bin"))

    def outer(folder):
        stages.run("inner", inner)

    with pytest.raises(UserError) as caught:
        stages.run("outer", outer)
    message = str(caught.value)
    assert f"the disk of the cache folder {tmp_path} is full: stage 'inner' needs more than the 3.0 MiB" in message
    assert "re-run to resume" in message and "\n" not in message
    assert {a.stage for a in cache.entries()} == {"kept"} and cache.leftovers() == []
    full[0] = False
    stages.run("outer", outer)  # space freed: both build, nothing replays the failure
    assert {a.stage for a in cache.entries()} == {"kept", "inner", "outer"}


def test_a_full_disk_outside_the_cache_is_one_sentence(monkeypatch, capsys):
    def writes_nothing(args):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/results.json")

    monkeypatch.setitem(cli.COMMANDS, "validate", writes_nothing)
    assert cli.main(["validate", "spec.yaml"]) == 2
    assert capsys.readouterr().err == ("error: the disk is full (runs/x/results.json); free space there and re-run "
                                       "the same command: the cache keeps every finished stage.\n")


def test_written_artifact_is_found_and_keys_depend_on_content(tmp_path):
    cache = ArtifactCache(tmp_path)
    key = cache.key("s", x=1)
    assert key == cache.key("s", x=1) != cache.key("s", x=2) != cache.key("t", x=1)
    with cache.writing("s", key) as (tmp, meta):
        (tmp / "a.txt").write_text("a")
        meta["note"] = "hi"
    artifact = cache.get("s", key)
    assert artifact.meta["note"] == "hi" and (artifact.path / "a.txt").read_text() == "a"
    assert artifact.meta["files"]["a.txt"]["size"] == 1 and artifact.size_bytes == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_a_damaged_artifact_is_moved_aside_not_read(tmp_path, damage, caplog):
    cache = ArtifactCache(tmp_path)
    key = cache.key("s", x=1)
    with cache.writing("s", key) as (tmp, _):
        (tmp / "x.bin").write_bytes(b"0123456789")
    target = cache.path("s", key) / ("meta.json" if damage == "meta" else "x.bin")
    if damage == "truncate":
        target.write_bytes(b"01234")
    elif damage == "flip":
        target.write_bytes(b"0123456780")
    elif damage == "delete":
        target.unlink()
    else:
        target.write_text('{"format": 2, "fi')
    assert ArtifactCache(tmp_path).get("s", key) is None  # a fresh process: nothing verified yet
    assert "cache artifact of stage s is corrupt" in caplog.text and str(target) in caplog.text
    assert not cache.path("s", key).exists() and [p.name[:9] for p in cache.leftovers()] == [".corrupt-"]
    built, _ = cache.get_or_build("s", key, lambda folder, meta: (folder / "x.bin").write_bytes(b"new"))
    assert (built.path / "x.bin").read_bytes() == b"new"


def test_gc_removes_leftovers_and_unused(tmp_path):
    cache = ArtifactCache(tmp_path)
    keys = [cache.key("s", i=i) for i in range(3)]
    for key in keys:
        with cache.writing("s", key):
            pass
    (tmp_path / "s" / ".tmp-dead-1234").mkdir()
    removed = cache.gc(keep={("s", keys[0])})
    assert len(removed) == 3
    assert [a.key for a in cache.entries()] == [keys[0]] and cache.leftovers() == []


def test_cli_gc_keeps_what_runs_use(tiny_run, tmp_path):
    import shutil

    from tests.conftest import run_cli

    cache = tmp_path / "cache"
    shutil.copytree(tiny_run["cache"], cache)
    (cache / "samples" / ".tmp-killed-0000").mkdir()
    refused = run_cli("--cache", str(cache), "cache", "gc", "--runs", str(tmp_path / "none"))
    assert refused.returncode == 2 and "--leftovers-only" in refused.stderr
    done = run_cli("--cache", str(cache), "cache", "gc", "--runs", str(tiny_run["out"]))
    assert done.returncode == 0
    store = ArtifactCache(cache)
    used = {(s["stage"], s["key"]) for s in json.loads(
        (tiny_run["out"] / "manifest.json").read_text())["stages"]}
    assert {(a.stage, a.key) for a in store.entries()} == used and store.leftovers() == []
    listing = run_cli("--cache", str(cache), "cache", "ls")
    assert f"{len(used)} artifacts" in listing.stdout
