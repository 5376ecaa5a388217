"""The record of what made a run's numbers: harness version and revision, packages, the torch build, the device
and its thread count, the seed. Same record, same numbers bit for bit. Another CPU, GPU or thread count rounds
differently, so every model trains slightly differently, and the numbers can move beyond most of their intervals
(only numbers pooled over re-ID models include training variation): `harness compare` shows where."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from harness import __version__

PACKAGES = ("reid-harness", "torch", "torchvision", "diffusers", "numpy", "scipy", "pandas", "scikit-learn",
            "pluggy", "pydantic", "av")


def environment(device: torch.device, threads: int, seed: int, processes: int = 1) -> dict[str, Any]:
    revision, dirty = git_revision()
    return {
        "harness_version": __version__,
        "git_revision": revision,
        "git_dirty": dirty,  # uncommitted changes in the harness source: the revision alone does not reproduce it
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": _versions(),
        "torch_build": _torch_build(),
        "device": {**describe_device(device, threads), "processes": processes},
        "seed": seed,
    }


def describe_device(device: torch.device, threads: int) -> dict[str, Any]:
    """What computed: the GPU's name, or the CPU's model; and the CPU threads torch used."""
    out: dict[str, Any] = {"type": device.type, "threads": threads, "cpu": cpu_model(), "cpu_cores": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1))
    else:
        out["name"] = out["cpu"]
    return out


def device_label(record: dict[str, Any]) -> str:
    """One line for a table: `NVIDIA H100 (cuda)`, `NVIDIA H100 (x8 cuda)` (8 processes) or `AMD EPYC 7B13 (cpu, 2
    threads)`."""
    device = record.get("device", {})
    processes = device.get("processes", 1)
    each = f"{processes} processes, " if processes > 1 else ""
    if device.get("type") == "cuda":
        return f"{device.get('name')} ({'x' + str(processes) + ' ' if processes > 1 else ''}cuda)"
    return f"{device.get('name')} ({device.get('type', 'cpu')}, {each}{device.get('threads')} threads)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_build() -> dict[str, Any]:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"version": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkl": torch.backends.mkl.is_available(),
            "openmp": torch.backends.openmp.is_available()}


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_revision() -> tuple[str | None, bool | None]:
    """The commit of the harness source in use and whether its code (harness/, plugins/) has uncommitted changes;
    None when the source is not a git checkout (an installed wheel, even inside someone else's repository)."""
    source = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "harness/environment.py") is None:
        return None, None
    revision = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", "harness", "plugins")
    return revision, (bool(status) if status is not None else None)
