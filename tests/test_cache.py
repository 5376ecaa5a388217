import json

import pytest

from harness.cache import ArtifactCache


def test_failed_write_leaves_no_artifact(tmp_path):
    cache = ArtifactCache(tmp_path)
    key = cache.key("s", x=1)
    with pytest.raises(RuntimeError), cache.writing("s", key, {}) as tmp:
        (tmp / "half.npy").write_bytes(b"12")
        raise RuntimeError("killed")
    assert cache.get("s", key) is None and cache.leftovers() == []


def test_written_artifact_is_found_and_keys_depend_on_content(tmp_path):
    cache = ArtifactCache(tmp_path)
    key = cache.key("s", x=1)
    assert key == cache.key("s", x=1) != cache.key("s", x=2) != cache.key("t", x=1)
    with cache.writing("s", key, {"note": "hi"}) as tmp:
        (tmp / "a.txt").write_text("a")
    artifact = cache.get("s", key)
    assert artifact.meta["note"] == "hi" and (artifact.path / "a.txt").read_text() == "a"


def test_gc_removes_leftovers_and_unused(tmp_path):
    cache = ArtifactCache(tmp_path)
    keys = [cache.key("s", i=i) for i in range(3)]
    for key in keys:
        with cache.writing("s", key, {}):
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
