"""Children and fan-out with real workers, on every backend.

A parent fans out children in one batch, suspends (its slot free) and is resumed by the
child outcome that decides its wait, exactly once; a replay enqueues nothing twice;
workers resume a parent whose wake-up was lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs.errors import FailedRun
from durable_jobs.storage.sql import CANCELLED
from tests.helpers import wait_for

BIG = 1_000
WORKER = {"poll_interval": 5.0}  # wake-ups must not come from polling
CHILD_SLOTS = {"default": 16}


class Runs:
    """The runs of the parent type, as its start hooks saw them: whether each resumed."""

    def __init__(self, queue: jobs.Queue, job_type: str) -> None:
        self.resumed: list[bool] = []

        @queue.on_job_start
        def started(job: jobs.Job) -> None:
            if job.type == job_type:
                self.resumed.append(job.wait_until is not None)

    @property
    def resumes(self) -> int:
        return sum(self.resumed)


def _cancelled(queue: jobs.Queue, parent_id: str) -> int:
    """How many children of ``parent_id`` were cancelled."""
    with queue.storage.engine.connect() as conn:
        row = conn.exec_driver_sql(
            f"SELECT count(*) FROM sdj_jobs WHERE parent_id = {_param(queue)}"
            f" AND status = 'cancelled' AND last_error = {_param(queue)}",
            (parent_id, CANCELLED),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _param(queue: jobs.Queue) -> str:
    return "?" if queue.storage.engine.dialect.name == "sqlite" else "%s"


def _count_children(queue: jobs.Queue, parent_id: str, *statuses: str) -> int:
    where = ""
    if statuses:
        where = " AND status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")"
    with queue.storage.engine.connect() as conn:
        row = conn.exec_driver_sql(
            f"SELECT count(*) FROM sdj_jobs WHERE parent_id = {_param(queue)}{where}",
            (parent_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _failure(queue: jobs.Queue, job_id: str) -> FailedRun:
    with pytest.raises(jobs.JobFailed) as caught:
        queue.result(job_id, timeout=25)
    error = getattr(caught.value, "error", None)
    assert isinstance(error, FailedRun), caught.value
    return error


def _register_child(queue: jobs.Queue, failing: Callable[[int], bool]) -> Any:
    @queue.job(retries=0)
    def child(i: int) -> int:
        if failing(i):
            raise jobs.NoRetry(f"child {i} failed")
        return i * 2

    return child


# -- 1,000 children in each failure mode ----------------------------------------------------


def test_collect_waits_for_every_child_of_a_thousand_and_resumes_once(queue: jobs.Queue) -> None:
    child = _register_child(queue, lambda i: i % 100 == 7)
    runs = Runs(queue, "parent")

    @queue.job(retries=0)
    def parent(n: int) -> dict[str, Any]:
        results = jobs.fan_out([jobs.sub(child, i) for i in range(n)], on_failure="collect")
        return {
            "indexes": [r.index for r in results] == list(range(n)),
            "ok": sum(r.ok for r in results),
            "total": sum(r.value for r in results if r.ok),
            "errors": sorted(r.index for r in results if r.error is not None),
        }

    parent_id = queue.enqueue(parent, BIG)
    with queue.worker(CHILD_SLOTS, **WORKER):
        outcome = queue.result(parent_id, timeout=25)
    failing = [i for i in range(BIG) if i % 100 == 7]
    assert outcome == {
        "indexes": True,
        "ok": BIG - len(failing),
        "total": sum(2 * i for i in range(BIG) if i not in failing),
        "errors": failing,
    }
    assert runs.resumed == [False, True]  # suspended once, resumed exactly once
    assert _count_children(queue, parent_id) == BIG
    assert _count_children(queue, parent_id, "failed") == len(failing)


def test_fail_fast_fails_the_parent_at_the_first_failure_and_cancels_the_rest(
    queue: jobs.Queue,
) -> None:
    _register_child(queue, lambda i: i == 5)
    runs = Runs(queue, "parent")

    @queue.job(retries=3)
    def parent(n: int) -> int:
        return len(jobs.fan_out([jobs.sub("child", i) for i in range(n)]))

    parent_id = queue.enqueue(parent, BIG)
    with queue.worker(CHILD_SLOTS, **WORKER):
        error = _failure(queue, parent_id)
        # Running children are told to stop; none is left to run.
        wait_for(
            lambda: _count_children(queue, parent_id, "completed", "failed", "cancelled") == BIG,
            timeout=25,
        )
    assert error.message.startswith("ChildFailed: child 5 (")
    assert "child 5 failed" in error.message
    job = queue.get_job(parent_id)
    assert job is not None and job.attempt == 1  # a NoRetry: no retries spent
    assert runs.resumed == [False, True]
    cancelled = _cancelled(queue, parent_id)
    assert cancelled > BIG // 2, cancelled
    assert _count_children(queue, parent_id, "completed") <= BIG - cancelled - 1


def test_a_threshold_met_returns_once_enough_children_succeeded(queue: jobs.Queue) -> None:
    child = _register_child(queue, lambda i: i % 10 == 3)
    runs = Runs(queue, "parent")

    @queue.job(retries=0)
    def parent(n: int) -> list[int]:
        results = jobs.fan_out([jobs.sub(child, i) for i in range(n)], threshold=0.8)
        unfinished = sum(1 for r in results if not r.ok and r.error is None)
        return [sum(r.ok for r in results), unfinished]

    parent_id = queue.enqueue(parent, BIG)
    with queue.worker(CHILD_SLOTS, **WORKER):
        ok, unfinished = queue.result(parent_id, timeout=25)
    assert 800 <= ok <= 900 and ok + unfinished <= BIG
    assert runs.resumed == [False, True]
    assert _count_children(queue, parent_id, "failed", "completed") >= 800
    # Children that were not needed are not cancelled.
    assert _cancelled(queue, parent_id) == 0


def test_a_threshold_that_can_no_longer_be_met_fails_the_parent(queue: jobs.Queue) -> None:
    child = _register_child(queue, lambda i: i % 4 == 0)
    runs = Runs(queue, "parent")

    @queue.job(retries=0)
    def parent(n: int) -> int:
        return len(jobs.fan_out([jobs.sub(child, i) for i in range(n)], threshold=0.8))

    parent_id = queue.enqueue(parent, BIG)
    with queue.worker(CHILD_SLOTS, **WORKER):
        error = _failure(queue, parent_id)
        wait_for(
            lambda: _count_children(queue, parent_id, "completed", "failed", "cancelled") == BIG,
            timeout=25,
        )
    assert error.message.startswith("ChildFailed: the fan-out can no longer reach its threshold")
    assert "800 of 1000 children must succeed" in error.message
    assert runs.resumed == [False, True]
    assert _count_children(queue, parent_id, "failed") >= 201


# -- replay, nesting, wait_for ----------------------------------------------------------------


def test_a_replay_enqueues_no_child_twice(queue: jobs.Queue) -> None:
    child = _register_child(queue, lambda i: False)
    spawned: list[str] = []
    passed: list[int] = []

    @queue.job(retries=2, backoff=jobs.constant(0))
    def parent() -> list[int]:
        spawned.append(jobs.spawn(child, 100))
        results = jobs.fan_out([jobs.sub(child, i) for i in range(20)])
        passed.append(len(results))
        if len(passed) == 1:  # fails once past the fan-out: its retry replays both steps
            raise RuntimeError("once")
        return [r.value for r in results]

    parent_id = queue.enqueue(parent)
    with queue.worker(CHILD_SLOTS, **WORKER):
        assert queue.result(parent_id, timeout=20) == [2 * i for i in range(20)]
    assert passed == [20, 20]
    assert len(spawned) in (2, 3) and len(set(spawned)) == 1  # 3 if it suspended
    assert _count_children(queue, parent_id) == 21
    job = queue.get_job(parent_id)
    assert job is not None and job.attempt == 2


def test_nested_fan_out_three_levels_deep(queue: jobs.Queue) -> None:
    @queue.job(retries=0)
    def leaf(x: int) -> int:
        return x

    @queue.job(retries=0)
    def mid(x: int) -> int:
        return sum(r.value for r in jobs.fan_out([jobs.sub(leaf, x * 10 + i) for i in range(3)]))

    @queue.job(retries=0)
    def top(x: int) -> int:
        return sum(r.value for r in jobs.fan_out([jobs.sub(mid, x * 10 + i) for i in range(3)]))

    @queue.job(retries=0)
    def root() -> int:
        return sum(r.value for r in jobs.fan_out([jobs.sub(top, i) for i in range(2)]))

    expected = sum((x * 10 + i) * 10 + j for x in range(2) for i in range(3) for j in range(3))
    root_id = queue.enqueue(root)
    with queue.worker({"default": 2}, **WORKER):  # waiting parents hold no slot
        assert queue.result(root_id, timeout=20) == expected


def test_wait_for_spawned_children(queue: jobs.Queue) -> None:
    _register_child(queue, lambda i: i == 1)
    runs = Runs(queue, "parent")

    @queue.job(retries=0)
    def parent() -> list[list[Any]]:
        ids = [jobs.spawn("child", i) for i in range(3)]
        results = jobs.wait_for(ids)
        assert [r.job_id for r in results] == ids
        return [[r.index, r.ok, r.value, r.error] for r in results]

    parent_id = queue.enqueue(parent)
    with queue.worker(CHILD_SLOTS, **WORKER):
        outcome = queue.result(parent_id, timeout=20)
    assert outcome == [
        [0, True, 0, None],
        [1, False, None, "NoRetry: child 1 failed"],
        [2, True, 4, None],
    ]
    assert runs.resumes <= 1 and runs.resumed[0] is False


def test_wait_for_jobs_that_are_not_children_looks_again_until_they_finish(
    queue: jobs.Queue,
) -> None:
    @queue.job(retries=0, queue="slow")
    def other() -> str:
        return "done"

    @queue.job(retries=0)
    def parent(other_id: str) -> list[Any]:
        [result] = jobs.wait_for([other_id])
        return [result.ok, result.value]

    other_id = queue.enqueue(other)
    parent_id = queue.enqueue(parent, other_id)
    with queue.worker({"default": 1}, **WORKER):
        wait_for(lambda: (j := queue.get_job(parent_id)) is not None and j.status == "waiting")
        with queue.worker({"slow": 1}, **WORKER):
            assert queue.result(parent_id, timeout=10) == [True, "done"]


def test_fan_out_async_in_an_async_handler(queue: jobs.Queue) -> None:
    child = _register_child(queue, lambda i: False)

    @queue.job(retries=0)
    async def parent(n: int) -> int:
        one = await jobs.spawn_async(child, 10)
        results = await jobs.fan_out_async([jobs.sub(child, i) for i in range(n)])
        [spawned] = await jobs.wait_for_async([one])
        return sum(r.value for r in results) + spawned.value

    parent_id = queue.enqueue(parent, 5)
    with queue.worker(CHILD_SLOTS, **WORKER):
        assert queue.result(parent_id, timeout=20) == 20 + 20


# -- what cannot run --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: jobs.fan_out([("child", 1)]),  # type: ignore[list-item]
        lambda: jobs.fan_out([jobs.sub("child", 1)], on_failure="ignore"),
        lambda: jobs.fan_out([jobs.sub("child", 1)], threshold=0),
        lambda: jobs.fan_out([jobs.sub("child", 1, priority="high")]),
        lambda: jobs.spawn("child", 1, connection=None),
        lambda: jobs.wait_for("not-a-list"),
    ],
)
def test_children_that_cannot_run_as_written_fail_the_parent_at_once(
    queue: jobs.Queue, make: Callable[[], Any]
) -> None:
    _register_child(queue, lambda i: False)

    @queue.job(retries=3)
    def parent() -> None:
        make()

    parent_id = queue.enqueue(parent)
    with queue.worker(**WORKER):
        error = _failure(queue, parent_id)
    assert error.message.startswith("InvalidCallArguments: jobs."), error.message
    job = queue.get_job(parent_id)
    assert job is not None and job.attempt == 1
    assert _count_children(queue, parent_id) == 0


def test_outside_a_job_the_child_functions_raise_not_in_job() -> None:
    for make in (
        lambda: jobs.spawn("child"),
        lambda: jobs.fan_out([jobs.sub("child")]),
        lambda: jobs.wait_for(["x"]),
    ):
        with pytest.raises(jobs.NotInJobError):
            make()


# -- lost wake-ups ----------------------------------------------------------------------------


def test_results_of_children_with_none_values_and_failures_and_one_gone(
    queue: jobs.Queue,
) -> None:
    """A resume only counts the children that completed with no result: each still gets
    its own ``Result``, in order, beside values and failures; a child deleted by hand
    is named as not found."""

    @queue.job(retries=0, queue="c")
    def child(i: int) -> int | None:
        if i % 3 == 0:
            return None
        if i % 3 == 1:
            return i
        raise jobs.NoRetry(f"child {i} failed")

    @queue.job(retries=0, queue="p")
    def parent(n: int) -> list[list[Any]]:
        results = jobs.fan_out([jobs.sub(child, i) for i in range(n)], on_failure="collect")
        return [[r.index, r.ok, r.value, r.error] for r in results]

    def run_children_of(parent_id: str) -> None:
        with queue.worker({"p": 1}, **WORKER):  # the parent fans out and suspends
            wait_for(lambda: (j := queue.get_job(parent_id)) is not None and j.status == "waiting")
        with queue.worker({"c": 4}, **WORKER):  # the children finish: the parent is due
            wait_for(lambda: (j := queue.get_job(parent_id)) is not None and j.status == "pending")

    def expected(i: int) -> list[Any]:
        if i % 3 == 2:
            return [i, False, None, f"NoRetry: child {i} failed"]
        return [i, True, None if i % 3 == 0 else i, None]

    whole = queue.enqueue(parent, 9)
    run_children_of(whole)
    with queue.worker({"p": 1}, **WORKER):
        assert queue.result(whole, timeout=10) == [expected(i) for i in range(9)]

    gone = queue.enqueue(parent, 9)
    run_children_of(gone)
    with queue.storage.engine.begin() as conn:
        third = conn.exec_driver_sql(
            f"SELECT id FROM sdj_jobs WHERE parent_id = {_param(queue)} AND args = '3'", (gone,)
        ).scalar_one()
        conn.exec_driver_sql(f"DELETE FROM sdj_jobs WHERE id = {_param(queue)}", (third,))
    with queue.worker({"p": 1}, **WORKER):
        outcome = queue.result(gone, timeout=10)
    assert outcome[3] == [3, False, None, f"JobNotFound: no job with id {third!r}"]
    assert outcome[:3] + outcome[4:] == [expected(i) for i in range(9) if i != 3]


def test_workers_resume_a_parent_whose_wake_up_was_lost_exactly_once(queue: jobs.Queue) -> None:
    @queue.job(retries=0, queue="c")
    def child(i: int) -> int:
        return i

    runs = Runs(queue, "parent")

    @queue.job(retries=0, queue="p")
    def parent() -> int:
        return sum(r.value for r in jobs.fan_out([jobs.sub(child, i) for i in range(5)]))

    parent_id = queue.enqueue(parent)
    with queue.worker({"p": 1}, **WORKER):  # the parent fans out and suspends
        wait_for(lambda: (j := queue.get_job(parent_id)) is not None and j.status == "waiting")
    with queue.worker({"c": 4}, **WORKER):  # the children finish: the parent is due
        wait_for(lambda: (j := queue.get_job(parent_id)) is not None and j.status == "pending")
    # As if the last child's outcome had not resumed it.
    with queue.storage.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE sdj_jobs SET status = 'waiting', wait_group = '0', waiting_for = 'x',"
            f" wait_until = NULL WHERE id = {_param(queue)}",
            (parent_id,),
        )
    started = time.monotonic()
    with queue.worker({"p": 1}, lock_timeout=2, poll_interval=5):
        assert queue.result(parent_id, timeout=10) == 10
    assert time.monotonic() - started < 2 + 1
    assert runs.resumed == [False, True]
    assert queue.storage.wake_decided(["p"]) == []


@pytest.mark.parametrize("told", ["nobody", "hook", "events"])
def test_children_are_told_to_whoever_listens_and_wake_the_workers(
    queue: jobs.Queue, told: str
) -> None:
    """Children are drawn as they are stored, and kept only for enqueue hooks and event
    subscribers, who get every one; either way they wake the idle workers of their
    queues, sooner than a poll (a delayed child at its time)."""
    seen: list[str] = []
    if told == "hook":
        queue.hooks.on_enqueued(lambda made: seen.extend(j.id for j in made if j.parent_id))
    stream = queue.events(maxsize=1_000) if told == "events" else None

    @queue.job()
    def kid(n: int) -> int:
        return n

    @queue.job()
    def parent() -> list[int]:
        subs = [jobs.sub(kid, i) for i in range(5)]
        subs.append(jobs.sub(kid, 5, queue="side", delay=0.5))
        return [r.value for r in jobs.fan_out(subs)]

    job_id = queue.enqueue(parent)
    started = time.monotonic()
    with queue.worker({"default": 4, "side": 1}, **WORKER):
        assert queue.result(job_id, timeout=30) == [0, 1, 2, 3, 4, 5]
    assert time.monotonic() - started < 4  # the poll is 5 s away
    if stream is not None:
        while (event := stream.get(timeout=0)) is not None:
            if isinstance(event, jobs.JobEnqueued) and event.job.parent_id == job_id:
                seen.append(event.job.id)
        stream.close()
    assert _count_children(queue, job_id) == 6
    assert len(seen) == (0 if told == "nobody" else 6)
