"""The reference ceilings and the in-process workloads, each on fresh databases.

In-process workloads run ``queue.worker()`` in the bench process and count completions
with the ``on_job_complete`` hook, which fires once a completion is committed. The
workloads with worker processes are in ``process_workloads.py``.
"""

from __future__ import annotations

import random
import statistics
import threading
import time

import durable_jobs as jobs

from .database import connect, database, queue_on
from .fill import claim_plan, fill_pending
from .references import InsertLoop, bulk_insert_seconds, claim_complete_rate, idle_commit_ms
from .report import Figure, Result, latency_figures
from .sizes import CONCURRENCY, Sizes, count, drain_timeout

__all__ = [
    "claim_ceiling",
    "drain_big_table",
    "drain_in_process",
    "enqueue_many",
    "enqueue_one_at_a_time",
    "latency_same_process",
    "workflows",
]

# Between latency samples: long enough that the worker is idle, waiting for a wake-up.
IDLE_GAP = 0.015
LATENCY_WARM_UP = 5
# How often a worker in another process looks for others' commits, where it polls
# (SQLite's file watch; MySQL re-reads; PostgreSQL is notified).
_OTHER_PROCESS_POLL = {"sqlite": 0.002, "mysql": 0.05, "postgresql": 0.0}
_PHASES = random.Random(0)


def idle_before_other_process_sample(queue: jobs.Queue) -> None:
    """``IDLE_GAP``, and a random part of the other process's poll interval: samples
    taken at a fixed rhythm lock onto the poll's phase, each kind of sample (a plain
    enqueue, a signal) onto its own, and then differ by where in it they fall rather
    than by what they cost. Spread over the interval, each waits half of it on average."""
    poll = _OTHER_PROCESS_POLL[queue.storage.dialect.name]
    time.sleep(IDLE_GAP + _PHASES.uniform(0, poll))


# -- references ------------------------------------------------------------------------


def claim_ceiling(backend: str, sizes: Sizes) -> Result:
    """The bare claim-and-complete loop: the ceiling of the drains."""
    with database(backend) as url:
        rate = claim_complete_rate(url, sizes.claim_ceiling)
    figure = Figure("ref.claim", "bare claim-and-complete loop", rate, "jobs/s")
    return Result(backend, "claim-ceiling", [figure])


def enqueue_one_at_a_time(backend: str, sizes: Sizes, rounds: int = 10) -> Result:
    """``enqueue`` in a loop against the bare INSERT loop, on the same database.

    The two alternate in rounds (and in which goes first) so that load from elsewhere
    on the machine falls on both alike.
    """
    per_round = sizes.enqueue // rounds
    n = per_round * rounds
    with database(backend) as url, connect(url) as conn, queue_on(url) as queue:
        loop = InsertLoop(conn, backend)

        def enqueue(k: int) -> float:
            start = time.perf_counter()
            for _ in range(k):
                queue.enqueue("noop")
            return time.perf_counter() - start

        # Warm both up: connections, prepared statements.
        loop.run(20)
        enqueue(20)
        insert_s = enqueue_s = 0.0
        for r in range(rounds):
            if r % 2:
                enqueue_s += enqueue(per_round)
                insert_s += loop.run(per_round)
            else:
                insert_s += loop.run(per_round)
                enqueue_s += enqueue(per_round)
    label = f"enqueue {count(n)} one at a time"
    return Result(
        backend,
        "enqueue",
        [
            Figure("ref.insert", "bare INSERT-commit loop", n / insert_s, "rows/s"),
            Figure("enqueue", label, n / enqueue_s, "jobs/s", ceiling="ref.insert"),
        ],
    )


# -- in-process workloads --------------------------------------------------------------


def enqueue_many(backend: str, sizes: Sizes, rounds: int = 5) -> Result:
    """``enqueue_many`` calls, argument encoding included, alternating with the bare bulk
    insert; the median round of each (one call is too short to time alone)."""
    n = sizes.enqueue_many
    with database(backend) as url, connect(url) as conn, queue_on(url) as queue:
        queue.enqueue("noop")  # opens the pool's connection outside the timing
        items = [("noop", {"i": i}) for i in range(n)]
        rates, bulks = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            queue.enqueue_many(items)
            rates.append(n / (time.perf_counter() - start))
            bulks.append(n / bulk_insert_seconds(conn, backend, n))
        rate, bulk = statistics.median(rates), statistics.median(bulks)
    label = {"postgresql": "bare COPY", "mysql": "bare executemany INSERT"}.get(
        backend, "bare multi-row INSERT"
    )
    return Result(
        backend,
        "enqueue-many",
        [
            Figure("ref.bulk", f"{label} of the same rows", bulk, "rows/s"),
            Figure("enqueue_many", f"enqueue_many of {count(n)}", rate, "jobs/s", "ref.bulk"),
        ],
    )


class _Completions:
    """Counts committed completions of one job type (an ``on_job_complete`` hook)."""

    def __init__(self, queue: jobs.Queue, target: int, job_type: str) -> None:
        self.target = target
        self.count = 0
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._type = job_type
        queue.on_job_complete(self._completed)

    def _completed(self, job: jobs.Job) -> None:
        if job.type != self._type:
            return
        with self._lock:
            self.count += 1
            if self.count >= self.target:
                self.done.set()

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            raise TimeoutError(f"{self.count} of {self.target} jobs completed in {timeout:g} s")


def _timed_drain(url: str, n: int) -> float:
    """Jobs/s of an in-process worker completing ``n`` of the no-op jobs waiting in ``url``.

    Timed from the worker's start to the ``n``-th committed completion.
    """
    with queue_on(url) as queue:
        queue.register("noop", lambda: None)
        completions = _Completions(queue, n, "noop")
        start = time.perf_counter()
        with queue.worker({"default": CONCURRENCY}, poll_interval=0.5):
            completions.wait(drain_timeout(n))
            elapsed = time.perf_counter() - start
    return n / elapsed


def drain_in_process(backend: str, sizes: Sizes) -> Result:
    """Drain a backlog of no-op jobs with an in-process worker (median of the rounds)."""
    n = sizes.drain
    rates = []
    for _ in range(sizes.drain_rounds):
        with database(backend) as url:
            with queue_on(url) as queue:
                queue.enqueue_many([("noop", None)] * n)
            rates.append(_timed_drain(url, n))
    rate = statistics.median(rates)
    label = f"drain {count(n)}, in-process worker, c={CONCURRENCY}"
    return Result(backend, "drain", [Figure("drain", label, rate, "jobs/s", "ref.claim")])


def drain_big_table(backend: str, sizes: Sizes) -> Result:
    """The in-process drain with a big backlog: the claim must not slow down with it.
    Each round drains the next ``n`` of the backlog; the median is reported."""
    n, rows = sizes.drain, sizes.filler
    with database(backend) as url:
        seconds = fill_pending(url, rows)
        plan = claim_plan(url)
        rate = statistics.median(_timed_drain(url, n) for _ in range(sizes.drain_rounds))
    label = f"drain {count(n)} of {count(rows)} pending, in-process"
    return Result(
        backend,
        "drain-big-table",
        [Figure("drain.big", label, rate, "jobs/s", "ref.claim")],
        [
            f"{backend}: filled {rows:,} pending jobs in {seconds:.1f} s (with ANALYZE)",
            plan.render(),
        ],
    )


def workflows(backend: str, sizes: Sizes, steps: int = 5) -> Result:
    """Workflows of ``steps`` durable calls each, run by an in-process worker."""
    n = sizes.workflows
    with database(backend) as url, queue_on(url) as queue:
        queue.register("step", lambda i: i)

        def flow() -> None:
            for i in range(steps):
                jobs.call("step", i)

        queue.register("flow", flow)
        completions = _Completions(queue, n, "flow")
        queue.enqueue_many([("flow", None)] * n)
        start = time.perf_counter()
        with queue.worker({"default": CONCURRENCY}, poll_interval=0.5):
            completions.wait(drain_timeout(n * steps))
            elapsed = time.perf_counter() - start
    label = f"{n} workflows of {steps} durable calls"
    figure = Figure("workflows", label, n * steps / elapsed, "steps/s")
    return Result(backend, "workflows", [figure])


def latency_same_process(backend: str, sizes: Sizes) -> Result:
    """Enqueue-to-start latency with the worker idle in the producer's process.

    On SQLite also, for information, with ``synchronous=NORMAL``: commits that do not
    wait for the disk, the documented trade of durability on power loss for latency.
    """
    with database(backend) as url:
        with queue_on(url) as queue:
            waits = _same_process_waits(queue, sizes.latency_samples)
        floor = idle_commit_ms(url, backend, sizes.latency_samples, IDLE_GAP)
        figures = latency_figures("latency.same", "same process", waits, floor)
        if backend == "sqlite":
            with queue_on(url, sqlite_synchronous="NORMAL") as queue:
                relaxed = _same_process_waits(queue, sizes.latency_samples)
            label = "idle latency p50, same process, synchronous=NORMAL"
            figures.append(Figure("latency.same.normal", label, statistics.median(relaxed), "ms"))
    return Result(backend, "latency-same-process", figures)


def _same_process_waits(queue: jobs.Queue, samples: int) -> list[float]:
    """ms from each ``enqueue`` call to its job's start, after ``IDLE_GAP`` of idleness."""
    started = threading.Event()
    stamp: list[float] = []

    def probe() -> None:
        stamp.append(time.perf_counter())
        started.set()

    queue.register("probe", probe)
    waits = []
    with queue.worker(poll_interval=5):
        for i in range(LATENCY_WARM_UP + samples):
            started.clear()
            stamp.clear()
            time.sleep(IDLE_GAP)
            sent = time.perf_counter()
            queue.enqueue("probe")
            if not started.wait(10):
                raise TimeoutError("a probe job did not start within 10 s")
            if i >= LATENCY_WARM_UP:
                waits.append((stamp[0] - sent) * 1000)
    return waits
