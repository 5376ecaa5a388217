"""Reading and writing grayscale AVI files (MJPEG, as EchoNet's own tooling writes them) with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter


class VideoReadError(Exception):
    """The file is missing, truncated or not a decodable video."""


def write_avi(path: Path, frames: np.ndarray, fps: float, quality: int = 2) -> None:
    """Write `uint8 [T, H, W]` frames as an MJPEG AVI; `quality` is the JPEG qscale (2 = best, 31 = worst)."""
    frames = np.asarray(frames, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj444p"
        stream.codec_context.qmin = stream.codec_context.qmax = quality
        stream.codec_context.options = {"flags": "+qscale"}
        stream.codec_context.global_quality = quality * 118  # FF_QP2LAMBDA * qscale
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode(None))


def read_avi(path: Path) -> tuple[np.ndarray, float]:
    """Decode every frame of a video to `uint8 [T, H, W]` grayscale; returns (frames, fps)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            # one conversion context for the whole video: `to_ndarray(format=...)` builds one per frame, 2/3 of the
            # read's time on small frames
            to_grey = VideoReformatter()
            frames = [to_grey.reformat(f, format="gray").to_ndarray() for f in container.decode(stream)]
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise VideoReadError(f"{path}: {exc}") from exc
    if not frames:
        raise VideoReadError(f"{path}: no decodable frames")
    return np.stack(frames), fps
