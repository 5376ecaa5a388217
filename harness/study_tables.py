"""The tables of a re-ID study (a spec with `reid_study`): each model on its own test split (paper Table 1), AUC
per head (Table 3), cross-dataset tests (Table 2) and the image- vs latent-space epoch time."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from tabulate import tabulate

from harness.errors import UserError
from harness.metrics.columns import interval_text


def study_tables(result: dict[str, Any]) -> str:
    """A re-ID study: each model on its own test split (Table 1), AUC per head (Table 3), cross-dataset (Table 2)."""
    study = result["study"]
    trained = {v["name"]: v for v in study["variants"]}
    own, heads, cross = [], [], []
    for test in study["tests"]:
        variant = trained[test["model"]]
        training = variant["reid"]["training"]
        auc = interval_text(test["auc"], test["auc_low"], test["auc_high"])
        if test["model"] == test["tested_on"]:
            own.append({"model": test["model"], "space": test["space"], "test pairs": test["pairs"],
                        "AUC [95 % CI] ↑": auc, "accuracy ↑": round(test["accuracy"], 3), "F1 ↑": round(test["f1"], 3),
                        "precision ↑": round(test["precision"], 3), "recall ↑": round(test["recall"], 3),
                        "epochs": training.get("epochs"), "s/epoch ↓": training.get("epoch_seconds")})
            heads.append({"model": test["model"], **{f"AUC {h} ↑": interval_text(v["auc"], v["auc_low"], v["auc_high"])
                                                     for h, v in test["heads"].items()}})
        else:
            cross.append({"model": test["model"], "space": test["space"], "test split of": test["tested_on"],
                          "AUC [95 % CI] ↑": auc, **{f"AUC {h} ↑": round(v["auc"], 3)
                                                     for h, v in test["heads"].items() if h != "pred"}})
    text = f"## {result['benchmark']['title']}\n\nbenchmark `{result['benchmark']['benchmark_hash']}` · seed " \
           f"{result['benchmark']['seed']}\n\n### Re-identification models on their own test split\n\n"
    text += tabulate(pd.DataFrame(own), headers="keys", tablefmt="github", showindex=False) + "\n"
    text += "\n### AUC per head\n\n" + tabulate(pd.DataFrame(heads), headers="keys", tablefmt="github",
                                                    showindex=False) + "\n"
    if cross:
        text += "\n### Cross-dataset (trained on one dataset, tested on another)\n\n"
        text += tabulate(pd.DataFrame(cross), headers="keys", tablefmt="github", showindex=False) + "\n"
    text += epoch_time_ratios(study["variants"])
    return text


def render_study(result: dict[str, Any], fmt: str) -> str:
    if fmt == "md":
        return study_tables(result)
    flat = [{"model": t["model"], "tested_on": t["tested_on"], "space": t["space"], "pairs": t["pairs"],
             **{k: t[k] for k in ("auc", "auc_low", "auc_high", "accuracy", "f1", "precision", "recall")},
             **{f"auc_{h}": v["auc"] for h, v in t["heads"].items()}} for t in result["study"]["tests"]]
    if fmt == "csv":
        return pd.DataFrame(flat).to_csv(index=False)
    if fmt == "json":
        variants = [{"name": v["name"], "dataset": v["dataset"], "space": v["encoder"]["space"],
                     "training": v["reid"]["training"]} for v in result["study"]["variants"]]
        payload = {"benchmark_hash": result["benchmark"]["benchmark_hash"], "title": result["benchmark"]["title"],
                   "variants": variants, "tests": flat}
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    raise UserError(f"a re-ID study is rendered as md, csv or json, not {fmt}.")


def epoch_time_ratios(variants: list[dict[str, Any]]) -> str:
    """Image-space over latent-space training epoch time, for variants trained on the same dataset settings."""
    lines = []
    for image in (v for v in variants if v["encoder"]["space"] == "image"):
        for latent in (v for v in variants if v["encoder"]["space"] == "latent"):
            if latent["dataset_args"] == image["dataset_args"] and latent["dataset"] == image["dataset"]:
                ratio = image["reid"]["training"]["epoch_seconds"] / latent["reid"]["training"]["epoch_seconds"]
                lines.append(f"- `{image['name']}` vs `{latent['name']}`: {ratio:.1f}× longer per epoch in image space")
    if not lines:
        return ""
    return "\nEpoch time, image vs latent space (same pairs per epoch):\n\n" + "\n".join(lines) + "\n"
