"""Shared fixtures: one real run of the tiny spec per session, reused by the tests that only read its outputs.

Under pytest-xdist (`tox` runs the suite as one worker per core, whole files each) every worker and every run it starts
use one CPU thread, so the workers share the cores instead of oversubscribing them, and the workers share the
one tiny run."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "benchmarks" / "tiny.yaml"

os.environ.setdefault("HARNESS_DISABLE_PLUGIN_AUTOLOAD", "1")
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.update(HARNESS_THREADS="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `harness ...` in a fresh interpreter, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied: dicts merge recursively, None removes a key, anything else replaces."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def tiny_spec(folder: Path, name: str = "spec.yaml", **changes) -> Path:
    """A variant of tiny.yaml built by merging `changes` into its data (never by editing its text)."""
    path = folder / name
    path.write_text(yaml.safe_dump(merged(yaml.safe_load(TINY.read_text()), changes), sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    session = tmp_path_factory.getbasetemp()
    base = (session.parent if WORKER else session) / "tiny"  # the xdist workers' session folder is the parent
    base.mkdir(exist_ok=True)
    cache, out = base / "cache", base / "run"
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker runs it, the others wait and read
        if not (out / "results.json").exists():
            done = run_cli("--cache", str(cache), "run", str(TINY), "--out", str(out), "--no-progress")
            assert done.returncode == 0, done.stderr
            (base / "stdout.txt").write_text(done.stdout)
    return {"cache": cache, "out": out, "results": json.loads((out / "results.json").read_text()),
            "stdout": (base / "stdout.txt").read_text()}


@pytest.fixture
def registry():
    from harness.plugins import load_registry

    return load_registry()


THIRD_PARTY_MODULE = '''
"""A third party's generator plugin, installed as its own distribution."""
import numpy as np
from pydantic import Field

import harness
from harness.components import ComponentConfig, Generator, RowMetric
from harness.data import SampleSet


class Jitter(Generator):
    """Training videos shifted by a constant: the smallest real generator."""

    class Config(ComponentConfig):
        shift: float = Field(0.5, ge=0)
        shape_bug: bool = False
        nan_bug: bool = False

    def fit(self, data, ctx):
        self.train = data["train"]

    def sample(self, conditions, ctx):
        idx = [c.seed % len(self.train) for c in conditions]
        x = np.asarray(self.train.latents, dtype=np.float32)[idx] + self.config.shift
        if self.config.shape_bug:
            x = x[:, :-1]
        if self.config.nan_bug:
            x[0, 0, 0, 0, 0] = np.nan
        return SampleSet.from_conditions(x, conditions, fps=25.0)


class MeanPmax(RowMetric):
    """The mean best re-ID score of a row's samples against the training videos."""

    label = "mean P_max"
    direction = "↓"

    def compute(self, features):
        return float(np.mean(features.pmax))


@harness.hookimpl
def register_generators(register):
    register("jitter", Jitter)


@harness.hookimpl
def register_metrics(register):
    register("mean-pmax", MeanPmax)
'''


MISSPELLED_HOOK_MODULE = '''
import harness
from harness_plugins.controls import Copy


@harness.hookimpl
def register_generator(register):
    register("never", Copy)
'''


BAD_HOOK_MODULE = '''
import harness
from harness_plugins.controls import Copy


@harness.hookimpl
def register_generators(register):
    register("half-registered", Copy)
    raise RuntimeError("registration bug")
'''


def make_distribution(folder: Path, name: str, module_source: str, entry_points: str) -> Path:
    """A real installed distribution as importlib.metadata sees it: a module plus a .dist-info folder."""
    folder.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    (folder / f"{module}.py").write_text(module_source)
    info = folder / f"{module}-0.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3.1\n")
    (info / "entry_points.txt").write_text(f"[harness]\n{entry_points}\n")
    (info / "RECORD").write_text("")
    return folder


@pytest.fixture(scope="session")
def third_party(tmp_path_factory) -> dict:
    """PYTHONPATH and env that expose a third-party generator plugin and a plugin that fails to import."""
    folder = tmp_path_factory.mktemp("site")
    make_distribution(folder, "harness-jitter", THIRD_PARTY_MODULE, "jitter = harness_jitter")
    make_distribution(folder, "harness-broken", "raise ImportError('needs a missing library')\n",
                      "broken = harness_broken")
    make_distribution(folder, "harness-badhook", BAD_HOOK_MODULE, "badhook = harness_badhook")
    make_distribution(folder, "harness-typo", MISSPELLED_HOOK_MODULE, "typo = harness_typo")
    path = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "HARNESS_DISABLE_PLUGIN_AUTOLOAD": ""}
