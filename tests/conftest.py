"""Shared fixtures: one real run of the tiny spec per session, reused by the tests that only read its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "benchmarks" / "tiny.yaml"

os.environ.setdefault("HARNESS_DISABLE_PLUGIN_AUTOLOAD", "1")


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `harness ...` in a fresh interpreter, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("tiny")
    cache, out = base / "cache", base / "run"
    done = run_cli("--cache", str(cache), "run", str(TINY), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    return {"cache": cache, "out": out, "results": json.loads((out / "results.json").read_text()),
            "stdout": done.stdout}


@pytest.fixture
def registry():
    from harness.plugins import load_registry

    return load_registry()


THIRD_PARTY_MODULE = '''
"""A third party's generator plugin, installed as its own distribution."""
import numpy as np
import pandas as pd
from pydantic import Field

import harness
from harness.components import ComponentConfig, Generator
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
        table = pd.DataFrame({"video_id": [c.sample_id for c in conditions], "patient_id": "",
                              "ef": [c.ef for c in conditions], "split": "synthetic", "fps": 25.0,
                              "source_file": ""})
        prov = pd.DataFrame({"sample_id": table["video_id"], "seed": [c.seed for c in conditions],
                             "requested_ef": table["ef"], "source_ids": ""})
        return SampleSet(x, table, prov)


@harness.hookimpl
def register_generators(register):
    register("jitter", Jitter)
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
    path = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "HARNESS_DISABLE_PLUGIN_AUTOLOAD": ""}
