"""Benchmarks: ``python -m bench [--quick] [--backend sqlite|postgresql]``.

Each workload runs on a fresh database and prints its figure beside a reference measured
in the same run on the same database (a bare INSERT-and-commit loop), so the ratios mean
something on any machine. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import durable_jobs as jobs

from .database import database


@dataclass
class Row:
    backend: str
    workload: str
    value: float
    unit: str
    reference: float | None = None

    def render(self) -> str:
        ratio = f"{self.value / self.reference:6.2f}x" if self.reference else "      -"
        ref = f"{self.reference:>12,.1f}" if self.reference else f"{'':>12}"
        return (
            f"{self.backend:<11}{self.workload:<44}{self.value:>12,.1f} {self.unit:<8}{ref} {ratio}"
        )


def bare_insert_rate(url: str, n: int) -> float:
    """Reference: one-row INSERT-and-commit loop through the same kind of connection."""
    storage = jobs.SQLStorage(url)
    raw = storage.engine.raw_connection()
    cur = raw.cursor()
    cur.execute("CREATE TABLE bench_ref (id TEXT PRIMARY KEY, body TEXT)")
    raw.commit()
    param = "?" if storage.is_sqlite else "%s"
    sql = f"INSERT INTO bench_ref (id, body) VALUES ({param}, {param})"
    start = time.perf_counter()
    for _ in range(n):
        cur.execute(sql, (str(uuid.uuid4()), "null"))
        raw.commit()
    elapsed = time.perf_counter() - start
    raw.close()
    storage.close()
    return n / elapsed


def drain_rate(url: str, n: int, concurrency: int = 10) -> float:
    queue = jobs.Queue(jobs.SQLStorage(url))
    done = threading.Semaphore(0)
    queue.register("noop", lambda: done.release())
    queue.enqueue_many([("noop", None)] * n)
    start = time.perf_counter()
    with queue.worker({"default": concurrency}, poll_interval=0.5):
        for _ in range(n):
            done.acquire()
        storage = queue.storage
        while storage.get_jobs_by_status("running", 1) or storage.get_due_jobs(1):
            time.sleep(0.001)
    return n / (time.perf_counter() - start)


def enqueue_rate(url: str, n: int) -> float:
    queue = jobs.Queue(jobs.SQLStorage(url))
    start = time.perf_counter()
    for _ in range(n):
        queue.enqueue("noop")
    return n / (time.perf_counter() - start)


def enqueue_many_rate(url: str, n: int) -> float:
    queue = jobs.Queue(jobs.SQLStorage(url))
    items = [("noop", {"i": i}) for i in range(n)]
    start = time.perf_counter()
    queue.enqueue_many(items)
    return n / (time.perf_counter() - start)


def latency_ms(url: str, samples: int) -> tuple[float, float]:
    """Idle enqueue-to-start latency, producer and worker in the same process."""
    queue = jobs.Queue(jobs.SQLStorage(url))
    started = threading.Event()
    stamp: list[float] = []

    def probe() -> None:
        stamp.append(time.perf_counter())
        started.set()

    queue.register("probe", probe)
    waits = []
    with queue.worker(poll_interval=5):
        for _ in range(samples):
            started.clear()
            stamp.clear()
            time.sleep(0.01)  # idle: the worker is waiting, not polling through a backlog
            sent = time.perf_counter()
            queue.enqueue("probe")
            started.wait(10)
            waits.append((stamp[0] - sent) * 1000)
    waits.sort()
    return statistics.median(waits), waits[int(len(waits) * 0.99) - 1]


def workflow_steps_rate(url: str, workflows: int, steps: int = 5) -> float:
    queue = jobs.Queue(jobs.SQLStorage(url))
    done = threading.Semaphore(0)
    queue.register("step", lambda n: n)

    def flow() -> None:
        for n in range(steps):
            jobs.call("step", n)
        done.release()

    queue.register("flow", flow)
    queue.enqueue_many([("flow", None)] * workflows)
    start = time.perf_counter()
    with queue.worker({"default": 10}, poll_interval=0.5):
        for _ in range(workflows):
            done.acquire()
    return workflows * steps / (time.perf_counter() - start)


def run(backend: str, quick: bool) -> list[Row]:
    scale = 0.1 if quick else 1.0
    n_drain, n_enqueue, n_many = int(10_000 * scale), int(2_000 * scale), int(20_000 * scale)
    rows: list[Row] = []
    measure: list[tuple[str, Callable[[str], float], str, bool]] = [
        (
            f"drain {n_drain} no-op jobs, concurrency 10",
            lambda u: drain_rate(u, n_drain),
            "jobs/s",
            True,
        ),
        (
            f"enqueue {n_enqueue} one at a time",
            lambda u: enqueue_rate(u, n_enqueue),
            "jobs/s",
            True,
        ),
        (f"enqueue_many of {n_many}", lambda u: enqueue_many_rate(u, n_many), "jobs/s", True),
        (
            f"{int(500 * scale)} workflows of 5 durable calls",
            lambda u: workflow_steps_rate(u, int(500 * scale)),
            "steps/s",
            True,
        ),
    ]
    for name, fn, unit, with_reference in measure:
        with database(backend) as url:
            reference = bare_insert_rate(url, n_enqueue) if with_reference else None
            rows.append(Row(backend, name, fn(url), unit, reference))
    with database(backend) as url:
        p50, p99 = latency_ms(url, 50 if quick else 200)
        rows.append(Row(backend, "idle latency p50, same process", p50, "ms"))
        rows.append(Row(backend, "idle latency p99, same process", p99, "ms"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (CI)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append")
    args = parser.parse_args()
    header = (
        f"{'backend':<11}{'workload':<44}{'figure':>12} {'unit':<8}{'bare INSERT/s':>12}  ratio"
    )
    print(header)
    print("-" * len(header))
    for backend in args.backend or ["sqlite", "postgresql"]:
        for row in run(backend, args.quick):
            print(row.render(), flush=True)


if __name__ == "__main__":
    main()
