"""Wall time and peak memory of a stage, for the manifest."""

from __future__ import annotations

import os
import resource
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the process high-water mark is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StageMonitor:
    """Samples resident memory in a background thread while a stage runs; also tracks CUDA peak memory."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> StageMonitor:
        self.start = time.perf_counter()
        self.peak = _rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.seconds = time.perf_counter() - self.start
        self.cuda_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0

    def record(self) -> dict:
        out = {"seconds": round(self.seconds, 3), "peak_rss_mb": round(self.peak / 2**20, 1)}
        if self.cuda_peak:
            out["cuda_peak_mb"] = round(self.cuda_peak / 2**20, 1)
        return out
