"""`harness plan SPEC`: what each stage of a run will cost on this device, before anything runs.

Sizes come from the spec and the dataset (videos per split, clip shape, samples per row); times come from short
micro-benchmarks of the very models the spec names (`Component.plan`), a few steps each at the configured shapes,
scaled by the number of steps or items. A component that gives no plan shows as not estimated. What a previous
run of the same spec left in the cache is marked cached and costs nothing.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.components import RowFeatures, RowMetric
from harness.environment import cpu_model
from harness.errors import UserError
from harness.metrics.copy import best_copy_match, search_grids
from harness.metrics.intervals import Bootstrap
from harness.metrics.pairs import max_scores

if TYPE_CHECKING:
    from harness.plugins import Registry
    from harness.privacy_spec import PrivacySpec
    from harness.spec import ResolvedSpec


@dataclass(frozen=True)
class Workload:
    """What a spec asks of its components, known before any data is read."""

    videos: dict[str, int]  # per split
    frames: int  # per clip
    size: int  # pixels per side
    latent: tuple[int, int, int]  # (C, h, w) of a frame in the encoder's space
    samples: int  # per generator row
    rows: int = 1
    stride: int = 4  # content memorisation compares every stride-th frame
    processes: int = 1


@dataclass(frozen=True)
class Estimate:
    """One stage: its size in words and its wall seconds on this device for the whole run (over the processes)."""

    stage: str
    size: str
    seconds: float | None
    note: str = ""


@dataclass
class Probe:
    """Times a few calls of a model on the plan's device (CUDA calls synchronised), after one warm-up call."""

    device: torch.device
    processes: int = 1
    repeats: int = 2
    timings: list[str] = field(default_factory=list)

    def seconds(self, what: str, call: Callable[[], Any], record: bool = True) -> float:
        call()
        self._sync()
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            call()
            self._sync()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        if record:
            self.timings.append(f"{what}: {median * 1e3:.1f} ms")
        return median

    def per_process(self, batch: int) -> int:
        """The part of a batch one process computes (a DDP step, a sharded stage)."""
        return max(1, -(-batch // self.processes))

    def batch_seconds(self, what: str, batch: int, call_at: Callable[[int], Callable[[], Any]],
                      cpu_cap: int = 2) -> float:
        """Seconds of one step over a global `batch` with this plan's processes: timed at the per-process batch;
        on a CPU from `cpu_cap` items up, growing fourfold while a step takes under a quarter second, and scaled
        linearly from the largest batch timed (a CPU's cost grows about linearly with the batch)."""
        each = self.per_process(batch)
        timed = min(each, cpu_cap) if self.device.type == "cpu" else each
        seconds = self.seconds(f"{what} (batch {timed})", call_at(timed), record=False)
        while timed < each and seconds < 0.25:
            timed = min(each, 4 * timed)
            seconds = self.seconds(f"{what} (batch {timed})", call_at(timed), record=False)
        self.timings.append(f"{what} (batch {timed}): {seconds * 1e3:.1f} ms")
        return seconds * each / timed

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def scoring(work: Workload, probe: Probe, samples: int, privacy: PrivacySpec) -> list[Estimate]:
    """The core's all-pairs scoring: first frames of every sample (`samples`, all rows) and test video against the
    training videos (their first frames or every `stride`-th frame: `privacy.reference_frames`), and content
    memorisation's every `stride`-th frame against the training videos' same frames."""
    dim, train = 128, work.videos.get("train", 0)
    ref = torch.rand(min(train, 8192) or 1, dim, device=probe.device)
    query = torch.rand(4096, dim, device=probe.device)
    weight = -torch.rand(dim, device=probe.device)
    rate = len(query) * len(ref) / probe.seconds("pred-head pairs", lambda: max_scores(query, ref, "pred", weight,
                                                                                          0.0))
    kept = len(range(0, work.frames, privacy.content.frame_stride))
    first = (samples + work.videos.get("test", 0)) * train * (kept if privacy.reference_frames == "all" else 1)
    content = (samples + work.videos.get("test", 0)) * kept * train * kept
    stride = privacy.content.frame_stride
    estimates = [Estimate("row-metrics", f"{first:.2e} first-frame pairs, all rows", first / rate / probe.processes),
                 Estimate("content scoring", f"{content:.2e} frame pairs (stride {stride}), all rows",
                          content / rate / probe.processes)]
    return estimates + ([copy_scoring(work, probe, samples, privacy)] if privacy.copy_test.enabled else [])


def copy_scoring(work: Workload, probe: Probe, samples: int, privacy: PrivacySpec) -> Estimate:
    """The pixel copy test: every decoded frame (`privacy.motion.frame_gap`) of every sample and test video against
    the training videos' frames, and the training videos' against the test videos'; timed on 256 query frames (the
    coarse search grows with the reference frames, the full search does not, so larger sets are overestimated)."""
    spec, train, test = privacy.copy_test, work.videos.get("train", 0), work.videos.get("test", 0)
    kept = len(range(0, work.frames, privacy.motion.frame_gap))
    queries, ref_frames = (samples + test + train) * kept, train * kept
    timed = min(ref_frames, 4096) or 1
    fine, coarse = search_grids(spec.size, spec.max_shift, spec.shift_step, tuple(spec.zooms))
    query, ref = (torch.rand(n, spec.size, spec.size, device=probe.device) for n in (256, timed))
    seconds = probe.seconds("copy test (256 frames)", lambda: best_copy_match(query, ref, fine, coarse,
                                                                              spec.candidates))
    return Estimate("copy test", f"{queries:,} frames against {ref_frames:,} training frames, all rows",
                    seconds * queries / 256 * max(1.0, ref_frames / timed), "decoding is not counted")


def row_metrics(work: Workload, probe: Probe, metrics: dict[str, type[RowMetric]], spaces: int) -> Estimate:
    """The spec's row metrics (`metrics`), every row in every feature space: all of them timed together on random
    features of at most 2,000 samples x 1,000 training x 500 held-out videos, scaled by samples x training videos
    (the nearest-neighbour pairs; the rest grows more slowly, so large sets are overestimated)."""
    train, test = work.videos.get("train", 0), work.videos.get("test", 0)
    small = (min(work.samples, 2000) or 1, min(train, 1000) or 2, min(test, 500) or 4)
    features = [torch.rand(n, 128, device=probe.device) for n in small]
    boot = Bootstrap(2000)

    def compute() -> None:
        shared = RowFeatures(*features, space="clip", boot=boot)
        for factory in metrics.values():
            try:
                factory().compute(shared)
            except UserError:  # too few of something at the probe's size: the run says so in its cells
                pass

    seconds = probe.seconds("row metrics (2,000 samples)", compute)
    scale = work.samples * max(train, 1) / (small[0] * small[1])
    return Estimate("row-metric", f"{len(metrics)} metrics x {work.rows} rows x {spaces} feature spaces",
                    seconds * max(scale, 1.0) * work.rows * spaces)


#: The run's stages an estimate stands for, when the plan asks whether they are cached.
STAGES = {"dataset": ("dataset-train", "dataset-val", "dataset-test"), "encoder-fit": ("encoder-fit",),
          "encode": ("encode-train", "encode-val", "encode-test"), "reid-fit": ("reid-fit",),
          "embed real": ("embed-train", "embed-val", "embed-test", "content-train", "content-test"),
          "downstream-fit": ("downstream-fit",), "fidelity-fit": ("fidelity-fit",)}


def cached_stages(spec_hash: str, runs: Path, cache_root: Path) -> tuple[set[tuple[str, str]], str | None]:
    """`(part, stage)` of the estimates whose stages the newest run of this spec under `runs/` computed and the
    cache still holds, and that run."""
    manifests = sorted(runs.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime) if runs.is_dir() else []
    for path in reversed(manifests):
        try:
            manifest = json.loads(path.read_text())
            rows = json.loads((path.parent / "results.json").read_text())["rows"]
        except (OSError, ValueError, KeyError):
            continue
        if manifest.get("spec_hash") != spec_hash:
            continue
        have = {s["stage"] for s in manifest.get("stages", [])
                if (cache_root / s["stage"] / s["key"] / "meta.json").is_file()}
        parts = {"dataset": "real data", "encoder-fit": "encoder", "encode": "encoder", "reid-fit": "re-ID",
                 "embed real": "re-ID", "downstream-fit": "downstream", "fidelity-fit": "fidelity"}
        cached = {(parts[name], name) for name, stages in STAGES.items() if set(stages) <= have}
        for row in rows:
            for stage, key in row.get("artifacts", {}).items():
                if (cache_root / stage / key / "meta.json").is_file():
                    cached.add((f"row {row['generator']}", stage))
        return cached, str(path.parent)
    return set(), None


def render(estimates: list[tuple[str, Estimate]], cached: set[tuple[str, str]], device: str, processes: int,
           source: str | None, timings: list[str]) -> str:
    """The plan as a table: part of the run, stage, size, estimate, and the total still to compute."""
    lines = [f"plan on {device}" + (f", {processes} processes" if processes > 1 else ""),
             f"{'part':<20} {'stage':<16} {'estimate':>10}  size"]
    total, unknown = 0.0, []
    for part, est in estimates:
        if (part, est.stage) in cached:
            shown = "cached"
        elif est.seconds is None:
            shown, unknown = "—", unknown + [f"{part}: {est.stage}"]
        else:
            shown, total = duration(est.seconds), total + est.seconds
        lines.append(f"{part:<20} {est.stage:<16} {shown:>10}  {est.size}" + (f" ({est.note})" if est.note else ""))
    lines.append(f"total still to compute: about {duration(total)}" +
                 (f", plus {len(unknown)} stages not estimated" if unknown else ""))
    lines.append(f"cached: from {source}" if source else "cached: nothing (no earlier run of this spec under runs/)")
    lines.append("measured: " + "; ".join(timings))
    return "\n".join(lines)


#: How a run's stages answer the plan's estimates (`harness plan --against RUN_DIR`): per line, the estimates
#: (by stage, summed over the rows) and the run's stages (their own seconds, without the stages built inside them).
MEASURED_BY = [
    ("real data", ("dataset",), ("dataset-train", "dataset-val", "dataset-test", "dataset-holdout")),
    ("encoder training", ("encoder-fit",), ("encoder-fit",)),
    ("encoding real videos", ("encode",), ("encode-train", "encode-val", "encode-test", "encode-holdout",
                                           "reconstruction")),
    ("re-ID training", ("reid-fit", "more models"), ("reid-fit", "reid-head", "reid-eval")),
    ("re-ID embedding", ("embed real", "embed samples"), ("embed-train", "embed-val", "embed-test", "embed-samples",
                                                          "content-train", "content-test", "content-samples")),
    ("privacy scoring", ("row-metrics", "content scoring"), ("row-metrics",)),
    ("pixel copy test", ("copy test",), ("copy-scores", "copy-calibration")),
    ("clip features", ("fidelity-fit", "fidelity-features"), ("fidelity-fit", "fidelity-features")),
    ("plugin row metrics", ("row-metric",), ("row-metric",)),
    ("downstream", ("downstream-fit", "downstream"), ("downstream-fit", "downstream-test", "downstream",
                                                     "downstream-measure")),
    ("generators and near-copies", ("generator-fit", "samples", "fit + samples", "near-copies"),
     ("generator-fit", "samples", "encode-samples", "filmstrip")),
]


def against(estimates: list[tuple[str, Estimate]], manifest: dict[str, Any], run: Path) -> str:
    """The plan's estimates beside what a run of the same spec measured, line by line and in total."""
    computed = [s for s in manifest.get("stages", []) if not s.get("cached")]
    if not computed:
        raise UserError(f"{run}: every stage of that run came from the cache, so it measured nothing; compare with "
                        "a run that computed its stages (a cold cache).")
    own = {}
    for s in computed:
        own[s["stage"]] = own.get(s["stage"], 0.0) + (s.get("own_seconds") or s.get("seconds") or 0.0)
    planned: dict[str, float | None] = {}
    for _, est in estimates:
        known = planned.get(est.stage, 0.0)
        planned[est.stage] = None if est.seconds is None or known is None else known + est.seconds
    lines = [f"plan against {run} (wall {duration(manifest.get('wall_seconds', 0.0))}, "
             f"{len(computed)} stages computed)",
             f"{'part of the run':<28} {'estimate':>10} {'measured':>10} {'ratio':>7}"]
    rows = [*MEASURED_BY, ("other stages", (), tuple(sorted(set(own) - {n for *_, ns in MEASURED_BY for n in ns}))),
            ("not mapped", tuple(sorted(set(planned) - {n for _, ns, _ in MEASURED_BY for n in ns})), ())]
    for label, estimate_stages, run_stages in rows:
        estimate_parts = [planned[n] for n in estimate_stages if n in planned]
        measured_parts = [own[n] for n in run_stages if n in own]
        if not estimate_parts and not measured_parts:
            continue
        estimate = None if not estimate_parts or None in estimate_parts else sum(estimate_parts)
        measured = sum(measured_parts) if measured_parts else None
        ratio = f"{measured / estimate:.2f}" if estimate and measured is not None else "—"
        lines.append(f"{label:<28} {duration(estimate) if estimate is not None else '—':>10} "
                     f"{duration(measured) if measured is not None else '—':>10} {ratio:>7}")
    total = sum(v for v in planned.values() if v is not None)
    wall = manifest.get("wall_seconds")
    ratio = f"{wall / total:.2f}" if total and wall else "—"
    lines.append(f"{'total (the run: wall time)':<28} {duration(total):>10} "
                 f"{duration(wall) if wall else '—':>10} {ratio:>7}")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


def check_device(name: str) -> torch.device:
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          ("cpu" if name == "auto" else name))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible on this machine; plan for the CPU or run the plan "
                        "where the GPU is.")
    return device


def make_plan(resolved: ResolvedSpec, registry: Registry, device: torch.device, processes: int, runs: Path,
              cache_root: Path, against_run: Path | None = None) -> str:
    """The plan of a benchmark spec, as `harness plan` prints it; with `against_run`, beside what that run of the
    spec measured."""
    spec = resolved.spec
    if spec.reid_study is not None:
        raise UserError(f"{resolved.source}: harness plan covers benchmark specs; a re-ID study is its variants' "
                        "re-ID stages, plan them as benchmark specs one by one.")

    def component(role: str, plugin: str, key: str):
        return registry.get(role, plugin).factory(resolved.configs[key])

    sized = component("datasets", spec.dataset.plugin, "dataset").planned_size()
    if sized is None:
        raise UserError(f"{resolved.source}: dataset '{spec.dataset.plugin}' cannot say its size before loading; "
                        "point it at its data folder (dataset.args.root) so its FileList.csv can be counted.")
    videos, frames, size, source = sized
    encoder = component("encoders", spec.encoder.plugin, "encoder")
    work = Workload(videos, frames, size, encoder.frame_shape(size), spec.samples_per_generator,
                    rows=len(spec.generators), stride=spec.privacy.content.frame_stride, processes=processes)
    probe = Probe(device, processes)
    parts: list[tuple[str, Estimate]] = [("real data", Estimate("dataset", ", ".join(
        f"{split} {n:,}" for split, n in videos.items()) + f" videos of {frames} frames", None, f"from {source}"))]
    encoding = encoder.plan(work, probe)
    parts += [("encoder", e) for e in encoding]
    near_copies = len(spec.robustness.entries()) * spec.robustness.samples if spec.robustness else 0
    if spec.reid is not None:
        reid = component("reid_filters", spec.reid.plugin, "reid").plan(work, probe)
        queries = len(spec.generators) * spec.samples_per_generator + near_copies
        parts += [("re-ID", e) for e in reid] + [("re-ID", e) for e in scoring(work, probe, queries, spec.privacy)]
        if spec.privacy.reid_seeds > 1:
            parts.append(("re-ID", Estimate("more models", f"{spec.privacy.reid_seeds - 1} more re-ID models",
                                            sum(e.seconds or 0 for e in reid) * (spec.privacy.reid_seeds - 1))))
    clip = spec.fidelity.features is not None and bool(spec.generators)
    if clip:
        extractor = component("feature_extractors", spec.fidelity.features.plugin, "fidelity.features")
        parts += [("fidelity", e) for e in extractor.plan(work, probe)]
    if spec.metrics and spec.generators:
        metrics = {ref.plugin: registry.get("metrics", ref.plugin).factory for ref in spec.metrics}
        spaces = (spec.reid is not None) + clip
        parts.append(("metrics", row_metrics(work, probe, metrics, spaces)))
    task: list[Estimate] = []
    if spec.downstream is not None:
        task = component("tasks", spec.downstream.task.plugin, "task").plan(work, probe)
        parts += [("downstream", e) for e in task]
    for entry in spec.generators:
        row = f"row {entry.row_name}"
        estimates = component("generators", entry.plugin, f"generators.{entry.row_name}").plan(
            replace(work, samples=resolved.n_samples(entry)), probe)
        parts += [(row, e) for e in estimates] or [(row, Estimate("fit + samples", "not measured by the plugin",
                                                                   None))]
        if task:
            k = len(spec.downstream.strategies)
            parts.append((row, Estimate("downstream", f"{k} strategies, each about the real training run",
                                        k * sum(e.seconds or 0 for e in task))))
    if near_copies:
        per_video = sum(e.seconds or 0 for e in encoding if e.stage == "encode") / max(1, sum(videos.values()))
        lines = f"{len(spec.robustness.perturbations)} paths" + (" and the unperturbed"
                                                                  if spec.robustness.unperturbed else "")
        parts.append(("robustness", Estimate(
            "near-copies", f"{near_copies:,} videos ({len(spec.robustness.entries()) // 2} lines x 2 sides: {lines})"
            " perturbed and encoded; their scoring is in re-ID's", near_copies * per_video, "codec time not measured")))
    if against_run is not None:
        return against(parts, _run_manifest(against_run, resolved), against_run)
    cached, run = cached_stages(resolved.spec_hash, runs, cache_root)
    return render(parts, cached, _device_name(device), processes, run, probe.timings)


def _run_manifest(run: Path, resolved: ResolvedSpec) -> dict[str, Any]:
    """The manifest of a run of this spec, or one sentence saying why there is none."""
    try:
        manifest = json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{run}: no readable manifest.json; pass a run directory written by `harness run`.") from None
    if manifest.get("spec_hash") != resolved.spec_hash:
        raise UserError(f"{run} is a run of another spec (hash {manifest.get('spec_hash')}, this one "
                        f"{resolved.spec_hash}); compare the plan with a run of {resolved.source}.")
    return manifest


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    return f"{cpu_model()} (cpu, {torch.get_num_threads()} threads)"
