"""Workflows that wait, with real worker processes SIGKILLed at the moments that matter.

Each test runs ``tests/procs/waiting_app.py`` workers (lock timeout 1 s) on every
backend; a handler writes a marker file and blocks at the chosen moment, the test
SIGKILLs that worker, and the others take the run back. Every execution of a handler
and of each step is recorded durably (``waiting_runs``: label, attempt, and whether the
run resumed the job from a wait), so the checks count what really ran:

- killed while suspending (after the wait's checkpoint is committed, before the worker
  stored the suspension): the retry replays the wait from its checkpoint (the first
  run's deadline; the same children, none enqueued twice) and suspends again, and the
  job resumes exactly once;
- killed while the last child runs (the run whose outcome decides the fan-out): the
  child is taken back after the lock timeout, and its outcome resumes the parent
  exactly once, whether the child's retry completes it or its retries are spent;
- killed right after a signal was consumed: the retry replays the wait, sees the same
  payload, consumes no second signal, and the job does not wait again.

In each, no step that was checkpointed runs again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs import codec
from tests.helpers import wait_for
from tests.procs.waiting_app import RUNS_TABLE

ROOT = Path(__file__).resolve().parents[2]
LOCK_TIMEOUT = 1.0
FIRST, RESUMED = 0, 1  # waiting_runs.resumed
# A sleep long enough that the run killed while suspending is taken back and retried
# well before its deadline (lock timeout, reaper, backoff: 1.1-1.5 s measured here).
NAP = 5.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

T = TypeVar("T")


class Workers:
    """Worker processes of tests/procs/waiting_app.py, each logging to a file of its own;
    what is left is killed at the end."""

    def __init__(self, db_url: str, logs: Path) -> None:
        self.db_url = db_url
        self.logs = logs
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.killed: set[int] = set()

    def start(self, queues: str = "default:4") -> subprocess.Popen[bytes]:
        env = {**os.environ, "SDJ_DATABASE_URL": self.db_url}
        log = self.logs / f"worker-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.procs.waiting_app", queues, str(LOCK_TIMEOUT)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append((proc, log))
        return proc

    def check(self) -> None:
        """Fail at once if a worker the test did not kill has exited."""
        for proc, log in self.procs:
            code = proc.poll()
            if code is not None and proc.pid not in self.killed:
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"worker {proc.pid} exited on its own ({code}):\n{tail}")

    def wait(
        self,
        condition: Callable[[], T | None],
        what: str | Callable[[], str],
        timeout: float = 30,
    ) -> T:
        """``condition``'s value once it is truthy, the workers alive meanwhile; fails
        after ``timeout`` s, saying ``what`` was awaited, with the workers' logs."""

        def met() -> T | None:
            self.check()
            return condition()

        try:
            value = wait_for(met, timeout=timeout, interval=0.02)
        except AssertionError:
            logs = "\n".join(
                f"--- worker {proc.pid} ({log.name}):\n" + log.read_text(errors="replace")[-1500:]
                for proc, log in self.procs
            )
            said = what if isinstance(what, str) else what()
            raise AssertionError(f"{said}: not within {timeout} s\n{logs}") from None
        assert value is not None
        return value

    def kill_at(self, marker: Path) -> int:
        """SIGKILL the worker whose handler wrote ``marker`` (its pid) once it has."""
        self.wait(lambda: marker.exists() and marker.read_text(), f"{marker.name} written")
        pid = int(marker.read_text())
        [proc] = [p for p, _log in self.procs if p.pid == pid]
        self.killed.add(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return pid

    def close(self) -> None:
        for proc, _log in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    logs = tmp_path / "logs"
    logs.mkdir()
    w = Workers(db_url, logs)
    yield w
    w.close()


@pytest.fixture
def crash_queue(queue: jobs.Queue) -> jobs.Queue:
    """The test's queue, with an empty ``waiting_runs`` table."""
    with _engine(queue).begin() as conn:
        conn.exec_driver_sql(RUNS_TABLE)
        conn.exec_driver_sql("DELETE FROM waiting_runs")
    return queue


def _engine(queue: jobs.Queue) -> sa.Engine:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    return storage.engine


def _runs(queue: jobs.Queue, job_id: str) -> Counter[tuple[str, int, int]]:
    """(label, attempt, resumed) of each recorded execution of ``job_id``."""
    with _engine(queue).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT label, attempt, resumed FROM waiting_runs WHERE job_id = :j"),
            {"j": job_id},
        )
        return Counter((label, attempt, resumed) for label, attempt, resumed in rows)


def _notes(queue: jobs.Queue, job_id: str, label: str) -> list[str]:
    with _engine(queue).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT note FROM waiting_runs WHERE job_id = :j AND label = :l"),
            {"j": job_id, "l": label},
        )
        return [row[0] for row in rows]


def _children(queue: jobs.Queue, parent_id: str) -> dict[int, jobs.Job]:
    """The children of ``parent_id`` by their number (``i`` in their arguments)."""
    with _engine(queue).connect() as conn:
        ids = [
            row[0]
            for row in conn.execute(
                sa.text("SELECT id FROM sdj_jobs WHERE parent_id = :p"), {"p": parent_id}
            )
        ]
    found: dict[int, jobs.Job] = {}
    for id_ in ids:
        job = queue.get_job(id_)
        assert job is not None and job.args is not None
        found[codec.loads(job.args)["i"]] = job
    return found


def _pending_signals(queue: jobs.Queue, job_id: str) -> list[tuple[str, Any]]:
    with _engine(queue).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT name, payload FROM sdj_signals WHERE job_id = :j"), {"j": job_id}
        )
        return [(name, None if p is None else codec.loads(p)) for name, p in rows]


def _reached(
    workers: Workers, queue: jobs.Queue, job_id: str, *statuses: str, timeout: float = 30
) -> jobs.Job:
    """The job once it has one of ``statuses``; fails after ``timeout`` s."""
    seen: list[jobs.Job | None] = [None]

    def look() -> jobs.Job | None:
        job = seen[0] = queue.get_job(job_id)
        return job if job is not None and job.status in statuses else None

    def what() -> str:
        return f"job {job_id} {'/'.join(statuses)}; it was {seen[0]}"

    return workers.wait(look, what, timeout)


def _finished(workers: Workers, queue: jobs.Queue, job_id: str) -> jobs.Job:
    job = _reached(workers, queue, job_id, "completed", "failed", timeout=60)
    assert job.status == "completed", (job.last_error, job.traceback)
    return job


def _children_once(
    workers: Workers, queue: jobs.Queue, parent_id: str, completed: tuple[int, ...]
) -> dict[int, jobs.Job]:
    """The children of ``parent_id`` once those numbered ``completed`` have completed."""

    def look() -> dict[int, jobs.Job] | None:
        kids = _children(queue, parent_id)
        done = all(i in kids and kids[i].status == "completed" for i in completed)
        return kids if kids and done else None

    return workers.wait(look, f"children {completed} of {parent_id} completed")


# -- killed while the job suspends ----------------------------------------------------------


def test_killed_while_suspending_for_a_sleep_resumes_once_at_the_first_deadline(
    crash_queue: jobs.Queue, workers: Workers, tmp_path: Path
) -> None:
    """The first run stores the sleep's checkpoint and blocks as it unwinds, before its
    worker stores the suspension; that worker dies. The retry replays the sleep with the
    deadline the first run fixed, suspends, and the job resumes once, at that deadline."""
    marker = tmp_path / "suspending"
    workers.start()
    workers.start()
    job_id = crash_queue.enqueue("nap", {"seconds": NAP, "marker": str(marker)})
    workers.kill_at(marker)
    killed_at = datetime.now().astimezone()
    # Its retry (attempt 2) replays the sleep and waits: the deadline was not reached.
    waiting = _reached(workers, crash_queue, job_id, "waiting", timeout=NAP - 1)
    assert waiting.attempt == 2 and waiting.wait_until is not None
    job = _finished(workers, crash_queue, job_id)
    assert job.attempt == 2
    assert job.result == b'["BEFORE","AFTER"]'
    assert _runs(crash_queue, job_id) == {
        ("run", 1, FIRST): 1,  # killed while suspending
        ("run", 2, FIRST): 1,  # the retry: suspends again
        ("run", 2, RESUMED): 1,  # resumed once
        ("before", 1, FIRST): 1,  # checkpointed by the first run: never again
        ("after", 2, RESUMED): 1,
        ("woke", 2, RESUMED): 1,
    }
    # The deadline it woke from is the first run's (about NAP after it started), not the
    # retry's, which began after the kill.
    [woke] = _notes(crash_queue, job_id, "woke")
    assert datetime.fromisoformat(woke) < killed_at + timedelta(seconds=NAP)
    assert crash_queue.storage.get_checkpoints(job_id) == []


def test_killed_while_suspending_for_children_resumes_once_with_the_same_children(
    crash_queue: jobs.Queue, workers: Workers, tmp_path: Path
) -> None:
    """The first run stores the children and the fan-out's checkpoint and blocks as it
    unwinds, before its worker stores the suspension; that worker dies. The retry replays
    the fan-out (the same children, none enqueued again) and suspends; the last child's
    outcome resumes it once."""
    marker = tmp_path / "suspending"
    workers.start("parents:2")
    workers.start("parents:2")
    args = {"n": 3, "kids_queue": "kids", "block_suspend": True, "marker": str(marker)}
    job_id = crash_queue.enqueue("fan", args, queue="parents")
    workers.kill_at(marker)
    # No worker serves the kids yet: the retry finds them unfinished and suspends.
    waiting = _reached(workers, crash_queue, job_id, "waiting")
    assert waiting.attempt == 2
    kids = _children(crash_queue, job_id)
    assert sorted(kids) == [0, 1, 2]  # the first run's children, none enqueued twice
    assert all(k.status == "pending" for k in kids.values())
    workers.start("kids:4")
    job = _finished(workers, crash_queue, job_id)
    assert job.attempt == 2
    assert codec.loads(job.result or b"") == {
        "steps": ["BEFORE", "AFTER"],
        "values": [0, 10, 20],
        "errors": [None, None, None],
    }
    assert _runs(crash_queue, job_id) == {
        ("run", 1, FIRST): 1,
        ("run", 2, FIRST): 1,
        ("run", 2, RESUMED): 1,  # resumed exactly once
        ("before", 1, FIRST): 1,
        ("after", 2, RESUMED): 1,
    }
    assert sorted(_children(crash_queue, job_id)) == [0, 1, 2]
    for i, kid in kids.items():
        assert _runs(crash_queue, kid.id) == {(f"kid{i}", 1, FIRST): 1}


def test_killed_while_suspending_after_the_children_decided_completes_without_waiting(
    crash_queue: jobs.Queue, workers: Workers, tmp_path: Path
) -> None:
    """As above, but every child finishes while the dead run still holds the parent: the
    retry finds the fan-out decided, goes on without suspending, and is never resumed
    (the children's outcomes did not wake a parent that was not waiting)."""
    marker = tmp_path / "suspending"
    workers.start("parents:2")
    workers.start("parents:2")
    workers.start("kids:4")
    args = {"n": 3, "kids_queue": "kids", "block_suspend": True, "marker": str(marker)}
    job_id = crash_queue.enqueue("fan", args, queue="parents")
    workers.wait(lambda: marker.exists() and marker.read_text(), "suspending")
    _children_once(workers, crash_queue, job_id, completed=(0, 1, 2))
    workers.kill_at(marker)
    job = _finished(workers, crash_queue, job_id)
    assert job.attempt == 2
    assert codec.loads(job.result or b"") == {
        "steps": ["BEFORE", "AFTER"],
        "values": [0, 10, 20],
        "errors": [None, None, None],
    }
    assert _runs(crash_queue, job_id) == {
        ("run", 1, FIRST): 1,
        ("run", 2, FIRST): 1,  # decided already: no suspension, no resume
        ("before", 1, FIRST): 1,
        ("after", 2, FIRST): 1,
    }
    assert len(_children(crash_queue, job_id)) == 3


# -- killed while the last child runs -------------------------------------------------------


@pytest.mark.parametrize("kid_retries", [1, 0], ids=["child-retried", "child-retries-spent"])
def test_killed_while_the_last_child_runs_resumes_the_parent_once(
    crash_queue: jobs.Queue, workers: Workers, tmp_path: Path, kid_retries: int
) -> None:
    """The parent waits; its other children have completed; the run of the last child,
    whose outcome decides the fan-out, dies with its worker. After the lock timeout the
    child is taken back: retried and completed, or (retries spent) failed by the
    take-back, which counts for the parent in its transaction. Either outcome resumes
    the parent, exactly once."""
    marker = tmp_path / "last-child"
    workers.start("parents:2,kids:4")
    workers.start("parents:2,kids:4")
    args = {
        "n": 3,
        "kids_queue": "kids",
        "kid": {"block": 2, "marker": str(marker)},
        "kid_options": {"retries": kid_retries},
    }
    job_id = crash_queue.enqueue("fan", args, queue="parents")
    workers.wait(lambda: marker.exists() and marker.read_text(), "the last child runs")
    _reached(workers, crash_queue, job_id, "waiting")
    kids = _children_once(workers, crash_queue, job_id, completed=(0, 1))
    workers.kill_at(marker)
    job = _finished(workers, crash_queue, job_id)
    assert job.attempt == 1  # a resume is not a retry
    outcome = codec.loads(job.result or b"")
    assert outcome["steps"] == ["BEFORE", "AFTER"]
    last = crash_queue.get_job(kids[2].id)
    assert last is not None
    if kid_retries:
        assert outcome["values"] == [0, 10, 20]
        assert outcome["errors"] == [None, None, None]
        assert last.status == "completed" and last.attempt == 2
        assert _runs(crash_queue, last.id) == {("kid2", 1, FIRST): 1, ("kid2", 2, FIRST): 1}
    else:
        assert outcome["values"] == [0, 10, None]
        assert outcome["errors"][:2] == [None, None]
        assert outcome["errors"][2].startswith("WorkerLost"), outcome["errors"][2]
        assert last.status == "failed" and last.attempt == 1
        assert _runs(crash_queue, last.id) == {("kid2", 1, FIRST): 1}
    assert _runs(crash_queue, job_id) == {
        ("run", 1, FIRST): 1,
        ("run", 1, RESUMED): 1,  # resumed exactly once
        ("before", 1, FIRST): 1,
        ("after", 1, RESUMED): 1,
    }
    for i in (0, 1):
        assert _runs(crash_queue, kids[i].id) == {(f"kid{i}", 1, FIRST): 1}


# -- killed right after a signal was consumed -----------------------------------------------


def test_killed_after_consuming_a_signal_replays_its_payload_and_consumes_no_other(
    crash_queue: jobs.Queue, workers: Workers, tmp_path: Path
) -> None:
    """The job waits for ``go``; two signals come; the resumed run consumes the first
    (checkpointed in the same transaction) and dies before its next step. The retry
    replays the wait: the same payload, the second signal left pending, no new wait."""
    marker = tmp_path / "consumed"
    workers.start()
    workers.start()
    job_id = crash_queue.enqueue("approval", {"marker": str(marker)})
    waiting = _reached(workers, crash_queue, job_id, "waiting")
    assert waiting.waiting_for == "signal:go"
    crash_queue.signal(job_id, "go", "first")
    crash_queue.signal(job_id, "go", "second")
    workers.kill_at(marker)
    assert _pending_signals(crash_queue, job_id) == [("go", "second")]
    job = _finished(workers, crash_queue, job_id)
    assert job.attempt == 2
    assert codec.loads(job.result or b"") == ["BEFORE", "first", "AFTER FIRST"]
    assert _runs(crash_queue, job_id) == {
        ("run", 1, FIRST): 1,  # waits for the signal
        ("run", 1, RESUMED): 1,  # consumes "first", killed
        ("got", 1, RESUMED): 1,
        ("run", 2, FIRST): 1,  # the retry: replays the wait, does not wait again
        ("got", 2, FIRST): 1,
        ("before", 1, FIRST): 1,
        ("after first", 2, FIRST): 1,
    }
    assert _notes(crash_queue, job_id, "got") == ["'first'", "'first'"]
    assert _pending_signals(crash_queue, job_id) == [("go", "second")]
