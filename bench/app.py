"""The queue that benchmark worker processes run: ``sdj worker bench.app:queue``.

The database comes from ``$SDJ_DATABASE_URL``, which the bench sets for each process.
Only worker processes import this module.
"""

from __future__ import annotations

import socket
import struct
import time

import durable_jobs as jobs

queue = jobs.Queue()

#: A probe's report: its sequence number and the handler's start time (perf_counter).
PROBE_REPORT = struct.Struct("!Id")

_reports = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


@queue.job()
def noop() -> None:
    """Does nothing: the benchmarks measure the queue, not the work."""


@queue.job()
def probe(reply: dict[str, int]) -> None:
    """Sends the time it started to ``127.0.0.1:reply["port"]``, at once and cheaply.

    ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, the same clock in every process.
    """
    started = time.perf_counter()
    _reports.sendto(PROBE_REPORT.pack(reply["seq"], started), ("127.0.0.1", reply["port"]))


@queue.job()
def waiter(reply: dict[str, int]) -> None:
    """Waits for the signal ``"go"``; the run that the signal resumes sends its start
    time as ``probe`` does, before it reads the signal."""
    started = time.perf_counter()
    if jobs.current_job().wait_until is not None:  # a resumed run
        _reports.sendto(PROBE_REPORT.pack(reply["seq"], started), ("127.0.0.1", reply["port"]))
    jobs.wait_for_signal("go")
