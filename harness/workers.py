"""Python loops over videos (simulation, codec round trips) spread over worker processes.

Torch spreads its work over every thread the run was given; a loop of numpy, SciPy or PyAV calls made one video at a
time uses one core, since each call is too short to release the GIL for long. `process_map` runs such a loop in as
many processes as the run has threads (one per rank in a multi-process run), in order, with the same results as the
loop: every item must carry its own seed. The workers are spawned, so a script that runs the harness from Python
must keep its work under `if __name__ == "__main__":`, as multiprocessing asks of every spawning program.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

#: fewer items than this run in the calling process: starting a worker costs one to two seconds of imports
MIN_ITEMS = 32


def process_map(fn: Callable[[Any], T], items: Sequence[Any],
                progress: Callable[[Iterable[T]], Iterator[T]] = iter) -> list[T]:
    """`[fn(item) for item in items]`, in as many spawned processes as torch has threads when there are enough
    items; `fn` must be a module-level function. `progress` wraps the results as they arrive."""
    import torch  # here, not above: the workers import this module with their function's and need no torch

    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1 or len(items) < MIN_ITEMS:
        return list(progress(fn(item) for item in items))
    # spawned, not forked: a fork of a process whose torch thread pool is running can deadlock
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(progress(pool.map(fn, items, chunksize=max(1, len(items) // (8 * workers)))))
