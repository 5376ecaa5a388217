"""The staged, cached benchmark run.

dataset -> encoder fit -> encode (train/val/test) -> reconstruction check -> re-ID fit, embed, reference
        -> downstream task on the real training split
        -> per generator: fit -> sample -> checks -> privacy/recall metrics -> downstream strategies -> row

Each stage's output is an artifact keyed by (stage, plugin name + version, validated config, upstream keys,
seed). A stage whose artifact exists is loaded, not recomputed, so a re-run is nearly free and a killed run
resumes at the stage it was in. A failing generator becomes a row with an `error`; the other rows still run.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.cache import ArtifactCache, atomic_write_text
from harness.components import Component
from harness.context import RunContext, resolve_device
from harness.data import Condition, LatentSet, SampleSet, VideoSet
from harness.downstream import NoEligibleVideos, adherence, learned_real_videos, select
from harness.errors import GeneratorOutputError, UserError
from harness.evaluation import PrivacyFilter, Reference, reference_stats, row_metrics
from harness.figures import render_downstream_figures, render_figures, tsne_coordinates
from harness.hashing import stable_hash
from harness.metrics.reid import reid_quality
from harness.monitor import StageMonitor
from harness.plugins import Registry
from harness.results import build_manifest, build_results
from harness.spec import GeneratorEntry, ResolvedSpec

SPLITS = ("train", "val", "test")
log = logging.getLogger("harness")


@dataclass
class StageRecord:
    stage: str
    key: str
    cached: bool
    seconds: float | None = None
    peak_rss_mb: float | None = None
    cuda_peak_mb: float | None = None


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over uint8 arrays (data range 255)."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(test, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


class Runner:
    def __init__(self, resolved: ResolvedSpec, registry: Registry, cache: ArtifactCache, run_dir: Path,
                 show_progress: bool = True):
        self.resolved = resolved
        self.spec = resolved.spec
        self.registry = registry
        self.cache = cache
        self.run_dir = Path(run_dir)
        self.stages: list[StageRecord] = []
        device = resolve_device(self.spec.device)
        if device.type == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UserError(f"{resolved.source}: device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'.")
        self.ctx = RunContext(device=device, seed=self.spec.seed, cache=cache, show_progress=show_progress)

    # ------------------------------------------------------------------------------------------ plumbing

    @property
    def executed(self) -> list[str]:
        """Stages that were computed (not loaded from the cache) in this run."""
        return [s.stage for s in self.stages if not s.cached]

    def _component(self, role: str, plugin: str, config_key: str) -> tuple[Component, dict[str, Any]]:
        registered = self.registry.get(role, plugin)
        config = self.resolved.configs[config_key]
        identity = {"plugin": plugin, "version": f"{registered.version}/{registered.factory.version}",
                    "config": config.model_dump(mode="json")}
        return registered.factory(config), identity

    def _stage(self, stage: str, key: str, build: Callable[[Path], dict[str, Any] | None]) -> tuple[Path, dict]:
        """Load the artifact `(stage, key)` or build it with `build(tmp_folder) -> meta`.

        The stage's cost (wall time, peak memory) is stored with the artifact, so the manifest of a warm run
        still reports what each stage cost when it was computed.
        """
        artifact = self.cache.get(stage, key)
        if artifact is None:
            log.info("stage %s started (key %s)", stage, key)
            with self.cache.writing(stage, key, {}) as tmp:
                with StageMonitor() as monitor:
                    meta = build(tmp) or {}
                meta.update(monitor.record())
                (tmp / "stage.json").write_text(json.dumps(meta, default=str))
            log.info("stage %s finished in %.1fs", stage, meta["seconds"])
        meta = self._meta(stage, key)
        self.stages.append(StageRecord(stage, key, cached=artifact is not None, seconds=meta.get("seconds"),
                                       peak_rss_mb=meta.get("peak_rss_mb"), cuda_peak_mb=meta.get("cuda_peak_mb")))
        return self.cache.path(stage, key), meta

    def _meta(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.cache.path(stage, key) / "stage.json").read_text())

    # ------------------------------------------------------------------------------------------ stages

    def _load_data(self, plugin: str, config_key: str = "dataset"
                   ) -> tuple[dict[str, str], dict[str, VideoSet], dict[str, Any]]:
        dataset, ident = self._component("datasets", plugin, config_key)
        self.ctx.components["dataset"] = dataset
        keys, videos, reports = {}, {}, {}
        for split in SPLITS:
            keys[split] = self.cache.key("dataset", **ident, seed=self.spec.seed, split=split)

            def build(tmp: Path, split: str = split) -> dict:
                loaded = dataset.load(split, self.ctx)
                if len(loaded) == 0:
                    raise UserError(f"{self.resolved.source}: dataset split '{split}' has no readable videos; check "
                                    "the dataset folder and the Split column of its FileList.csv.")
                loaded.save(tmp)
                return {"report": dataset.load_report().get(split, {"videos": len(loaded)})}

            path, meta = self._stage(f"dataset-{split}", keys[split], build)
            videos[split] = VideoSet.load(path)
            reports[split] = meta.get("report", {})
        return keys, videos, reports

    def _fit_component(self, stage: str, component: Component, key: str,
                       fit: Callable[[], None]) -> Callable[[], None]:
        """Fit and cache a component's state (encoder or generator).

        Returns `ready()`, which makes the component usable on first call: it loads the cached state (or redoes
        a fit that saved nothing). A warm run whose later stages are all cached never pays for loading models.
        """
        def build(tmp: Path) -> dict:
            fit()
            state = tmp / "state"
            state.mkdir()
            return {"saved": bool(component.save_state(state)), "report": component.fit_report()}

        path, meta = self._stage(stage, key, build)
        loaded = not self.stages[-1].cached

        def ready() -> None:
            nonlocal loaded
            if loaded:
                return
            if meta.get("saved"):
                component.load_state(path / "state")
            else:
                fit()  # nothing was saved (a cheap fit), so redo it
            loaded = True

        ready.meta = meta
        return ready

    def _encode(self, data_keys, videos, plugin: str, config_key: str = "encoder"
                ) -> tuple[dict[str, str], dict[str, LatentSet], dict[str, Any]]:
        encoder, ident = self._component("encoders", plugin, config_key)
        self.ctx.components["encoder"] = encoder
        fit_key = self.cache.key("encoder-fit", **ident, data=data_keys["train"], seed=self.spec.seed)
        self.encoder_ready = self._fit_component("encoder-fit", encoder, fit_key,
                                                 lambda: encoder.fit(videos["train"], self.ctx))
        self.encoder_fit_key = fit_key
        keys, latents = {}, {}
        for split in SPLITS:
            keys[split] = self.cache.key("encode", encoder=fit_key, data=data_keys[split])

            def encode(tmp: Path, split: str = split) -> None:
                self.encoder_ready()
                encoder.encode(videos[split], self.ctx).save(tmp)

            path, _ = self._stage(f"encode-{split}", keys[split], encode)
            latents[split] = LatentSet.load(path)

        def reconstruction(tmp: Path) -> dict:
            self.encoder_ready()
            decoded = encoder.decode(latents["test"], self.ctx)
            return {"recon_psnr_db": round(psnr(videos["test"].frames, decoded.frames), 3)}

        _, meta = self._stage("reconstruction", self.cache.key("reconstruction", latents=keys["test"]), reconstruction)
        summary = {"plugin": plugin, "space": encoder.space,
                   "latent_shape": list(latents["train"].clip_shape), "recon_psnr_db": meta["recon_psnr_db"]}
        return keys, latents, summary

    # ------------------------------------------------------------------------------------------ re-ID

    def _embed(self, stage: str, key: str, latents: np.ndarray, n_frames_videos: int) -> tuple[torch.Tensor, ...]:
        """Cached re-ID features: first frame of every video, all frames of the first `n_frames_videos` videos."""
        def build(tmp: Path) -> None:
            self.reid_ready()
            first = self.reid.embed(latents, self.ctx, frames=[0])[:, 0]
            frames = self.reid.embed(latents[:n_frames_videos], self.ctx) if n_frames_videos else first[:0, None]
            for name, value in (("first", first), ("frames", frames)):
                if not torch.isfinite(value).all():
                    raise GeneratorOutputError(f"the re-ID model produced NaN features for {stage}; the inputs "
                                               "contain values it cannot handle.")
                np.save(tmp / f"{name}.npy", value.numpy().astype(np.float32))

        path, _ = self._stage(stage, key, build)
        return tuple(torch.from_numpy(np.load(path / f"{name}.npy")).to(self.ctx.device)
                     for name in ("first", "frames"))

    def _reid(self, enc_keys, latents, plugin: str, config_key: str = "reid") -> dict[str, Any]:
        """Train the re-ID model, embed the real splits, measure the model, and compute the real reference."""
        reid, ident = self._component("reid_filters", plugin, config_key)
        self.reid = reid
        privacy = self.spec.privacy
        fit_key = self.cache.key("reid-fit", **ident, data=[enc_keys["train"], enc_keys["val"]], seed=self.spec.seed)
        self.reid_ready = self._fit_component("reid-fit", reid, fit_key,
                                              lambda: reid.fit(latents["train"], latents["val"], self.ctx))
        self.reid_key = fit_key
        feats = {split: self._embed(f"embed-{split}", self.cache.key("embed", reid=fit_key, latents=enc_keys[split],
                                                                          frames=split == "test"),
                                    latents[split].latents, len(latents[split]) if split == "test" else 0)
                 for split in SPLITS}

        def head(tmp: Path) -> dict:
            self.reid_ready()
            weight, bias = reid.head_parameters()
            return {"weight": weight.tolist(), "bias": bias}

        head_meta = self._stage("reid-head", self.cache.key("reid-head", reid=fit_key), head)[1]
        weight = torch.tensor(head_meta["weight"], dtype=torch.float32, device=self.ctx.device)

        def quality(tmp: Path) -> dict:
            return {"quality": reid_quality(feats["test"][1], weight, head_meta["bias"], seed=0,
                                            resamples=privacy.bootstrap_resamples)}

        quality_meta = self._stage("reid-eval", self.cache.key("reid-eval", embed=fit_key, test=enc_keys["test"],
                                                                resamples=privacy.bootstrap_resamples), quality)[1]
        self.reference = Reference(
            train_first=feats["train"][0], train_ids=latents["train"].table["video_id"].astype(str).tolist(),
            test_first=feats["test"][0], test_frames=feats["test"][1], weight=weight, bias=head_meta["bias"],
            head=privacy.head, percentile=privacy.percentile, calibration=privacy.calibration, knn=privacy.knn)
        self.reference_stats = reference_stats(self.reference)

        def embed_frames(frames: np.ndarray) -> torch.Tensor:
            self.reid_ready()
            return reid.embed(frames[:, None], self.ctx, frames=[0])[:, 0]

        self.ctx.components["privacy_filter"] = PrivacyFilter(embed_frames, self.reference,
                                                              self.reference_stats["tau"])
        report = self.reid_ready.meta.get("report", {})
        val_auc = report.get("val_auc")
        reliable = val_auc is None or val_auc >= privacy.min_val_auc
        if not reliable:
            log.warning("the re-ID model failed to learn (validation AUC %.3f < %.2f)", val_auc, privacy.min_val_auc)
        stats = self.reference_stats
        return {"plugin": plugin, "training": report, "reliable": reliable,
                "test": quality_meta["quality"], "head": privacy.head, "calibration": privacy.calibration,
                "percentile": privacy.percentile, "tau": stats["tau"], "tau_test_to_train": stats["tau_test_to_train"],
                "tau_train_to_test": stats["tau_train_to_test"], "test_memorised_pct": stats["test_memorised_pct"],
                "reference_recall": stats["reference_recall"], "reference_irs_inf": stats["reference_irs_inf"],
                "consistency_real": float(np.mean(stats["consistency_real"]["corr"])),
                "consistency_real_head": float(np.mean(stats["consistency_real"]["pred"]))}

    def _row_metrics(self, row: str, sample_key: str, samples: SampleSet) -> tuple[dict[str, Any], pd.DataFrame]:
        n_frames = min(len(samples), self.spec.privacy.consistency_videos)
        first, frames = self._embed("embed-samples", self.cache.key("embed", reid=self.reid_key, latents=sample_key,
                                                                     frames=n_frames), samples.latents, n_frames)
        key = self.cache.key("row-metrics", reid=self.reid_key, samples=sample_key,
                             privacy=self.spec.privacy.model_dump(mode="json"))

        def build(tmp: Path) -> dict:
            metrics, per_sample, arrays = row_metrics(first, frames, self.reference, self.reference_stats,
                                                      samples.provenance["sample_id"].tolist())
            per_sample.to_csv(tmp / "per_sample.csv", index=False)
            arrays["tsne"] = tsne_coordinates(self.reference.train_first.cpu().numpy(), arrays.pop("features"),
                                              self.ctx.seed_for("tsne", row))
            np.savez(tmp / "arrays.npz", **arrays)
            return {"metrics": metrics}

        path, meta = self._stage("row-metrics", key, build)
        self.row_arrays[row] = path / "arrays.npz"
        return meta["metrics"], pd.read_csv(path / "per_sample.csv", dtype={"sample_id": str})

    # ------------------------------------------------------------------------------------------ downstream

    def _downstream_real(self, enc_keys, latents) -> dict[str, Any]:
        """Fit the task on the real training split: the ceiling row, and the meter for adherence and relabelling."""
        downstream = self.spec.downstream
        task, ident = self._component("tasks", downstream.task.plugin, "task")
        self.task_ident, self.task_data = ident, {"keys": enc_keys, "latents": latents}
        key = self.cache.key("downstream-fit", **ident, train=enc_keys["train"], val=enc_keys["val"],
                             seed=self.spec.seed)

        def fit() -> None:
            self.encoder_ready()  # a pixel-space task decodes its inputs with the run's encoder
            task.fit(latents["train"], latents["val"], self.ctx)

        fitted = self._fit_component("downstream-fit", task, key, fit)

        def ready() -> None:
            self.encoder_ready()
            fitted()

        self.real_task, self.real_task_ready, self.real_task_key = task, ready, key

        def test(tmp: Path) -> dict:
            ready()
            predictions = task.predict(latents["test"], self.ctx)
            np.save(tmp / "predictions.npy", predictions)
            return {"metrics": task.evaluate(latents["test"], self.ctx, predictions)}

        path, meta = self._stage("downstream-test", self.cache.key("downstream-test", fit=key, test=enc_keys["test"]),
                                 test)
        self.ef_predictions["real-full"] = path / "predictions.npy"
        return {"task": downstream.task.plugin, "relabel": downstream.relabel, "strategies": downstream.strategies,
                "real_full": {**meta["metrics"], "n_train": len(latents["train"]),
                              "training": fitted.meta.get("report", {})},
                "artifacts": {"downstream-fit": key}}  # the real-full regressor's state, e.g. to fine-tune from

    def _train_and_test(self, train_identity: dict[str, Any], train: Callable[[], LatentSet]
                        ) -> tuple[dict[str, Any], Path]:
        """A fresh task trained on one selection (cached by what was selected), tested on the real test split."""
        keys, latents = self.task_data["keys"], self.task_data["latents"]
        key = self.cache.key("downstream", **self.task_ident, train=train_identity, val=keys["val"],
                             test=keys["test"], seed=self.spec.seed)

        def build(tmp: Path) -> dict:
            task, _ = self._component("tasks", self.spec.downstream.task.plugin, "task")
            self.encoder_ready()
            data = train()
            task.fit(data, latents["val"], self.ctx)
            predictions = task.predict(latents["test"], self.ctx)
            np.save(tmp / "predictions.npy", predictions)
            return {"metrics": {**task.evaluate(latents["test"], self.ctx, predictions), "n_train": len(data)},
                    "training": task.fit_report()}

        path, meta = self._stage("downstream", key, build)
        return meta["metrics"], path / "predictions.npy"

    def _utility(self, row: str, sample_key: str, samples: SampleSet, per_sample: pd.DataFrame | None
                 ) -> tuple[dict[str, Any], np.ndarray]:
        """Adherence to the requested EF, and the task trained on this row's samples under every strategy."""
        downstream, head = self.spec.downstream, self.spec.privacy.head

        def measure(tmp: Path) -> None:
            self.real_task_ready()
            np.save(tmp / "measured.npy", self.real_task.predict(samples, self.ctx))

        path, _ = self._stage("downstream-measure", self.cache.key("downstream-measure", fit=self.real_task_key,
                                                                    samples=sample_key), measure)
        measured = np.load(path / "measured.npy")
        labels = measured if downstream.relabel else None
        real_train = self.task_data["latents"]["train"]
        first = next((s for s in downstream.strategies if s != "real-learned-subset"), None)  # the table's columns
        utility: dict[str, Any] = {}
        for strategy in downstream.strategies:
            try:
                if strategy == "real-learned-subset":
                    idx = learned_real_videos(per_sample, self.reference.train_ids, head)
                    identity = {"real": self.task_data["keys"]["train"], "indices": stable_hash(idx.tolist())}
                    metrics, predictions = self._train_and_test(identity, lambda idx=idx: real_train.subset(idx))
                else:
                    idx = select(strategy, per_sample, len(samples), len(real_train), head,
                                 downstream.per_learned_video, self.ctx.rng("downstream", strategy))
                    identity = {"samples": sample_key, "indices": stable_hash(idx.tolist()),
                                "labels": self.real_task_key if downstream.relabel else "generator"}
                    metrics, predictions = self._train_and_test(identity, lambda idx=idx: samples.subset(
                        idx, None if labels is None else labels[idx]))
                    if strategy == first:
                        self.ef_predictions[row] = predictions
                utility[strategy] = {**metrics, "error": None}
            except (NoEligibleVideos, UserError) as exc:
                log.info("downstream %s of %s: %s", strategy, row, exc)
                utility[strategy] = {"n_train": 0, "error": str(exc)}
        requested = samples.provenance["requested_ef"].to_numpy(dtype=float)
        out = {"utility": utility, "adherence": adherence(requested, measured)}
        if first is not None and utility[first]["error"] is None:
            out.update(ef_r2=utility[first]["r2"], ef_mae=utility[first]["mae"])
        out.update(adherence_mae=out["adherence"]["mae"], adherence_corr=out["adherence"]["corr"])
        return out, measured

    def _filmstrip(self, row: str, sample_key: str, samples: SampleSet, n: int = 4) -> None:
        """Decoded frames of a row's first samples, for the filmstrip figure (generated rows only)."""
        def build(tmp: Path) -> None:
            self.encoder_ready()
            subset = samples.subset(np.arange(min(n, len(samples))))
            np.save(tmp / "frames.npy", self.ctx.components["encoder"].decode(subset, self.ctx).frames)

        path, _ = self._stage("filmstrip", self.cache.key("filmstrip", encoder=self.encoder_fit_key,
                                                           samples=sample_key, n=n), build)
        self.filmstrips[row] = path / "frames.npy"

    def conditions(self, n: int, train: LatentSet) -> list[Condition]:
        """The requested videos, identical for every generator of a benchmark (same seeds, same EFs)."""
        spec = self.spec.conditions
        rng = self.ctx.rng("conditions", spec.ef)
        if spec.ef == "train-distribution":
            efs = rng.choice(train.table["ef"].to_numpy(dtype=float), size=n, replace=True)
        else:
            efs = rng.uniform(*spec.ef_range, size=n)
        return [Condition(f"s{i:06d}", self.ctx.seed_for("sample", i), round(float(ef), 3))
                for i, ef in enumerate(efs)]

    def _generate(self, entry: GeneratorEntry, enc_keys, latents) -> dict[str, Any]:
        row = entry.row_name
        n = self.resolved.n_samples(entry)
        generator, ident = self._component("generators", entry.plugin, f"generators.{row}")
        base = {"generator": row, "plugin": entry.plugin, "generator_hash": self.resolved.generator_hash(row),
                "n_samples": n}
        conditions = self.conditions(n, latents["train"])
        fit_key = self.cache.key("generator-fit", **ident, data=[enc_keys["train"], enc_keys["val"]],
                                 seed=self.spec.seed)
        # samples drawn through the privacy filter also depend on the re-ID model
        filtered_by = {"reid": getattr(self, "reid_key", None)} if generator.uses_privacy_filter else {}
        sample_key = self.cache.key("samples", fit=fit_key, conditions=[asdict(c) for c in conditions], **filtered_by)
        base["artifacts"] = {"generator-fit": fit_key, "samples": sample_key}
        fit_data = {"train": latents["train"], "val": latents["val"]}
        try:
            # the fit (or its cached state) is only needed when the samples themselves are not cached
            generator_ready = self._fit_component(
                "generator-fit", generator, fit_key, lambda: generator.fit(fit_data, self.ctx)
            ) if self.cache.get("samples", sample_key) is None else None

            def build(tmp: Path) -> dict:
                self.encoder_ready()  # generators may use the run's encoder (e.g. to encode what they render)
                generator_ready()
                start = time.perf_counter()
                samples = generator.sample(conditions, self.ctx)
                seconds = time.perf_counter() - start
                check_samples(samples, n, latents["train"].clip_shape, row)
                samples.save(tmp)
                return {"sample_seconds_per_video": seconds / max(n, 1)}

            path, meta = self._stage("samples", sample_key, build)
        except (UserError, GeneratorOutputError) as exc:
            log.info("generator %s failed: %s", row, exc)
            return {**base, "error": str(exc)}
        except Exception as exc:  # a plugin bug: isolate it to its row, keep the traceback in the log
            log.info("generator %s raised:\n%s", row, traceback.format_exc())
            return {**base, "error": f"{type(exc).__name__}: {exc} (traceback in run.log)"}
        samples = SampleSet.load(path)
        out = {**base, "n_returned": len(samples), "sample_seconds_per_video": round(
            meta["sample_seconds_per_video"], 5), "error": None}
        table, per_sample = samples.provenance, None  # the per-sample table: provenance, P_max, measured EF
        try:
            if self.spec.reid is not None:
                metrics, per_sample = self._row_metrics(row, sample_key, samples)
                out.update(metrics)
                table = table.merge(per_sample, on="sample_id", how="left")
            if self.spec.downstream is not None:
                utility, measured = self._utility(row, sample_key, samples, per_sample)
                out.update(utility)
                table["measured_ef"] = measured
            if not generator.shows_real_frames:
                self._filmstrip(row, sample_key, samples)
        except (ValueError, GeneratorOutputError) as exc:
            log.info("metrics of %s failed: %s", row, exc)
            out["error"] = f"metrics failed: {exc}"
        atomic_write_text(self.run_dir / "samples" / f"{row}.csv", table.to_csv(index=False))
        return out

    # ------------------------------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.spec.generators:
            return self._run_study(started)
        data_keys, videos, reports = self._load_data(self.spec.dataset.plugin)
        enc_keys, latents, encoder_summary = self._encode(data_keys, videos, self.spec.encoder.plugin)
        reid_summary = self._reid(enc_keys, latents, self.spec.reid.plugin) if self.spec.reid is not None else None
        self.row_arrays: dict[str, Path] = {}
        self.ef_predictions: dict[str, Path] = {}
        self.filmstrips: dict[str, Path] = {}
        downstream = self._downstream_real(enc_keys, latents) if self.spec.downstream is not None else None
        rows = [self._generate(entry, enc_keys, latents) for entry in self.spec.generators]
        folder = self.run_dir / "figures"
        figures = {}
        if reid_summary is not None:
            figures.update(render_figures(folder, self.reference_stats, self.row_arrays, self.reference.head))
            if not reid_summary["reliable"]:
                for row in rows:
                    row["privacy_reliable"] = False
        figures.update(render_downstream_figures(folder, latents["test"].table["ef"].to_numpy(dtype=float),
                                                 self.ef_predictions, self.filmstrips))
        results = build_results(self.resolved, reports, encoder_summary, rows, reid_summary, downstream, figures)
        manifest = build_manifest(self.resolved, self.ctx, self.stages, started)
        atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=2))
        atomic_write_text(self.run_dir / "manifest.json", json.dumps(manifest, indent=2))
        return results


    def _run_study(self, started: float) -> dict[str, Any]:
        """Train every re-ID variant, test it on its own test split and (with `cross`) on the other variants'."""
        study = self.spec.reid_study
        variants, models = [], {}
        for variant in study.variants:
            refs = {part: self.spec.variant_ref(variant, part) for part in ("dataset", "encoder", "reid")}
            prefix = f"variants.{variant.name}"
            data_keys, videos, reports = self._load_data(refs["dataset"].plugin, f"{prefix}.dataset")
            enc_keys, latents, encoder = self._encode(data_keys, videos, refs["encoder"].plugin, f"{prefix}.encoder")
            reid = self._reid(enc_keys, latents, refs["reid"].plugin, f"{prefix}.reid")
            models[variant.name] = {
                "encoder": self.ctx.components["encoder"], "encoder_ready": self.encoder_ready,
                "encoder_key": self.encoder_fit_key, "reid": self.reid, "reid_ready": self.reid_ready,
                "reid_key": self.reid_key, "weight": self.reference.weight, "bias": self.reference.bias,
                "test_key": data_keys["test"], "test": videos["test"]}
            variants.append({"name": variant.name, "dataset": refs["dataset"].plugin,
                             "dataset_args": self.resolved.configs[f"{prefix}.dataset"].model_dump(mode="json"),
                             "encoder": encoder, "reid": {k: v for k, v in reid.items() if k != "figures"},
                             "splits": reports})
        tests = [{"model": v["name"], "tested_on": v["name"], "space": v["encoder"]["space"], **v["reid"]["test"]}
                 for v in variants]
        if study.cross:  # every other test split once, named after a variant in the model's space when there is one
            for v in variants:
                others: dict[str, dict] = {}
                for u in variants:
                    key, space = models[u["name"]]["test_key"], v["encoder"]["space"]
                    if key == models[v["name"]]["test_key"]:
                        continue
                    if key not in others or (u["encoder"]["space"] == space != others[key]["encoder"]["space"]):
                        others[key] = u
                for u in others.values():
                    quality = self._cross_test(models[v["name"]], models[u["name"]])
                    tests.append({"model": v["name"], "tested_on": u["name"], "space": v["encoder"]["space"],
                                  **quality})
        results = build_results(self.resolved, {}, {}, [], None, None, {})
        results["study"] = {"variants": variants, "tests": tests}
        manifest = build_manifest(self.resolved, self.ctx, self.stages, started)
        atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=2))
        atomic_write_text(self.run_dir / "manifest.json", json.dumps(manifest, indent=2))
        return results

    def _cross_test(self, model: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
        """Model quality on another dataset's test split, encoded with the model's own encoder."""
        encode_key = self.cache.key("encode", encoder=model["encoder_key"], data=other["test_key"])

        def encode(tmp: Path) -> None:
            model["encoder_ready"]()
            model["encoder"].encode(other["test"], self.ctx).save(tmp)

        path, _ = self._stage("encode-cross", encode_key, encode)
        latents = LatentSet.load(path)
        self.reid, self.reid_ready = model["reid"], model["reid_ready"]
        _, frames = self._embed("embed-cross", self.cache.key("embed", reid=model["reid_key"], latents=encode_key,
                                                               frames=True), latents.latents, len(latents))

        def quality(tmp: Path) -> dict:
            return {"quality": reid_quality(frames, model["weight"], model["bias"], seed=0,
                                            resamples=self.spec.privacy.bootstrap_resamples)}

        key = self.cache.key("reid-eval", embed=model["reid_key"], test=encode_key,
                             resamples=self.spec.privacy.bootstrap_resamples)
        return self._stage("reid-eval", key, quality)[1]["quality"]


def check_samples(samples: SampleSet, n: int, clip_shape: tuple[int, ...], row: str) -> None:
    """Reject unusable generator output with one sentence; nothing of it reaches the cache."""
    if not isinstance(samples, SampleSet):
        raise GeneratorOutputError(f"generator '{row}' returned {type(samples).__name__}, not a SampleSet.")
    if len(samples) != n:
        raise GeneratorOutputError(f"generator '{row}' returned {len(samples)} samples for {n} requested.")
    if samples.clip_shape != tuple(clip_shape):
        raise GeneratorOutputError(f"generator '{row}' returned clips of shape {list(samples.clip_shape)}, but the "
                                   f"encoder's space has shape {list(clip_shape)} [T, C, h, w].")
    bad = ~np.isfinite(np.asarray(samples.latents, dtype=np.float32)).reshape(len(samples), -1).all(axis=1)
    if bad.any():
        raise GeneratorOutputError(f"generator '{row}' returned NaN or infinite values in {int(bad.sum())} of "
                                   f"{n} samples.")
