"""The prose under the leaderboard's tables, which the Markdown and the page share: how the intervals were drawn,
which clip space fidelity is measured in, what a generator that never saw the training videos scores on the plugin
metrics, what the utility columns were trained on (the privacy table's notes are in `harness.privacy_notes`)."""

from __future__ import annotations

from typing import Any

from harness.metrics.columns import interval_text, plugin_table
from harness.privacy_notes import privacy_note


def interval_note(reid: dict[str, Any], downstream: dict[str, Any] | None) -> str:
    """How every `[lo, hi]` in the main table was drawn, said once."""
    if "intervals" not in reid:  # results written before intervals existed
        return ""
    text = (f"Intervals `[lo, hi]`: {reid['intervals']}. Memorised % and τ resample the real videos that set τ "
            "together with the samples (τ recomputed every time, so its own uncertainty is included); recall, "
            "recall after filter and real recall resample the estimated population of nearest training videos, "
            "unseen ones included (Chao et al. 2014), and real recall is the real test videos' recall at the row's "
            "sample count (rarefied or extrapolated); the Fréchet distance resamples both feature sets; IRS∞ is the "
            "occupancy model's ~95 % range; EF adherence resamples the samples.")
    models = reid.get("models", 1)
    if models > 1:
        text += (f" Memorised %, content memorised %, recall, recall after filter and real recall are the mean over "
                 f"{models} re-ID models "
                 "trained from different seeds, and their intervals add the spread between the models (variance / "
                 f"{models}) to the resampling; τ, IRS∞ and the per-sample P_max come from the first model. The "
                 "other intervals resample videos, not the training of the models (see the record below).")
    else:
        text += " All resample videos, not the training of the models (see the record below)."
    if downstream:
        text += f" EF R² and MAE: {downstream['real_full']['interval']} of the real test split."
    return text + "\n\n"


def fidelity_note(results: list[dict[str, Any]]) -> str:
    """Which clip feature space the fidelity table is measured in, and what the real test videos score in it."""
    space = results[0].get("fidelity")
    if not space:
        return ""
    text = (f"Fidelity is measured on clip features of `{space['features']}` ({space['input_shape'][0]} frames of a "
            f"clip at {space['input_shape'][1]} pixels a side, decoded by the run's encoder like the samples)")
    if space.get("error"):
        return text + f"; it could not be measured: {space['error']}\n\n"
    real = space["real"]
    return text + (f". The real test videos, scored as a row against the training videos, reach Fréchet distance "
                   f"{real['video_fd']:.3g}, precision {real['video_precision']:.3g}, k-NN recall "
                   f"{real['video_knn_recall']:.3g}, density {real['video_density']:.3g} and coverage "
                   f"{real['video_coverage']:.3g}: what a generator as good as the real data scores.\n\n")


def reference_notes(results: list[dict[str, Any]]) -> dict[str, str]:
    """Under each table of plugin metrics: what a generator that never saw the training videos scores on each
    column, by construction or measured on the real test videos as a row."""
    by_group: dict[str, list[str]] = {}
    for result in results:
        parts: dict[str, list[str]] = {}
        for m in result.get("metrics", []):
            ref = m.get("reference") or {}
            if ref.get("value") is not None:
                text = interval_text(ref["value"], ref.get("low"), ref.get("high"), m["digits"])
                parts.setdefault(plugin_table(m), []).append(f"{m['label']} {text} ({ref['source']})")
        where = f" in `{result['benchmark']['name']}`" if len(results) > 1 else ""
        for group, said in parts.items():
            by_group.setdefault(group, []).append(f"A generator that never saw the training videos scores{where}: "
                                                  + "; ".join(said) + ".")
    return {group: " ".join(said) + (" Values by construction follow from how the column is calibrated; the others "
                                     "are real test videos, as many as a row has samples, scored as a row.\n\n")
            for group, said in by_group.items()}


def group_notes(results: list[dict[str, Any]]) -> dict[str, str]:
    """The note under each table, by group (the Markdown and the page share them)."""
    notes = {"privacy": privacy_note(results), "fidelity": fidelity_note(results),
             "utility": utility_note(results[0].get("downstream"))}
    for group, text in reference_notes(results).items():
        notes[group] = notes.get(group, "") + text
    return notes


def utility_note(downstream: dict[str, Any] | None) -> str:
    """What the EF columns were trained and tested on, said under the utility table."""
    if not downstream:
        return ""
    text = ""
    first = next((s for s in downstream["strategies"] if s != "real-learned-subset"), None)
    if first:
        text = (f"EF R², EF MAE: `{downstream['task']}` trained on each row's `{first}` samples, tested on the real "
                "test split. ")
    return text + ("EF adherence: requested EF vs the EF a regressor trained on real data measures in the sample; "
                   "every strategy is in the utility table below.\n\n")
