"""Fleet-wide concurrency caps and rate limits, end to end: real worker processes racing
on a capped type and on a rate-limited one (the handlers record their runs themselves),
a dead worker's slot coming back, and in-process workers for the rest."""

from __future__ import annotations

import bisect
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs.storage import TypeLimits
from tests.helpers import wait_for
from tests.procs import limits_app
from tests.procs.limits_app import RUNS_TABLE

ROOT = Path(__file__).resolve().parents[2]
FAST = {"poll_interval": 0.05, "lock_timeout": 5}


class LimitWorkers:
    """Worker processes of tests/procs/limits_app.py; whatever is left is killed at the end."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, concurrency: int = 4, lock_timeout: float = 5) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SDJ_DATABASE_URL": self.db_url}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.procs.limits_app", str(concurrency), str(lock_timeout)],
            cwd=ROOT,
            env=env,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> list[int]:
        """SIGTERM every worker still running; their exit statuses."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return [proc.wait(30) for proc in self.procs if proc.returncode != -signal.SIGKILL]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def workers(db_url: str) -> Iterator[LimitWorkers]:
    w = LimitWorkers(db_url)
    yield w
    w.close()


@pytest.fixture
def runs_queue(queue: jobs.Queue) -> jobs.Queue:
    """The producer's queue (no handlers: the workers' processes register them)."""
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(RUNS_TABLE)
        conn.exec_driver_sql("DELETE FROM test_limit_runs")
    return queue


def recorded(queue: jobs.Queue, job_type: str) -> list[tuple[str, int, float, float | None]]:
    """The runs of ``job_type`` as their handlers recorded them: (job, pid, start, end)."""
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT job_id, pid, started, ended FROM test_limit_runs WHERE type = :t"),
            {"t": job_type},
        )
        return [(r[0], int(r[1]), float(r[2]), None if r[3] is None else float(r[3])) for r in rows]


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans that overlap at any moment (one ending as another starts: apart)."""
    events = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def most_in_window(moments: list[float], seconds: float) -> int:
    """The most of ``moments`` within any half-open window of ``seconds``."""
    ordered = sorted(moments)
    return max(
        (bisect.bisect_left(ordered, t + seconds) - i for i, t in enumerate(ordered)), default=0
    )


def completed(queue: jobs.Queue, ids: list[str]) -> bool:
    return all((job := queue.get_job(i)) is not None and job.status == "completed" for i in ids)


def live_workers(queue: jobs.Queue, n: int) -> bool:
    return len(queue.storage.live_workers(timedelta(seconds=30))) >= n


# -- real worker processes ----------------------------------------------------------------


@pytest.mark.slow
def test_four_processes_racing_on_a_capped_type_never_run_more_than_its_cap(
    runs_queue: jobs.Queue, workers: LimitWorkers
) -> None:
    # One slot each: reaching the cap takes runs in two processes at once, and over-
    # admitting it would take a third.
    for _ in range(4):
        workers.start(concurrency=1)
    wait_for(lambda: live_workers(runs_queue, 4), timeout=60)  # all four race from the start
    ids = []
    for _ in range(40):  # each enqueue wakes every worker: they claim at once
        ids.append(runs_queue.enqueue("capped", 0.1))
        time.sleep(0.02)
    wait_for(lambda: completed(runs_queue, ids), timeout=120, interval=0.1)
    assert workers.stop() == [0, 0, 0, 0]
    runs = recorded(runs_queue, "capped")
    assert sorted(job_id for job_id, *_ in runs) == sorted(ids)  # each ran once
    spans = [(start, end) for _, _, start, end in runs if end is not None]
    assert len(spans) == len(ids)
    # As the handlers saw it: never more than the cap at once, and the cap was used.
    assert max_overlap(spans) == limits_app.CAP
    assert len({pid for _, pid, *_ in runs}) >= 2, "the work was not shared between processes"


@pytest.mark.slow
def test_a_rate_limit_admits_at_most_one_window_more_than_its_rate(
    runs_queue: jobs.Queue, workers: LimitWorkers
) -> None:
    for _ in range(3):
        workers.start(concurrency=4)
    wait_for(lambda: live_workers(runs_queue, 3), timeout=60)
    ids = runs_queue.enqueue_many([("rated", n) for n in range(150)])
    wait_for(lambda: completed(runs_queue, ids), timeout=120, interval=0.1)
    assert workers.stop() == [0, 0, 0]
    # A run is admitted when its claim spends a token: its start time, on the database's
    # clock, under the type's lock.
    claims = [job.started_at.timestamp() for i in ids if (job := runs_queue.get_job(i))]
    assert len(claims) == len(ids)
    # "20/s" over any 5 s: at most 100, plus the bucket's one window (20) held at the start.
    assert most_in_window(claims, 5.0) <= 100 + 20
    # The limit paced the runs: 150 runs need (150 - 20) / 20 = 6.5 s at least.
    assert max(claims) - min(claims) >= 6.0
    handlers = [start for _, _, start, _ in recorded(runs_queue, "rated")]
    assert len(handlers) == len(ids)
    assert len({pid for _, pid, *_ in recorded(runs_queue, "rated")}) >= 2


@pytest.mark.slow
def test_a_dead_workers_slot_returns_when_its_job_is_taken_back(
    runs_queue: jobs.Queue, workers: LimitWorkers, tmp_path: Path
) -> None:
    marker = tmp_path / "running"
    hung = runs_queue.enqueue("single", str(marker))
    doomed = workers.start(lock_timeout=1)
    wait_for(marker.exists, timeout=60)
    other = runs_queue.enqueue("single", None)  # held back: the hung run fills the cap
    doomed.send_signal(signal.SIGKILL)
    killed_at = time.time()
    doomed.wait(10)
    time.sleep(0.5)
    job = runs_queue.get_job(other)
    assert job is not None and job.status == "pending"  # the dead worker's run still counts
    workers.start(lock_timeout=1)  # reaps the dead worker's run once its lock expires
    wait_for(lambda: completed(runs_queue, [hung, other]), timeout=60, interval=0.1)
    assert workers.stop() == [0]
    runs = recorded(runs_queue, "single")
    spans = [(start, killed_at if end is None else end) for _, _, start, end in runs]
    assert len(spans) == 3  # the hung run, then both jobs
    assert max_overlap(spans) == 1
    first = runs_queue.get_job(hung)
    assert first is not None and first.attempt == 2


# -- in-process workers -------------------------------------------------------------------


class Tracker:
    """Counts the runs going on at once, overall and per key, and their peaks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    def enter(self, key: str = "") -> None:
        with self.lock:
            for k in (key, "*"):
                self.now[k] += 1
                self.peak[k] = max(self.peak[k], self.now[k])

    def leave(self, key: str = "") -> None:
        with self.lock:
            for k in (key, "*"):
                self.now[k] -= 1


def statuses(queue: jobs.Queue, ids: list[str]) -> Counter[str]:
    return Counter(job.status.value for i in ids if (job := queue.get_job(i)) is not None)


def test_a_capped_type_never_holds_up_the_other_types_of_its_queue(queue: jobs.Queue) -> None:
    gate = threading.Event()
    tracker = Tracker()

    @queue.job(concurrency=1)
    def capped(n: int) -> None:
        tracker.enter()
        try:
            gate.wait(30)
        finally:
            tracker.leave()

    @queue.job()
    def plain(n: int) -> int:
        return n

    # The capped jobs come first in dequeue order.
    capped_ids = queue.enqueue_many([("capped", n, {"priority": 5}) for n in range(5)])
    plain_ids = queue.enqueue_many([("plain", n) for n in range(30)])
    with queue.worker({"default": 4}, **FAST):
        wait_for(lambda: completed(queue, plain_ids), timeout=30)
        # One capped job runs; the others wait, pending, while the plain ones all ran.
        assert statuses(queue, capped_ids) == {"running": 1, "pending": 4}
        gate.set()
        wait_for(lambda: completed(queue, capped_ids), timeout=30)
    assert tracker.peak["*"] == 1


def test_a_keyed_cap_holds_per_key_and_keys_run_side_by_side(queue: jobs.Queue) -> None:
    tracker = Tracker()

    @queue.job(concurrency=1, concurrency_key=lambda order: order["customer"])
    def fulfil(order: dict[str, Any]) -> None:
        tracker.enter(order["customer"])
        time.sleep(0.05)
        tracker.leave(order["customer"])

    ids = queue.enqueue_many([("fulfil", {"customer": c}) for c in "aaaabbbb"])
    assert {queue.get_job(i).concurrency_key for i in ids} == {"a", "b"}  # type: ignore[union-attr]
    with queue.worker({"default": 4}, **FAST):
        wait_for(lambda: completed(queue, ids), timeout=30)
    assert tracker.peak["a"] == tracker.peak["b"] == 1
    assert tracker.peak["*"] == 2


def test_jobs_held_back_by_a_rate_key_stay_pending(queue: jobs.Queue) -> None:
    @queue.job(rate_limit="3/m", rate_key=lambda email: email["domain"])
    def send(email: dict[str, str]) -> None:
        pass

    ids = queue.enqueue_many([("send", {"domain": d}) for d in "xxxxxyyyyy"])
    with queue.worker({"default": 4}, **FAST):
        wait_for(lambda: statuses(queue, ids)["completed"] == 6, timeout=30)
        time.sleep(0.5)
        assert statuses(queue, ids) == {"completed": 6, "pending": 4}
    done = [job for i in ids if (job := queue.get_job(i)) and job.status == "completed"]
    assert Counter(job.rate_key for job in done) == {"x": 3, "y": 3}


def test_a_rate_limit_paces_the_runs(queue: jobs.Queue) -> None:
    @queue.job(rate_limit="10/s")
    def tick(n: int) -> int:
        return n

    ids = queue.enqueue_many([("tick", n) for n in range(25)])
    with queue.worker({"default": 4}, **FAST):
        wait_for(lambda: completed(queue, ids), timeout=30)
    claims = [job.started_at.timestamp() for i in ids if (job := queue.get_job(i))]
    assert most_in_window(claims, 1.0) <= 10 + 10
    assert max(claims) - min(claims) >= 1.4  # (25 - 10) / 10 s at least


def test_a_worker_held_back_by_a_rate_limit_claims_when_the_next_token_is_due(
    queue: jobs.Queue,
) -> None:
    @queue.job(rate_limit="5/s")
    def tick(n: int) -> int:
        return n

    ids = queue.enqueue_many([("tick", n) for n in range(10)])
    started = time.monotonic()
    # Polls too far apart to matter: the worker waits for each token, not for a poll.
    with queue.worker({"default": 4}, poll_interval=30, lock_timeout=5):
        wait_for(lambda: completed(queue, ids), timeout=20)
        took = time.monotonic() - started
    assert 0.8 <= took < 10  # five at once, then one per 0.2 s


def test_a_capped_job_enqueued_beside_a_free_worker_waits_for_room(queue: jobs.Queue) -> None:
    ran = threading.Event()

    @queue.job(concurrency=1)
    def capped(n: int) -> None:
        ran.set()

    # A run elsewhere fills the cap.
    queue.enqueue("capped", 0)
    [elsewhere] = queue.storage.claim(
        "default", "elsewhere", 1, limited=[TypeLimits("capped", concurrency=1)]
    )
    with queue.worker({"default": 4}, **FAST):
        # A free slot here, but only a claim may start it: the cap is full.
        job_id = queue.enqueue("capped", 1)
        time.sleep(0.5)
        job = queue.get_job(job_id)
        assert job is not None and job.status == "pending" and not ran.is_set()
        queue.storage.complete(elsewhere.id, None, worker_id="elsewhere", fence=elsewhere.fence)
        wait_for(lambda: completed(queue, [job_id]), timeout=10)


def test_a_worker_keeps_its_capped_type_at_the_cap(queue: jobs.Queue) -> None:
    tracker = Tracker()

    @queue.job(concurrency=3)
    def capped(n: int) -> None:
        tracker.enter()
        time.sleep(0.01)
        tracker.leave()

    ids = queue.enqueue_many([("capped", n) for n in range(60)])
    started = time.monotonic()
    with queue.worker({"default": 8}, poll_interval=1.0):
        wait_for(lambda: completed(queue, ids), timeout=60)
    assert tracker.peak["*"] == 3
    # Runs of the type are claimed as its runs here end, not at polls (which would take
    # 60 / 3 polls of 1 s).
    assert time.monotonic() - started < 10
