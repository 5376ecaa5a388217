import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cache import ArtifactCache
from harness.data import LatentSet, SampleSet
from tests.conftest import ROOT, TINY, run_cli, tiny_spec

TIMING_KEYS = {"sample_seconds_per_video", "fit_seconds", "peak_rss_mb", "cuda_peak_mb"}


def comparable(results: dict) -> dict:
    """Results without wall-clock timings, which legitimately differ between runs."""
    reid = {**results["reid"], "training": {k: v for k, v in results["reid"]["training"].items()
                                            if k != "epoch_seconds"}}
    downstream = results["downstream"]
    if downstream is not None:
        real = {**downstream["real_full"], "training": {k: v for k, v in downstream["real_full"]["training"].items()
                                                        if k != "epoch_seconds"}}
        downstream = {**downstream, "real_full": real}
    fidelity = {**results["fidelity"], "report": {k: v for k, v in results["fidelity"]["report"].items()
                                                  if k != "step_seconds"}}
    return {**results, "reid": reid, "downstream": downstream, "fidelity": fidelity,
            "rows": [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in results["rows"]]}


def test_run_writes_results_manifest_and_log(tiny_run):
    out, results = tiny_run["out"], tiny_run["results"]
    assert results["schema_version"] == 1
    assert [r["generator"] for r in results["rows"]] == ["copy", "holdout", "collapse", "phantom-fresh", "noise"]
    assert all(r["error"] is None and r["n_returned"] == 30 for r in results["rows"])
    assert results["encoder"]["latent_shape"] == [8, 4, 14, 14]
    manifest = json.loads((out / "manifest.json").read_text())
    for field in ("spec_hash", "benchmark_hash", "resolved_spec", "environment", "device", "seed", "stages"):
        assert field in manifest
    record = results["environment"]
    assert manifest["environment"] == record and manifest["device"] == "cpu"
    assert record["packages"]["torch"] and record["torch_build"]["version"] == torch.__version__
    assert record["device"]["type"] == "cpu" and record["device"]["name"] and record["device"]["threads"] >= 1
    assert record["seed"] == 0 and record["harness_version"] == results["harness_version"]
    if (ROOT / ".git").exists():  # a checkout records its commit
        assert len(record["git_revision"]) == 40 and isinstance(record["git_dirty"], bool)
    assert all({"seconds", "peak_rss_mb"} <= set(s) for s in manifest["stages"])
    assert "stage encoder-fit started" in (out / "run.log").read_text()
    assert f"outputs in {out}" in tiny_run["stdout"]
    assert (out / "samples" / "copy.csv").is_file() and (out / "leaderboard.md").is_file()


def test_second_run_recomputes_nothing(tiny_run, tmp_path):
    out = tmp_path / "again"
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(TINY), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert len(stages) >= 13 and [s["stage"] for s in stages if not s["cached"]] == []
    assert json.loads((out / "results.json").read_text()) == tiny_run["results"]


def _samples_by_row(run: dict) -> dict[str, SampleSet]:
    """The cached samples of each row of a run, found through the keys its manifest records."""
    stages = json.loads((run["out"] / "manifest.json").read_text())["stages"]
    keys = [s["key"] for s in stages if s["stage"] == "samples"]
    rows = [r["generator"] for r in run["results"]["rows"]]
    cache = ArtifactCache(run["cache"])
    return {row: SampleSet.load(cache.path("samples", key)) for row, key in zip(rows, keys, strict=True)}


def _stage_path(run: dict, stage: str) -> Path:
    """The cached artifact of one stage of a run (other runs may share the cache)."""
    stages = json.loads((run["out"] / "manifest.json").read_text())["stages"]
    return ArtifactCache(run["cache"]).path(stage, next(s["key"] for s in stages if s["stage"] == stage))


def test_control_samples_are_what_they_claim(tiny_run):
    train = LatentSet.load(_stage_path(tiny_run, "encode-train"))
    splits = {s: LatentSet.load(_stage_path(tiny_run, f"encode-{s}")).table["video_id"]
              for s in ("val", "test", "holdout")}
    samples = _samples_by_row(tiny_run)
    index = {v: i for i, v in enumerate(train.table["video_id"])}
    copy = samples["copy"]
    for i, src in enumerate(copy.provenance["source_ids"]):
        np.testing.assert_array_equal(copy.latents[i], train.latents[index[src]])
    # the holdout control's pool is the split no model, threshold or selection sees, and it is large enough
    held_out = set(samples["holdout"].provenance["source_ids"])
    assert held_out <= set(splits["holdout"]) and not held_out & (set(splits["val"]) | set(splits["test"]))
    assert held_out.isdisjoint(train.table["video_id"]) and len(held_out) == len(samples["holdout"])
    holdout = next(r for r in tiny_run["results"]["rows"] if r["generator"] == "holdout")
    assert holdout["generator_report"] == {"pool_split": "holdout", "pool_videos": 30}
    assert samples["collapse"].provenance["source_ids"].nunique() <= 2  # k = 2 in the tiny spec
    assert set(copy.provenance.columns) >= {"sample_id", "seed", "requested_ef", "source_ids"}


def wait_for(proc: subprocess.Popen, reached, failure: str, seconds: float = 300) -> None:
    """Poll until `reached()` while the run `proc` is still running; else kill it and fail with `failure`."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if reached():
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail(failure)


def test_killed_run_resumes_to_identical_results(tiny_run, tmp_path):
    """Killed inside the VAE's training: the data stages are kept, the training resumes from its last checkpoint,
    and the VAE and every number equal an uninterrupted run's (which saved no checkpoint). The tiny spec with one
    row and a short re-ID training: the VAE, the stage that is killed, is the tiny spec's own."""
    spec = tiny_spec(tmp_path, generators=[{"plugin": "copy"}], downstream=None, reid={"args": {"max_epochs": 10}})
    cache, out = tmp_path / "cache", tmp_path / "run"
    cmd = [sys.executable, "-m", "harness.cli", "--cache", str(cache), "run", str(spec), "--out", str(out),
           "--no-progress", "--checkpoint-steps", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for(proc, lambda: any((cache / "encoder-fit").glob(".tmp-*/checkpoint/vae.pt")),
             "the run never saved a checkpoint of the VAE's training")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = ArtifactCache(cache)
    # killed inside encoder-fit: the data stages are complete, encoder-fit left its temporary folder and checkpoint
    assert {a.stage for a in store.entries()} >= {"dataset-train"} and "encoder-fit" not in {
        a.stage for a in store.entries()}
    assert any(p.parent.name == "encoder-fit" for p in store.leftovers())
    done = run_cli("--cache", str(cache), "run", str(spec), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    executed = [s["stage"] for s in json.loads((out / "manifest.json").read_text())["stages"] if not s["cached"]]
    assert "dataset-train" not in executed and "encoder-fit" in executed
    assert re.search(r"vae: resumed from the checkpoint at step [1-9]", (out / "run.log").read_text())
    assert store.leftovers() == []  # the checkpoint went with its temporary folder, not into the artifact
    assert not any((cache / "encoder-fit").rglob("checkpoint"))
    resumed = next(a for a in store.entries() if a.stage == "encoder-fit")
    uninterrupted = tiny_run["cache"] / "encoder-fit" / resumed.key
    weights = "state/diffusion_pytorch_model.safetensors"
    assert (resumed.path / weights).read_bytes() == (uninterrupted / weights).read_bytes()
    again = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(tmp_path / "again"),
                    "--no-progress")
    assert again.returncode == 0, again.stderr
    assert comparable(json.loads((out / "results.json").read_text())) == comparable(
        json.loads((tmp_path / "again" / "results.json").read_text()))


def test_an_interrupted_run_says_so_and_resumes_without_recomputing_what_it_finished(tmp_path):
    """Ctrl-C once the VAE has trained: one sentence, exit 130, and the next run loads every stage the first one
    finished (artifacts are written whole or not at all) and computes only the rest."""
    spec = tiny_spec(tmp_path, generators=[{"plugin": "copy"}], downstream=None, reid={"args": {"max_epochs": 10}},
                     seed=11)  # its own seed: every stage is cold, whatever other tests left in their caches
    cache, out = tmp_path / "cache", tmp_path / "run"
    cmd = [sys.executable, "-m", "harness.cli", "--cache", str(cache), "run", str(spec), "--out", str(out),
           "--no-progress"]
    # as from a terminal: a shell's background job (a CI script may be one) starts with Ctrl-C ignored
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(proc, lambda: any((cache / "encoder-fit").glob("*/meta.json")),
             "the run ended or stalled before its VAE was trained")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "interrupted; re-run the same command to resume from the cache." in err, err
    finished = {(a.stage, a.key) for a in ArtifactCache(cache).entries()}
    assert {"dataset-train", "encoder-fit"} <= {stage for stage, _ in finished}
    done = run_cli(*cmd[3:])
    assert done.returncode == 0, done.stderr
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert not {(s["stage"], s["key"]) for s in stages if not s["cached"]} & finished
    assert {(s["stage"], s["key"]) for s in stages if s["cached"]} >= {f for f in finished if f[0] == "encoder-fit"}


def _spec(tmp_path, dataset: str, generators: str = "  - plugin: copy\n") -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(f"spec_version: 1\nname: bad\ndevice: cpu\ndataset: {dataset}\nencoder: {{plugin: identity}}\n"
                    f"samples_per_generator: 4\ngenerators:\n{generators}")
    return str(path)


def _assert_clean_failure(done, cache, *phrases):
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for phrase in phrases:
        assert phrase in done.stderr
    files = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert files == []


def test_missing_dataset_root_fails_cleanly(tmp_path):
    cache = tmp_path / "cache"
    spec = _spec(tmp_path, f"{{plugin: echonet-dynamic, args: {{root: {tmp_path / 'absent'}}}}}")
    done = run_cli("--cache", str(cache), "run", spec, "--out", str(tmp_path / "run"))
    _assert_clean_failure(done, cache, "does not exist", "dataset.args.root")


def test_filelist_missing_column_fails_cleanly(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "FileList.csv").write_text("FileName,Split\nabc,TRAIN\n")
    cache = tmp_path / "cache"
    spec = _spec(tmp_path, f"{{plugin: echonet-dynamic, args: {{root: {root}}}}}")
    done = run_cli("--cache", str(cache), "run", spec, "--out", str(tmp_path / "run"))
    _assert_clean_failure(done, cache, "FileList.csv: column 'EF' is missing")


@pytest.mark.parametrize("problem, phrase", [
    ("plugin: copy\n    n_samples: -3", "generators.0.n_samples"),
    ("plugin: copy\n    args: {noise_std: [1]}", "generators.0.args.noise_std"),
    ("plugin: cpy", "Did you mean 'copy'?"),
])
def test_bad_specs_fail_before_touching_the_cache(tmp_path, problem, phrase):
    cache = tmp_path / "cache"
    done = run_cli("--cache", str(cache), "run", _spec(tmp_path, "{plugin: echo-phantom}", f"  - {problem}\n"))
    _assert_clean_failure(done, cache, phrase)


def test_bad_generator_output_becomes_an_error_row(third_party, tiny_run, tmp_path):
    spec = tiny_spec(tmp_path, generators=[{"plugin": "copy"},
                                           {"plugin": "jitter", "name": "shape", "args": {"shape_bug": True}},
                                           {"plugin": "jitter", "name": "nan", "args": {"nan_bug": True}}])
    def cached_samples() -> int:
        return sum(a.stage == "samples" for a in ArtifactCache(tiny_run["cache"]).entries())

    before = cached_samples()
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(spec), "--out", str(tmp_path / "run"),
                   "--no-progress", env=third_party)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    rows = {r["generator"]: r for r in json.loads((tmp_path / "run" / "results.json").read_text())["rows"]}
    assert rows["copy"]["error"] is None and rows["copy"]["n_returned"] == 30
    assert "shape [7, 4, 14, 14]" in rows["shape"]["error"] and "[8, 4, 14, 14]" in rows["shape"]["error"]
    assert "NaN" in rows["nan"]["error"]
    assert "generator 'shape'" in done.stderr and "generator 'nan'" in done.stderr
    assert cached_samples() == before  # copy came from the cache; nothing of the bad output was stored


def test_malformed_yaml_run_fails_before_touching_the_cache(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("spec_version: 1\nname: x\ngenerators:\n  - plugin: copy\n   args: {}\n")
    cache = tmp_path / "cache"
    done = run_cli("--cache", str(cache), "run", str(spec), "--out", str(tmp_path / "run"))
    _assert_clean_failure(done, cache, "broken.yaml:5: malformed YAML")


def test_dynamic_degree_says_how_much_each_row_moves(tiny_run):
    """The real test videos set the threshold at their 10th percentile step, so they move at about 0.9; training
    videos (the copy row) move like them."""
    results = tiny_run["results"]
    assert 0.85 <= results["motion"]["dynamic_degree_real"] <= 0.95
    rows = {r["generator"]: r for r in results["rows"]}
    for row in rows.values():
        assert 0.0 <= row["dynamic_degree_low"] <= row["dynamic_degree"] <= row["dynamic_degree_high"] <= 1.0
    assert rows["copy"]["dynamic_degree_gap"] < 0.15


def test_phantom_fresh_honours_the_requested_ef(tiny_run):
    samples = _samples_by_row(tiny_run)["phantom-fresh"]
    assert samples.provenance["source_ids"].str.startswith("new:").all()
    np.testing.assert_allclose(samples.table["ef"], samples.provenance["requested_ef"], atol=1e-6)
    assert samples.provenance["requested_ef"].nunique() > 1


def test_warm_run_loads_no_models(tiny_run, registry, tmp_path):
    """Everything is cached, deterministic failures included (e.g. a strategy with too few videos to train)."""
    from harness.pipeline import run
    from harness.spec import validate_spec

    outcome = run(validate_spec(TINY, registry), registry, ArtifactCache(tiny_run["cache"]), tmp_path / "run",
                  show_progress=False)
    assert comparable(outcome.results) == comparable(tiny_run["results"])
    assert outcome.executed == [] and outcome.manifest["models_loaded"] == []


def test_corrupt_artifact_is_reported_moved_aside_and_rebuilt(tiny_run, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    # other test processes may be writing into the shared cache: their unfinished folders are not the tiny run's
    shutil.copytree(tiny_run["cache"], cache, ignore=shutil.ignore_patterns(".tmp-*"))
    run = {"cache": cache, "out": tiny_run["out"]}
    latents = _stage_path(run, "encode-train") / "latents.npy"
    latents.write_bytes(latents.read_bytes()[:100])  # cut short, as by a full disk
    done = run_cli("--cache", str(cache), "run", str(TINY), "--out", str(tmp_path / "run"), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cache artifact of stage encode-train is corrupt ({latents} is 100 bytes" in done.stderr
    executed = [s["stage"] for s in json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
                if not s["cached"]]
    assert executed == ["encode-train"]  # rebuilt to the same content, so nothing downstream changed
    assert comparable(json.loads((tmp_path / "run" / "results.json").read_text())) == comparable(
        tiny_run["results"])
    assert [p.name.startswith(".corrupt-") for p in ArtifactCache(cache).leftovers()] == [True]


@pytest.mark.parametrize("content", [b"spec_version: 1\nname: caf\xe9\n", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_non_utf8_or_binary_spec_is_one_sentence(tmp_path, content):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(content)
    done = run_cli("run", str(spec), "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {spec}: ") and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (["--row-name", "mine"], "apply to --generator"),
    (["--generator", "copy", "--generator-args", "{k: 1}"], "--generator-args is not valid JSON"),
])
def test_generator_options_out_of_place_are_one_sentence(tmp_path, extra, message):
    done = run_cli("run", str(TINY), "--out", str(tmp_path / "run"), *extra)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_two_runs_on_one_cache_compute_each_stage_once(tmp_path):
    spec = tiny_spec(tmp_path, generators=[{"plugin": "copy"}], downstream=None,
                     reid={"args": {"max_epochs": 10}})  # the cache is the question here, not the model
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-m", "harness.cli", "--cache", str(cache), "run", str(spec),
                               "--out", str(tmp_path / name), "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    manifests = [json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("a", "b")]
    computed = [(s["stage"], s["key"]) for m in manifests for s in m["stages"] if not s["cached"]]
    assert len(computed) == len(set(computed)) == len({(s["stage"], s["key"]) for s in manifests[0]["stages"]})
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("a", "b")]
    assert comparable(results[0]) == comparable(results[1])
