"""Named perturbations of a real video, the paths a memorising generator's output takes before a user scores it.

A generator that memorised a training video never hands back its exact pixels: its samples are decoded,
compressed, resampled to another frame rate, started elsewhere, shifted, re-scaled in intensity. Each perturbation
here is one such path at one named strength, applied to a video file's own frames at its own frame rate; the
`near-copy` control then reads the result into the run's clips exactly as the datasets read their files (resampled
in time to the run's fps, cut to its length, resized). Strengths are listed weakest first; `realistic` names those a
memorising generator's output plausibly goes through, at which detection must survive (issue: ≥ 90 % memorised).

The run's own encoder round trip (`encoder`) is not a file operation: the `near-copy` control decodes the latents
itself and lets the run encode the pixels again. `none` (no strength) is every table's paired reference: the same
videos read the same way, unperturbed; it is not a perturbation, so the re-ID model's training views never draw it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from harness.data import ClipSpec
from harness.privacy_spec import UNPERTURBED
from harness.videoio import read_avi
from harness_plugins.echonet import resample_clip, resize_clip

#: what the perturbations produce; part of every cached key made from them. 2: H.264 through x264's C code
VERSION = "2"


@dataclass(frozen=True)
class Video:
    """A video's frames `uint8 [T, H, W]`, the rate they were sampled at, and the rate a reader is told (the
    container's or the file list's); the two differ when a writer labels a video with the wrong rate."""

    frames: np.ndarray
    fps: float
    labelled_fps: float


@dataclass(frozen=True)
class Perturbation:
    family: str  # codec, time, space, intensity or encoder
    what: str  # one line: what a strength means
    strengths: tuple[str, ...]  # known strengths, weakest first
    realistic: tuple[str, ...]  # the strengths detection must survive
    apply: Callable[[Video, str, np.random.Generator], Video] | None  # None: done by the generator (encoder)


def _mjpeg(video: Video, strength: str, rng: np.random.Generator) -> Video:
    """RGB MJPEG through OpenCV's own AVI writer (EchoNet-Synthetic's sampler writes with OpenCV) at JPEG quality
    `strength`, read back by PyAV like every video. (The quality must be set on the open writer: as an open
    parameter this OpenCV ignores it and writes at 75.)"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.avi"
        height, width = video.frames.shape[1:]
        writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), video.labelled_fps,
                                 (width, height))
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, int(strength))
        for frame in video.frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        writer.release()
        frames, _ = read_avi(path)
    return replace(video, frames=frames)


def _h264(video: Video, strength: str, rng: np.random.Generator) -> Video:
    """H.264 (libx264, 4:2:0) at constant rate factor `strength`, in an MP4; one thread and x264's C code, not its
    assembly: with the assembly the same video encoded twice in one process came out different about once in 450
    encodes, and which SIMD path runs depends on the machine."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=Fraction(video.labelled_fps).limit_denominator(1000))
            stream.width, stream.height = video.frames.shape[2], video.frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": strength, "threads": "1", "x264-params": "no-asm=1"}
            for frame in video.frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray").reformat(
                    format="yuv420p")))
            container.mux(stream.encode(None))
        frames, _ = read_avi(path)
    return replace(video, frames=frames)


def _fps(video: Video, strength: str, rng: np.random.Generator) -> Video:
    """`A/B`: resampled to A fps (nearest frame in time, as a sampler writing at A would) and labelled B fps, so with
    A ≠ B the heart beats B/A times as fast for whoever reads the label (EchoNet-Synthetic's FileList says 32 fps
    where its AVI containers say 30)."""
    sampled, labelled = (float(part) for part in strength.split("/"))
    duration = len(video.frames) / video.fps
    index = np.minimum(np.round(np.arange(int(np.floor(duration * sampled + 1e-9))) * video.fps / sampled),
                       len(video.frames) - 1).astype(int)
    return Video(video.frames[index], sampled, labelled)


def _start(video: Video, strength: str, rng: np.random.Generator) -> Video:
    """The video from `strength` frames (at its own rate) later: the same acquisition, another phase."""
    return replace(video, frames=video.frames[int(strength):])


def _warp(frames: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Every frame through one affine map (bilinear, black outside the frame, like the sector's surroundings)."""
    height, width = frames.shape[1:]
    return np.stack([cv2.warpAffine(f, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0) for f in frames])


def _shift(video: Video, strength: str, rng: np.random.Generator) -> Video:
    """Translated by `strength` pixels in one of the eight directions (drawn per sample)."""
    angle = rng.integers(8) * np.pi / 4
    dx, dy = np.round(int(strength) * np.array([np.cos(angle), np.sin(angle)]))
    return replace(video, frames=_warp(video.frames, np.float32([[1, 0, dx], [0, 1, dy]])))


def _scale(video: Video, strength: str, rng: np.random.Generator) -> Video:
    """Zoomed by the factor `strength` about the frame's centre."""
    height, width = video.frames.shape[1:]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), 0.0, float(strength))
    return replace(video, frames=_warp(video.frames, matrix))


def _crop(video: Video, strength: str, rng: np.random.Generator) -> Video:
    """A window of `strength` times the frame's side (placed at random inside it) resized to the full frame."""
    height, width = video.frames.shape[1:]
    side_y, side_x = round(height * float(strength)), round(width * float(strength))
    y, x = rng.integers(height - side_y + 1), rng.integers(width - side_x + 1)
    return replace(video, frames=np.stack([cv2.resize(f[y:y + side_y, x:x + side_x], (width, height),
                                                      interpolation=cv2.INTER_LINEAR) for f in video.frames]))


def _grey(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _gain(video: Video, strength: str, rng: np.random.Generator) -> Video:
    """Every grey level times `strength`."""
    return replace(video, frames=_grey(video.frames.astype(np.float32) * float(strength)))


def _gamma(video: Video, strength: str, rng: np.random.Generator) -> Video:
    """Grey levels through the curve 255 (g / 255) ** `strength`."""
    return replace(video, frames=_grey(255.0 * (video.frames / 255.0) ** float(strength)))


def _noise(video: Video, strength: str, rng: np.random.Generator) -> Video:
    """Gaussian noise of σ = `strength` grey levels on every pixel of every frame."""
    noisy = video.frames.astype(np.float32) + rng.normal(0.0, float(strength), video.frames.shape)
    return replace(video, frames=_grey(noisy))


PERTURBATIONS: dict[str, Perturbation] = {
    "mjpeg": Perturbation("codec", "JPEG quality of an RGB MJPEG AVI written by OpenCV", ("95", "75", "50"),
                          ("95", "75"), _mjpeg),
    "h264": Perturbation("codec", "H.264 constant rate factor", ("18", "23", "28", "33"), ("23", "28"), _h264),
    "fps": Perturbation("time", "resampled to A fps and labelled B fps (A/B)",
                        ("32/32", "30/30", "25/25", "32/30", "30/32", "25/30", "30/25"),
                        ("32/32", "30/30", "25/25", "32/30", "30/32"), _fps),
    "start": Perturbation("time", "frames (at the video's own rate) cut from its start", ("1", "2", "4", "8"),
                          ("1", "2", "4"), _start),
    "shift": Perturbation("space", "pixels of translation", ("1", "2", "4", "8"), ("1", "2", "4"), _shift),
    "scale": Perturbation("space", "zoom factor about the centre", ("0.95", "1.05", "0.9", "1.1"), ("0.95", "1.05"),
                          _scale),
    "crop": Perturbation("space", "side of a cropped window, resized back", ("0.95", "0.9", "0.8"), ("0.95", "0.9"),
                         _crop),
    "gain": Perturbation("intensity", "grey levels times this", ("0.95", "1.05", "0.9", "1.1", "0.8", "1.2"),
                         ("0.95", "1.05", "0.9", "1.1"), _gain),
    "gamma": Perturbation("intensity", "exponent of a gamma curve", ("0.9", "1.1", "0.8", "1.25"), ("0.9", "1.1"),
                          _gamma),
    "noise": Perturbation("intensity", "σ of Gaussian noise, grey levels", ("1", "2", "4", "8"), ("1", "2"), _noise),
    "encoder": Perturbation("encoder", "round trips through the run's encoder (decode, then encode)", ("1", "2"),
                            ("1",), None),
}


def strength_text(value: object) -> str:
    """A strength as written in a spec (a number or text) in the form the tables above use: `0.90` -> `0.9`."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return f"{value:g}"
    return str(value).strip()


def check(name: str, strength: str) -> None:
    """Raise ValueError with one sentence when the name or the strength is not known."""
    if name == UNPERTURBED:
        if strength:
            raise ValueError(f"'{UNPERTURBED}' leaves the video as it is and takes no strength; remove '{strength}'")
        return
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation '{name}'; known: {', '.join(PERTURBATIONS)}")
    known = PERTURBATIONS[name].strengths
    if strength not in known:
        raise ValueError(f"perturbation '{name}' has no strength '{strength}' ({PERTURBATIONS[name].what}); known: "
                         f"{', '.join(known)}")


def perturb(video: Video, name: str, strength: str, rng: np.random.Generator) -> Video:
    """`video` through the named perturbation (a file operation; `encoder` is the caller's own)."""
    check(name, strength)
    if name == UNPERTURBED:
        return video
    apply = PERTURBATIONS[name].apply
    if apply is None:
        raise ValueError(f"perturbation '{name}' acts on latents, not on a video file")
    return apply(video, strength, rng)


def perturbed_clip(path: Path, fps: float | None, name: str, strength: str, rng: np.random.Generator,
                   clip: ClipSpec) -> np.ndarray:
    """The video file at `path` (sampled at `fps`; None: its container's rate) through the named perturbation,
    read into the run's clip `uint8 [T, H, W]` exactly as the datasets read their files. Raises VideoReadError."""
    frames, native = read_avi(path)
    rate = fps if fps and fps > 0 else native
    return as_clip(perturb(Video(frames, rate, rate), name, strength, rng), clip)


def as_clip(video: Video, clip: ClipSpec) -> np.ndarray:
    """A video read into the run's clip as the datasets read theirs: from its labelled rate to the clip's, cut to
    its length (padded with the last frame), resized."""
    resampled, _ = resample_clip(video.frames, video.labelled_fps, clip.fps, clip.frames)
    return resize_clip(resampled, clip.height)
