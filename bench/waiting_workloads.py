"""Workloads of workflows that wait: a fan-out's throughput, how late a sleep resumes,
and how soon a signal resumes its job; each with its reference measured in the same run
on the same backend.

All three run an in-process worker (``queue.worker()`` in the bench process), as the
in-process workloads of ``workloads.py`` do.
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from statistics import median

import durable_jobs as jobs

from .database import database, queue_on
from .process_workloads import probe_socket, probe_waits, receive, warm_up
from .procs import WorkerProcesses, outstanding
from .report import Figure, Result, percentile
from .sizes import CONCURRENCY, Sizes, count, drain_timeout
from .workloads import (
    IDLE_GAP,
    LATENCY_WARM_UP,
    _Completions,
    _same_process_waits,
    _timed_drain,
    idle_before_other_process_sample,
)

__all__ = ["fan_out", "signal_latency", "sleep_lateness"]

#: How long each sleeper sleeps (``jobs.sleep``).
SLEEP = 0.05
#: How long a single sample may take before the workload counts as stuck.
SAMPLE_TIMEOUT = 10.0
SIGNAL = "go"


# -- fan-out ------------------------------------------------------------------------------


def fan_out(backend: str, sizes: Sizes) -> Result:
    """One parent fans out ``sizes.fan_out`` no-op children (``jobs.fan_out``), against
    the plain in-process drain of as many no-op jobs; rounds alternate, each on a fresh
    database, and the median of each is reported.

    The fan-out is timed from the parent's ``enqueue`` (the worker idle, its connections
    open) until the parent's completion is committed: its first run (storing the
    children and suspending), the children's runs, and the resumed run that reads their
    outcomes. The drain is timed as the ``drain`` workload's: from the worker's start,
    the jobs stored beforehand.
    """
    n = sizes.fan_out
    fanned: list[float] = []
    drained: list[float] = []
    for _ in range(sizes.drain_rounds):
        with database(backend) as url:
            with queue_on(url) as queue:
                queue.enqueue_many([("noop", None)] * n)
            drained.append(_timed_drain(url, n))
        with database(backend) as url:
            fanned.append(_timed_fan_out(url, n))
    label = f"fan-out of {count(n)} no-op children, enqueue to parent done"
    return Result(
        backend,
        "fan-out",
        [
            Figure(
                "ref.fanout.drain",
                f"drain {count(n)}, in-process",
                median(drained),
                "jobs/s",
            ),
            Figure("fanout", label, median(fanned), "jobs/s", "ref.fanout.drain"),
        ],
    )


def _timed_fan_out(url: str, n: int) -> float:
    """Children/s of one fan-out of ``n`` no-op children, run by an in-process worker."""
    with queue_on(url) as queue:
        queue.register("noop", lambda: None)

        def parent(children: int) -> int:
            results = jobs.fan_out([jobs.sub("noop") for _ in range(children)])
            return sum(1 for r in results if r.ok)

        queue.register("parent", parent)
        warm = _Completions(queue, 1, "noop")
        done = _Completions(queue, 1, "parent")
        with queue.worker({"default": CONCURRENCY}, poll_interval=0.5):
            queue.enqueue("noop")  # the worker's connections open outside the timing
            warm.wait(SAMPLE_TIMEOUT)
            time.sleep(IDLE_GAP)
            start = time.perf_counter()
            job_id = queue.enqueue("parent", n)
            done.wait(drain_timeout(n))
            elapsed = time.perf_counter() - start
        succeeded = queue.result(job_id, timeout=SAMPLE_TIMEOUT)
    if succeeded != n:
        raise RuntimeError(f"the fan-out's parent saw {succeeded} of {n} children succeed")
    return n / elapsed


# -- sleep --------------------------------------------------------------------------------


def sleep_lateness(backend: str, sizes: Sizes) -> Result:
    """How late a ``jobs.sleep(0.05)`` resumes, one sleeper at a time, the in-process
    worker idle otherwise: the resumed run's start minus the sleep's deadline
    (``current_job().wait_until``), both by the wall clock. Beside it, the plain
    enqueue-to-start latency to the same worker, on the same database.

    A sleep whose checkpoint takes longer to commit than the sleep lasts finds its
    deadline passed and returns without suspending, as it should: its lateness is
    taken when it returns, and a note counts such sleeps.
    """
    n = sizes.sleepers
    with database(backend) as url:
        with queue_on(url) as queue:
            late, unsuspended = _sleep_lateness(queue, n)
        with queue_on(url) as queue:
            plain = _same_process_waits(queue, sizes.latency_samples)
    where = f"{count(n)} sleeps of {SLEEP * 1000:g} ms"
    return Result(
        backend,
        "sleep-lateness",
        [
            Figure(
                "ref.latency.sleep",
                "enqueue-to-start p50, same process",
                median(plain),
                "ms",
            ),
            Figure(
                "sleep.late.p50",
                f"sleep lateness p50, {where}",
                median(late),
                "ms",
                "ref.latency.sleep",
            ),
            Figure("sleep.late.p99", f"sleep lateness p99, {where}", percentile(late, 99), "ms"),
        ],
        [f"{backend}: {unsuspended} of {count(n)} sleeps ended before they could suspend"]
        if unsuspended
        else [],
    )


def _sleep_lateness(queue: jobs.Queue, n: int) -> tuple[list[float], int]:
    """ms from each sleep's deadline to its resumed run's start; and how many sleeps
    (past the warm-up) ended before they could suspend."""
    late: list[float] = []
    unsuspended: list[int] = []
    resumed = threading.Event()

    def sleeper() -> None:
        now = datetime.now(UTC)
        until = jobs.current_job().wait_until
        if until is not None:  # the run that resumes the job
            late.append((now - until).total_seconds() * 1000)
            resumed.set()
        jobs.sleep(SLEEP)
        if until is None:  # not suspended: the deadline had passed once it was saved
            # From a moment before the deadline was taken: never less late than it was.
            deadline = now + timedelta(seconds=SLEEP)
            late.append((datetime.now(UTC) - deadline).total_seconds() * 1000)
            unsuspended.append(len(late))
            resumed.set()

    queue.register("sleeper", sleeper)
    finished = _Finished(queue, "sleeper")
    with queue.worker({"default": CONCURRENCY}, poll_interval=0.5):
        for _ in range(LATENCY_WARM_UP + n):
            resumed.clear()
            time.sleep(IDLE_GAP)
            job_id = queue.enqueue("sleeper")
            if not resumed.wait(SAMPLE_TIMEOUT):
                raise _stuck(queue, job_id, "did not resume from its sleep")
            finished.wait(job_id)
    return late[LATENCY_WARM_UP:], sum(1 for i in unsuspended if i > LATENCY_WARM_UP)


# -- signals ------------------------------------------------------------------------------


def signal_latency(backend: str, sizes: Sizes) -> Result:
    """From ``queue.signal(...)`` in the bench process to the start of the run it
    resumes, the job waiting in ``jobs.wait_for_signal`` and its worker idle: a worker in
    the bench process, then one in an ``sdj worker`` process. Beside each, the plain
    enqueue-to-start latency to the same worker, on the same database. For the worker in
    the bench process, also until ``wait_for_signal`` returns (it consumes the signal).
    """
    n = sizes.signal_samples
    with database(backend) as url:
        with queue_on(url) as queue:
            started, returned = _signal_waits(queue, n)
        with queue_on(url) as queue:
            plain = _same_process_waits(queue, sizes.latency_samples)
    with (
        database(backend) as url,
        WorkerProcesses(url, 1, CONCURRENCY),
        outstanding(url) as left,
        queue_on(url) as queue,
        probe_socket() as sock,
    ):
        warm_up(queue, left)
        other = _other_process_signal_waits(queue, sock, n)
        plain_other = probe_waits(queue, sock, sizes.latency_samples)
    where = f"{count(n)} signals"
    same, elsewhere = "same process", "other process"
    return Result(
        backend,
        "signal-latency",
        [
            Figure("ref.latency.signal", f"enqueue-to-start p50, {same}", median(plain), "ms"),
            Figure(
                "signal.p50",
                f"signal-to-resume p50, {same}, {where}",
                median(started),
                "ms",
                "ref.latency.signal",
            ),
            Figure("signal.p99", f"signal-to-resume p99, {same}", percentile(started, 99), "ms"),
            Figure(
                "signal.returned.p50",
                f"signal to wait_for_signal's return p50, {same}",
                median(returned),
                "ms",
                "ref.latency.signal",
            ),
            Figure(
                "ref.latency.signal.other",
                f"enqueue-to-start p50, {elsewhere}",
                median(plain_other),
                "ms",
            ),
            Figure(
                "signal.other.p50",
                f"signal-to-resume p50, {elsewhere}, {where}",
                median(other),
                "ms",
                "ref.latency.signal.other",
            ),
            Figure(
                "signal.other.p99",
                f"signal-to-resume p99, {elsewhere}",
                percentile(other, 99),
                "ms",
            ),
        ],
    )


class _Runs:
    """The start (and wait's return) times of a job's runs, by job id."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.starts: dict[str, list[float]] = {}
        self.returns: dict[str, float] = {}

    def started(self, job_id: str, at: float) -> None:
        with self.lock:
            self.starts.setdefault(job_id, []).append(at)
            self.lock.notify_all()

    def returned(self, job_id: str, at: float) -> None:
        with self.lock:
            self.returns[job_id] = at
            self.lock.notify_all()

    def wait(self, job_id: str, runs: int) -> float:
        """The start time of ``job_id``'s run number ``runs`` (1 is the first)."""
        with self.lock:
            if not self.lock.wait_for(
                lambda: len(self.starts.get(job_id, ())) >= runs, SAMPLE_TIMEOUT
            ):
                raise TimeoutError(f"run {runs} of job {job_id} did not start in time")
            return self.starts[job_id][runs - 1]

    def wait_returned(self, job_id: str) -> float:
        with self.lock:
            if not self.lock.wait_for(lambda: job_id in self.returns, SAMPLE_TIMEOUT):
                raise TimeoutError(f"job {job_id} did not get its signal in time")
            return self.returns[job_id]


def _signal_waits(queue: jobs.Queue, n: int) -> tuple[list[float], list[float]]:
    """ms from each ``signal`` call to the resumed run's start, and to the return of its
    ``wait_for_signal``."""
    runs = _Runs()

    def waiter() -> None:
        job_id = jobs.current_job().id
        runs.started(job_id, time.perf_counter())
        jobs.wait_for_signal(SIGNAL)
        runs.returned(job_id, time.perf_counter())

    queue.register("waiter", waiter)
    finished = _Finished(queue, "waiter")
    started: list[float] = []
    returned: list[float] = []
    with queue.worker({"default": CONCURRENCY}, poll_interval=0.5):
        for i in range(LATENCY_WARM_UP + n):
            job_id = queue.enqueue("waiter")
            runs.wait(job_id, 1)
            _wait_until_waiting(queue, job_id)
            time.sleep(IDLE_GAP)
            sent = time.perf_counter()
            queue.signal(job_id, SIGNAL, i)
            resumed = runs.wait(job_id, 2)
            got = runs.wait_returned(job_id)
            finished.wait(job_id)
            if i >= LATENCY_WARM_UP:
                started.append((resumed - sent) * 1000)
                returned.append((got - sent) * 1000)
    return started, returned


def _other_process_signal_waits(queue: jobs.Queue, sock: socket.socket, n: int) -> list[float]:
    """ms from each ``signal`` call to the start of the run it resumes in a worker
    process (``bench.app``'s ``waiter``, which reports it to ``sock``)."""
    port = sock.getsockname()[1]
    waits = []
    for seq in range(LATENCY_WARM_UP + n):
        job_id = queue.enqueue("waiter", {"port": port, "seq": seq})
        _wait_until_waiting(queue, job_id)
        idle_before_other_process_sample(queue)
        sent = time.perf_counter()
        queue.signal(job_id, SIGNAL, seq)
        started = receive(sock, seq)
        if seq >= LATENCY_WARM_UP:
            waits.append((started - sent) * 1000)
    return waits


def _wait_until_waiting(queue: jobs.Queue, job_id: str) -> None:
    """Until the job's suspension is stored (a signal sent before would find it running)."""
    limit = time.monotonic() + SAMPLE_TIMEOUT
    while True:
        job = queue.get_job(job_id)
        if job is not None and job.status is jobs.JobStatus.WAITING:
            return
        if time.monotonic() > limit:
            raise _stuck(queue, job_id, "did not suspend")
        time.sleep(0.001)


def _stuck(queue: jobs.Queue, job_id: str, what: str) -> TimeoutError:
    """A sample's timeout, with where the job stands: enough to tell a lost wake-up from
    a slow database in a run's log."""
    job = queue.get_job(job_id)
    if job is None:
        return TimeoutError(f"job {job_id} {what} within {SAMPLE_TIMEOUT:g} s, and is gone")
    state = f"{job.status.value}, attempt {job.attempt}, run_at {job.run_at:%H:%M:%S.%f}"
    if job.wait_until is not None:
        state += f", wait_until {job.wait_until:%H:%M:%S.%f}"
    why = queue.explain(job_id).message
    return TimeoutError(
        f"job {job_id} {what} within {SAMPLE_TIMEOUT:g} s ({datetime.now(UTC):%H:%M:%S.%f}):"
        f" {state}, locked by {job.locked_by}. {why}"
    )


class _Finished:
    """Completions of one job type by id (an ``on_job_complete`` hook), so that each
    sample starts with the worker idle."""

    def __init__(self, queue: jobs.Queue, job_type: str) -> None:
        self._queue = queue
        self._type = job_type
        self._done: set[str] = set()
        self._lock = threading.Condition()
        queue.on_job_complete(self._completed)

    def _completed(self, job: jobs.Job) -> None:
        if job.type != self._type:
            return
        with self._lock:
            self._done.add(job.id)
            self._lock.notify_all()

    def wait(self, job_id: str) -> None:
        with self._lock:
            if not self._lock.wait_for(lambda: job_id in self._done, SAMPLE_TIMEOUT):
                raise _stuck(self._queue, job_id, "did not complete")
