"""What the privacy table's notes say: how τ, τ_content and τ_motion were set in a run, and what P_max compared."""

from __future__ import annotations

from typing import Any


def reference_frames_note(reid: dict[str, Any]) -> str:
    """What a sample's first frame is compared with (P_max), in one sentence."""
    if reid.get("reference_frames", "first") == "first":
        return "P_max compares a sample's first frame with every training video's first frame (the seed paper's)."
    stride = reid.get("reference_stride", 1)
    frames = "every frame" if stride == 1 else f"frames 0, {stride}, {2 * stride}, …"
    return (f"P_max compares a sample's first frame with {frames} of every training video, so a generator that "
            "returns a training video from another point of its cycle is caught.")


def privacy_note(results: list[dict[str, Any]]) -> str:
    """How τ, τ_content and τ_motion were set, said under the privacy table: once, or for each benchmark of a
    table that shows several (e.g. the default next to the seed paper's recipe), named."""
    benchmarks = {r["benchmark"]["benchmark_hash"]: r for r in results}
    if len(benchmarks) == 1:
        return _run_note(results)
    return "".join(f"**{one['benchmark'].get('name', bench)}** ({bench}). "
                   + _run_note([r for r in results if r["benchmark"]["benchmark_hash"] == bench])
                   for bench, one in benchmarks.items())


def _run_note(results: list[dict[str, Any]]) -> str:
    reid = results[0].get("reid")
    if not reid:
        return motion_note(results[0].get("motion"))
    text = (f"Privacy: head `{reid['head']}`, τ = {reid['percentile']:g}th percentile ({reid['calibration']}); real "
            f"test videos above τ: {reid['test_memorised_pct']:.1f} %. {reference_frames_note(reid)}\n\n")
    content = reid.get("content")
    if content:
        stride = content["frame_stride"]
        frames = "every frame" if stride == 1 else f"frames 0, {stride}, {2 * stride}, …"
        text += (f"Content memorised % compares {frames} of a sample, each embedded on its own, with the same frames "
                 f"of every training video; τ_content = the {content['percentile']:g}th percentile of the real test "
                 f"videos' best frame score ({content['tau']:.3f}, first model).\n\n")
    text += copy_note(reid.get("copy_test"))
    text += motion_note(results[0].get("motion"))
    if not all(r["reid"].get("reliable", True) for r in results if r.get("reid")):
        text += ("**The re-ID model did not learn (validation AUC below the spec's minimum): privacy columns are "
                 "unreliable.**\n\n")
    split = sorted({row["generator"] for r in results for row in r["rows"] if row.get("models_disagree")})
    if split:
        text += (f"**Rows whose re-ID models disagree ({', '.join(split)}): their intervals share no point, so no "
                 "pooled number stands for them; their privacy columns are marked unreliable and each model's "
                 "value is in the row's details.**\n\n")
    return text


def copy_note(copy: dict[str, Any] | None) -> str:
    """How the pixel copy test joins the first-frame and content columns, said once under the table."""
    if not copy or not copy.get("enabled", True):
        return ""
    zooms, gap = ", ".join(f"{z:g}" for z in copy["zooms"]), copy["frame_gap"]
    frames = "every frame" if gap == 1 else f"frames 0, {gap}, {2 * gap}, …"
    return (f"Both columns also run the pixel copy test: a sample's decoded frames ({frames}, "
            f"area-resized to {copy['size']} px) against the training videos' under shifts up to "
            f"{copy['max_shift']:g} px and zooms {zooms}, scored by normalised cross-correlation, so a training video "
            "shifted, cropped, re-encoded or re-scaled in intensity is caught where the re-ID model misses it. A "
            "sample is memorised when either test puts it above the real test videos' percentile; the two tests "
            "are calibrated together (a real video counts at its higher level of the two), so a real held-out "
            "video is still memorised at the complementary rate.\n\n")


def motion_note(motion: dict[str, Any] | None) -> str:
    """What motion memorised % means, said once under the table."""
    if not motion:
        return ""
    if motion.get("error"):
        return f"Motion memorised %: not measured ({motion['error']})\n\n"
    gap = motion["frame_gap"]
    return ("Motion memorised % asks whether a sample moves like a training video, whatever it looks like: optical "
            f"flow (Farnebäck) between frames i and i + {gap} of the decoded clips gives, per step, the image's mean "
            "displacement, mean flow magnitude and mean grey-level change; each part is centred over time and "
            "scaled to unit norm, and a sample's motion score is its best cosine with a training video's. Motion "
            f"that many real videos share does not count: τ_motion = the {motion['percentile']:g}th percentile of "
            f"the real test videos' best motion score ({motion['tau']:.3f}), so a real held-out video is "
            f"motion-memorised {100 - motion['percentile']:g} % of the time; the interval resamples like "
            f"memorised %.{_position_note(motion)}\n\n")


def _position_note(motion: dict[str, Any]) -> str:
    speeds = motion.get("position_speeds") or []
    if not speeds:
        return ""
    return (" A second view decodes every frame and compares where the motion has got to by each frame (the steps' "
            f"running sum), as a replay at speeds {', '.join(f'{v:g}' for v in speeds)}: a video resampled to another "
            "frame rate jitters its steps but not its positions. A sample is motion-memorised when either view puts "
            "it above the real test videos' percentile, the two calibrated together as the copy test is with the "
            "re-ID model.")
