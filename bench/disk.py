"""The disk's own stalls: a reference for the longest gaps of a drain.

A drain's commits wait for the disk to confirm each flush of the database's log. When
the disk (or the virtual machine's storage under it) takes long over one flush, every
commit behind it waits, pruning or not. ``fsync_probe`` measures that directly: it
writes one page to a file and ``fdatasync``s it every 10 ms, beside what is measured.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PROBE_DIR", "fsync_probe", "longest"]

#: Where the probe's file goes: on the disk the local database server writes to.
#: /var/tmp, as /tmp may be memory (tmpfs), whose syncs cost nothing.
PROBE_DIR = os.environ.get("SDJ_BENCH_PROBE_DIR", "/var/tmp")

_PAGE = 8192
_EVERY = 0.01


@contextmanager
def fsync_probe(directory: str = PROBE_DIR) -> Iterator[list[tuple[float, float]]]:
    """Sample the disk's flush latency until the block ends: yields the list of
    (``time.perf_counter()`` at the start, seconds taken) of each ``fdatasync``."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    fd, path = tempfile.mkstemp(prefix="sdj-probe-", dir=directory)
    thread = threading.Thread(target=_probe, args=(fd, samples, stop), daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        os.close(fd)
        os.unlink(path)


def _probe(fd: int, samples: list[tuple[float, float]], stop: threading.Event) -> None:
    page = os.urandom(_PAGE)
    while not stop.wait(_EVERY):
        began = time.perf_counter()
        os.pwrite(fd, page, 0)
        os.fdatasync(fd)
        samples.append((began, time.perf_counter() - began))


def longest(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """The longest flush that began within the window (0 if none did)."""
    return max((took for began, took in samples if start <= began <= end), default=0.0)
