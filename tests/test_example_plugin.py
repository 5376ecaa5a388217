"""The example third-party distribution in examples/: installed with pip, its pixel-space generator gets a row."""

import json
import os
import subprocess
import sys

import pandas as pd

from tests.conftest import ROOT, TINY, run_cli


def test_example_pixel_generator_installs_and_joins_the_benchmark(tiny_run, tmp_path):
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(ROOT / "examples" / "harness-pixel-example")],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "HARNESS_DISABLE_PLUGIN_AUTOLOAD": ""}
    listed = json.loads(run_cli("plugins", "--json", env=env).stdout)
    example = next(p for p in listed if p["name"] == "pixel-example")
    assert example["distribution"] == "harness-pixel-example" and example["error"] is None
    out = tmp_path / "run"
    done = run_cli("--cache", str(tiny_run["cache"]), "run", str(TINY), "--generator", "pixel-example",
                   "--out", str(out), "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    [row] = json.loads((out / "results.json").read_text())["rows"]
    assert row["error"] is None and row["n_returned"] == 30 and set(row["artifacts"]) >= {"encode-samples"}
    assert row["memorised_pct"] is not None and set(row["utility"]) == {"random", "recall-small", "recall-large",
                                                                        "full", "real-learned-subset"}
    table = pd.read_csv(out / "samples" / "pixel-example.csv")
    assert (table["model"] == "eigen-videos").all()
    regenerated = run_cli("--cache", str(tiny_run["cache"]), "regenerate", str(out), "s000004", env=env)
    assert regenerated.returncode == 0 and "bit-for-bit identical" in regenerated.stdout, regenerated.stderr
