"""Workloads run by real ``sdj worker`` processes (see ``procs.py``), on fresh databases.

The bench process only enqueues and watches: it counts unfinished jobs in the table,
reads the workers' memory from /proc, and receives the probes' start times over UDP.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import durable_jobs as jobs

from .app import PROBE_REPORT
from .database import database, queue_on
from .procs import Outstanding, WorkerProcesses, outstanding, rss_mb
from .references import idle_commit_ms
from .report import Figure, Result, latency_figures
from .sizes import CONCURRENCY, Sizes, count, drain_timeout
from .workloads import IDLE_GAP, LATENCY_WARM_UP, idle_before_other_process_sample

__all__ = [
    "drain_processes",
    "latency_other_process",
    "probe_socket",
    "probe_waits",
    "receive",
    "warm_up",
    "worker_memory",
]

# How long a fresh worker process rests before its memory counts as "at rest".
REST = 2.0
PROBE_TIMEOUT = 10.0


def warm_up(queue: jobs.Queue, left: Outstanding, n: int = 20) -> None:
    """A few jobs through fresh workers: connections open, listeners listening."""
    queue.enqueue_many([("noop", None)] * n)
    left.wait_for_zero(30)


def _drain(url: str, processes: int, n: int) -> float:
    """Jobs/s of ``processes`` idle worker processes draining ``n`` no-op jobs.

    Timed from the commit of the backlog (one ``enqueue_many``) until no job is left.
    """
    with (
        WorkerProcesses(url, processes, CONCURRENCY),
        outstanding(url) as left,
        queue_on(url) as queue,
    ):
        warm_up(queue, left)
        queue.enqueue_many([("noop", None)] * n)
        start = time.perf_counter()
        left.wait_for_zero(drain_timeout(n))
        return n / (time.perf_counter() - start)


def drain_processes(backend: str, sizes: Sizes) -> Result:
    """The drain by one and by two worker processes, measured the same way, in
    alternating rounds (each on a fresh database); the median of each is reported."""
    n = sizes.drain
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(sizes.drain_rounds):
        for processes in rates:
            with database(backend) as url:
                rates[processes].append(_drain(url, processes, n))
    figures = []
    for processes, key in ((1, "drain.1proc"), (2, "drain.2proc")):
        plural = "process" if processes == 1 else "processes"
        label = f"drain {count(n)}, {processes} worker {plural}, c={CONCURRENCY}"
        rate = statistics.median(rates[processes])
        figures.append(Figure(key, label, rate, "jobs/s", "ref.claim"))
    return Result(backend, "drain-processes", figures)


def receive(sock: socket.socket, seq: int) -> float:
    """The start time the probe numbered ``seq`` reports (reports of earlier ones skipped)."""
    while True:
        try:
            data = sock.recv(64)
        except TimeoutError:
            raise TimeoutError(f"probe {seq} did not report within {PROBE_TIMEOUT:g} s") from None
        got, started = PROBE_REPORT.unpack(data)
        if got == seq:
            return float(started)


def latency_other_process(backend: str, sizes: Sizes) -> Result:
    """Enqueue-to-start latency with an idle worker in another process.

    The probe handler sends its ``perf_counter()`` start time back over UDP.
    """
    with (
        database(backend) as url,
        WorkerProcesses(url, 1, CONCURRENCY),
        outstanding(url) as left,
        queue_on(url) as queue,
        probe_socket() as sock,
    ):
        warm_up(queue, left)
        waits = probe_waits(queue, sock, sizes.latency_samples)
        floor = idle_commit_ms(url, backend, sizes.latency_samples, IDLE_GAP)
    figures = latency_figures("latency.other", "other process", waits, floor)
    return Result(backend, "latency-other-process", figures)


@contextmanager
def probe_socket() -> Iterator[socket.socket]:
    """A UDP socket on 127.0.0.1 for the probes' reports (``PROBE_REPORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(PROBE_TIMEOUT)
        yield sock


def probe_waits(queue: jobs.Queue, sock: socket.socket, samples: int) -> list[float]:
    """ms from each ``enqueue`` of a probe to its start in a worker process (which
    reports it to ``sock``), after ``IDLE_GAP`` of idleness and a random part of the
    worker's poll interval; warm-up samples left out."""
    port = sock.getsockname()[1]
    waits = []
    for seq in range(LATENCY_WARM_UP + samples):
        idle_before_other_process_sample(queue)
        sent = time.perf_counter()
        queue.enqueue("probe", {"port": port, "seq": seq})
        started = receive(sock, seq)
        if seq >= LATENCY_WARM_UP:
            waits.append((started - sent) * 1000)
    return waits


def _feed(queue: jobs.Queue, left: Outstanding, n: int, batch: int) -> float:
    """Run ``n`` no-op jobs through the workers, ``batch`` at a time; returns jobs/s."""
    start = time.perf_counter()
    done = 0
    while done < n:
        size = min(batch, n - done)
        queue.enqueue_many([("noop", None)] * size)
        left.wait_for_zero(drain_timeout(size))
        done += size
    return n / (time.perf_counter() - start)


def worker_memory(backend: str, sizes: Sizes) -> Result:
    """A worker process's RSS at rest, and its growth over many jobs."""
    total, first = sizes.memory_jobs, sizes.memory_baseline
    with (
        database(backend) as url,
        WorkerProcesses(url, 1, CONCURRENCY) as workers,
        outstanding(url) as left,
        queue_on(url) as queue,
    ):
        pid = workers.pids[0]
        time.sleep(REST)  # the definition of "at rest", not a wait for a condition
        rest = rss_mb(pid)
        _feed(queue, left, first, first)
        baseline = rss_mb(pid)
        rate = _feed(queue, left, total - first, first)
        end = rss_mb(pid)
    note = (
        f"{backend}: worker RSS {rest:.1f} MB at rest, {baseline:.1f} MB after {count(first)} "
        f"jobs, {end:.1f} MB after {count(total)}; the last {count(total - first)} ran at "
        f"{rate:,.0f} jobs/s, enqueued {count(first)} at a time"
    )
    growth = f"worker RSS growth over {count(total)} jobs"
    return Result(
        backend,
        "memory",
        [
            Figure("rss.rest", "worker RSS at rest", rest, "MB"),
            Figure("rss.growth", growth, end - baseline, "MB"),
        ],
        [note],
    )
