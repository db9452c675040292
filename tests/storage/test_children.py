"""Conformance of ``SQLStorage``: children and fan-out waits, on every backend.

A parent stores its children with the checkpoint of the step that made them, fenced by
its run. Each child's outcome counts down its parent's wait in the transaction that
stores it, and the outcome that decides the wait resumes the parent there, once; with too
many failures the wait's unfinished children are cancelled. Workers resume a decided
parent whose wake-up was lost.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from durable_jobs.errors import CheckpointConflict
from durable_jobs.job import Checkpoint, Job, JobStatus, utcnow
from durable_jobs.storage import ChildrenWait, Outcome, SQLStorage
from durable_jobs.storage.sql import CANCELLED

from .helpers import W1, W2, get, make_job, sql

GROUP = "0"  # the path of the parent's call that waits


def _parent(storage: SQLStorage, **fields: object) -> Job:
    """A parent job in queue "p", claimed by W1."""
    storage.enqueue(make_job("parent", queue="p", **fields))  # type: ignore[arg-type]
    [job] = storage.claim("p", W1, 1)
    return job


def _checkpoint(parent: Job, index: int = 0, call_type: str = "jobs.fan_out") -> Checkpoint:
    return Checkpoint(job_id=parent.id, call_index=index, call_type=call_type, result=b"{}")


def _spawn(
    storage: SQLStorage,
    parent: Job,
    count: int,
    wait: ChildrenWait | None = None,
    *,
    group: str = GROUP,
    index: int = 0,
) -> list[str]:
    """``count`` children of ``parent`` in queue "c" (retries=0), stored by its run."""
    children = [
        make_job("child", queue="c", max_retries=0, parent_id=parent.id, parent_group=group)
        for _ in range(count)
    ]
    cp = _checkpoint(parent, index)
    assert storage.spawn(parent.id, children, cp, worker_id=W1, fence=parent.fence, wait=wait)
    return [child.id for child in children]


def _suspend(storage: SQLStorage, parent: Job, wait: ChildrenWait) -> bool:
    return storage.suspend(
        parent.id,
        worker_id=W1,
        fence=parent.fence,
        until=None,
        waiting_for="children",
        children=wait,
    )


def _run_children(storage: SQLStorage, count: int) -> list[Job]:
    claimed = storage.claim("c", W2, count)
    assert len(claimed) == count
    return claimed


def _succeed(storage: SQLStorage, child: Job) -> None:
    assert storage.complete(child.id, b"1", worker_id=W2, fence=child.fence)


def _fail(storage: SQLStorage, child: Job) -> None:
    assert storage.fail(child.id, "RuntimeError: boom", None, worker_id=W2, fence=child.fence)


def _status(storage: SQLStorage, job_id: str) -> JobStatus:
    return get(storage, job_id).status


def collect(total: int, group: str = GROUP) -> ChildrenWait:
    return ChildrenWait(group, total, total, total)


def fail_fast(total: int, group: str = GROUP) -> ChildrenWait:
    return ChildrenWait(group, total, total, 0)


# -- spawning -----------------------------------------------------------------------------


def test_children_are_stored_with_their_checkpoint_by_the_parents_run_only(
    storage: SQLStorage,
) -> None:
    parent = _parent(storage)
    child = make_job("child", queue="c", parent_id=parent.id, parent_group=GROUP)
    stale = _checkpoint(parent)
    assert not storage.spawn(parent.id, [child], stale, worker_id=W2, fence=parent.fence)
    assert not storage.spawn(parent.id, [child], stale, worker_id=W1, fence=parent.fence + 1)
    assert storage.get_checkpoints(parent.id) == []
    assert sql(storage, "SELECT count(*) FROM sdj_jobs WHERE queue = 'c'")[0][0] == 0

    ids = _spawn(storage, parent, 3)
    [cp] = storage.get_checkpoints(parent.id)
    assert (cp.call_index, cp.call_type) == (0, "jobs.fan_out")
    for job_id in ids:
        child = get(storage, job_id)
        assert (child.parent_id, child.parent_group) == (parent.id, GROUP)
        assert child.status is JobStatus.PENDING and child.max_retries == 0
    # The children are due jobs like any: claimed in enqueue order.
    assert [j.id for j in storage.claim("c", W2, 10)] == ids


def test_a_second_spawn_at_the_same_position_stores_nothing(storage: SQLStorage) -> None:
    parent = _parent(storage)
    _spawn(storage, parent, 2)
    with pytest.raises(CheckpointConflict):
        _spawn(storage, parent, 2)
    assert sql(storage, "SELECT count(*) FROM sdj_jobs WHERE queue = 'c'")[0][0] == 2


# -- deciding a wait ----------------------------------------------------------------------


def test_the_outcome_that_decides_a_collect_wait_resumes_the_parent_once(
    storage: SQLStorage,
) -> None:
    parent = _parent(storage)
    wait = collect(3)
    ids = _spawn(storage, parent, 3, wait)
    assert _suspend(storage, parent, wait)
    waiting = get(storage, parent.id)
    assert waiting.status is JobStatus.WAITING and waiting.waiting_for == "children:0/3"
    first, second, third = _run_children(storage, 3)
    _succeed(storage, first)
    _fail(storage, second)
    assert _status(storage, parent.id) is JobStatus.WAITING
    _succeed(storage, third)
    woken = get(storage, parent.id)
    assert woken.status is JobStatus.PENDING and woken.waiting_for is None
    assert woken.wait_until is not None and woken.attempt == parent.attempt  # a resume
    assert storage.wake_decided(["p"]) == []
    resumed = storage.claim("p", W1, 1)
    assert [j.id for j in resumed] == [parent.id] and resumed[0].attempt == parent.attempt
    assert [_status(storage, i) for i in ids] == [
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.COMPLETED,
    ]


def test_completions_stored_together_count_each_parent_down_once(storage: SQLStorage) -> None:
    parent, other = _parent(storage), _parent(storage)
    _spawn(storage, parent, 3, collect(3))
    _spawn(storage, other, 2, collect(3))
    assert _suspend(storage, parent, collect(3)) and _suspend(storage, other, collect(3))
    children = _run_children(storage, 5)
    outcomes = [Outcome(c.id, c.fence, b"1", c.parent_id) for c in children[:4]]
    stale = children[4]  # an outcome of another run: not stored, not counted
    outcomes.append(Outcome(stale.id, stale.fence + 1, b"1", stale.parent_id))
    assert storage.complete_many(W2, outcomes) == {c.id for c in children[:4]}
    assert _status(storage, parent.id) is JobStatus.PENDING  # decided by the batch
    assert _status(storage, other.id) is JobStatus.WAITING
    left = "SELECT children_left FROM sdj_jobs WHERE id = :id"
    assert sql(storage, left, id=other.id)[0][0] == 2
    assert storage.wake_decided(["p"]) == []
    assert [j.id for j in storage.claim("p", W1, 5)] == [parent.id]  # resumed once


def test_children_finished_before_the_suspension_make_it_a_due_resume_at_once(
    storage: SQLStorage,
) -> None:
    parent = _parent(storage)
    wait = collect(2)
    _spawn(storage, parent, 2, wait)
    for child in _run_children(storage, 2):
        _succeed(storage, child)
    assert _status(storage, parent.id) is JobStatus.RUNNING  # not waiting: nothing to wake
    assert _suspend(storage, parent, wait)
    woken = get(storage, parent.id)
    assert woken.status is JobStatus.PENDING and woken.wait_until is not None


def test_a_suspension_counts_the_children_finished_so_far(storage: SQLStorage) -> None:
    parent = _parent(storage)
    wait = collect(3)
    _spawn(storage, parent, 3, wait)
    first, *rest = _run_children(storage, 3)
    _fail(storage, first)
    assert _suspend(storage, parent, wait)
    assert get(storage, parent.id).waiting_for == "children:1/3"
    for child in rest:
        assert _status(storage, parent.id) is JobStatus.WAITING
        _succeed(storage, child)
    assert _status(storage, parent.id) is JobStatus.PENDING


def test_a_suspension_of_another_run_is_refused(storage: SQLStorage) -> None:
    parent = _parent(storage)
    wait = collect(1)
    _spawn(storage, parent, 1, wait)
    stale = storage.suspend(
        parent.id, worker_id=W2, fence=parent.fence, until=None, waiting_for="x", children=wait
    )
    assert not stale
    assert _status(storage, parent.id) is JobStatus.RUNNING


def test_fail_fast_the_first_failure_cancels_the_unfinished_children_and_resumes(
    storage: SQLStorage,
) -> None:
    parent = _parent(storage)
    wait = fail_fast(5)
    ids = _spawn(storage, parent, 5, wait)
    assert _suspend(storage, parent, wait)
    running, failing = _run_children(storage, 2)  # the other three stay pending
    _fail(storage, failing)
    assert _status(storage, parent.id) is JobStatus.PENDING
    # The unfinished children are cancelled, the running one too.
    cancelled = [get(storage, i) for i in (running.id, *ids[2:])]
    assert all(c.status is JobStatus.CANCELLED and c.last_error == CANCELLED for c in cancelled)
    assert all(c.finished_at is not None for c in cancelled)
    # The running child's late outcome changes nothing: the parent is not woken again.
    assert storage.claim("p", W1, 1)[0].id == parent.id
    assert not storage.complete(running.id, b"1", worker_id=W2, fence=running.fence)
    assert _status(storage, running.id) is JobStatus.CANCELLED
    assert _status(storage, parent.id) is JobStatus.RUNNING
    assert storage.wake_decided(["p"]) == []


def test_a_failure_before_the_suspension_cancels_at_once_and_the_suspension_resumes(
    storage: SQLStorage,
) -> None:
    parent = _parent(storage)
    wait = fail_fast(3)
    ids = _spawn(storage, parent, 3, wait)
    [failing] = storage.claim("c", W2, 1)
    _fail(storage, failing)
    assert [_status(storage, i) for i in ids[1:]] == [JobStatus.CANCELLED] * 2
    assert _suspend(storage, parent, wait)
    assert _status(storage, parent.id) is JobStatus.PENDING


def test_a_threshold_met_resumes_the_parent_and_leaves_the_rest_running(
    storage: SQLStorage,
) -> None:
    parent = _parent(storage)
    wait = ChildrenWait(GROUP, 4, 2, 2)  # threshold 0.5 of 4
    ids = _spawn(storage, parent, 4, wait)
    assert _suspend(storage, parent, wait)
    first, second, third, _fourth = _run_children(storage, 4)
    _fail(storage, first)
    _succeed(storage, second)
    assert _status(storage, parent.id) is JobStatus.WAITING
    _succeed(storage, third)
    assert _status(storage, parent.id) is JobStatus.PENDING
    assert _status(storage, ids[3]) is JobStatus.RUNNING  # not cancelled


def test_a_threshold_that_can_no_longer_be_met_resumes_the_parent_and_cancels(
    storage: SQLStorage,
) -> None:
    parent = _parent(storage)
    wait = ChildrenWait(GROUP, 4, 3, 1)  # threshold 0.75 of 4
    ids = _spawn(storage, parent, 4, wait)
    assert _suspend(storage, parent, wait)
    first, second = storage.claim("c", W2, 2)
    _fail(storage, first)
    assert _status(storage, parent.id) is JobStatus.WAITING  # one failure is tolerated
    _fail(storage, second)
    assert _status(storage, parent.id) is JobStatus.PENDING
    assert [get(storage, i).last_error for i in ids[2:]] == [CANCELLED] * 2


def test_a_child_lost_with_its_retries_spent_counts_as_failed(storage: SQLStorage) -> None:
    parent = _parent(storage)
    wait = fail_fast(2)
    ids = _spawn(storage, parent, 2, wait)
    assert _suspend(storage, parent, wait)
    storage.claim("c", W2, 1)
    assert storage.release_stale_locks(timedelta(seconds=-1)) == 1  # its worker died
    assert _status(storage, ids[0]) is JobStatus.FAILED
    assert get(storage, ids[1]).last_error == CANCELLED
    assert _status(storage, parent.id) is JobStatus.PENDING


def test_outcomes_of_jobs_without_a_parent_touch_no_other_row(storage: SQLStorage) -> None:
    parent = _parent(storage)
    wait = collect(1)
    _spawn(storage, parent, 1, wait)
    assert _suspend(storage, parent, wait)
    before = get(storage, parent.id)
    storage.enqueue(make_job("plain", queue="x"))
    [plain] = storage.claim("x", W2, 1)
    assert plain.parent_id is None
    _succeed(storage, plain)
    assert get(storage, parent.id) == before


# -- wait_for, nesting --------------------------------------------------------------------


def test_a_wait_for_spawned_children_counts_them_from_its_suspension(storage: SQLStorage) -> None:
    parent = _parent(storage)
    [a] = _spawn(storage, parent, 1, group="0", index=0)
    [b] = _spawn(storage, parent, 1, group="1", index=1)
    [first] = storage.claim("c", W2, 1)
    _succeed(storage, first)  # before the wait: counted by the suspension
    wait = ChildrenWait("2", 2, 2, 2, ids=[a, b])
    assert _suspend(storage, parent, wait)
    assert get(storage, parent.id).waiting_for == "children:1/2"
    assert get(storage, b).parent_group == "2"
    [second] = storage.claim("c", W2, 1)
    _succeed(storage, second)
    assert _status(storage, parent.id) is JobStatus.PENDING


def test_a_child_waiting_for_its_own_children_is_both_child_and_parent(
    storage: SQLStorage,
) -> None:
    root = _parent(storage)
    root_wait = collect(1)
    [mid_id] = _spawn(storage, root, 1, root_wait)
    assert _suspend(storage, root, root_wait)
    [mid] = storage.claim("c", W2, 1)
    leaf = make_job("leaf", queue="c", parent_id=mid.id, parent_group="0")
    mid_wait = collect(1)
    cp = _checkpoint(mid)
    assert storage.spawn(mid.id, [leaf], cp, worker_id=W2, fence=mid.fence, wait=mid_wait)
    assert storage.suspend(
        mid.id, worker_id=W2, fence=mid.fence, until=None, waiting_for="c", children=mid_wait
    )
    [running_leaf] = storage.claim("c", W2, 1)
    assert running_leaf.id == leaf.id
    _succeed(storage, running_leaf)
    assert _status(storage, mid_id) is JobStatus.PENDING
    assert _status(storage, root.id) is JobStatus.WAITING
    [resumed_mid] = storage.claim("c", W2, 1)
    _succeed(storage, resumed_mid)
    assert _status(storage, root.id) is JobStatus.PENDING


# -- lost wake-ups ------------------------------------------------------------------------


def _lose_wake_up(storage: SQLStorage, parent: Job, group: str = GROUP) -> None:
    """Put a resumed parent back to waiting, as if the outcome that decided its wait
    had not resumed it."""
    sql(
        storage,
        "UPDATE sdj_jobs SET status = 'waiting', wait_group = :group, waiting_for = 'x',"
        " wait_until = NULL"
        " WHERE id = :id",
        group=group,
        id=parent.id,
    )


def test_workers_resume_a_decided_parent_whose_wake_up_was_lost_once(
    storage: SQLStorage,
) -> None:
    parent = _parent(storage)
    wait = fail_fast(2)
    ids = _spawn(storage, parent, 2, wait)
    assert _suspend(storage, parent, wait)
    [failing] = storage.claim("c", W2, 1)
    _fail(storage, failing)
    assert _status(storage, parent.id) is JobStatus.PENDING
    _lose_wake_up(storage, parent)
    sql(storage, "UPDATE sdj_jobs SET status = 'pending' WHERE id = :id", id=ids[1])
    assert storage.wake_decided(["other"]) == []  # not a queue of the caller's
    assert storage.wake_decided(["p"]) == ["p"]
    woken = get(storage, parent.id)
    assert woken.status is JobStatus.PENDING and woken.wait_until is not None
    assert get(storage, ids[1]).last_error == CANCELLED  # the decision's cancellation too
    assert storage.wake_decided(["p"]) == []


def test_lost_wake_ups_are_recovered_in_batches(storage: SQLStorage) -> None:
    parents = []
    for _ in range(5):
        parent = _parent(storage)
        wait = collect(1)
        _spawn(storage, parent, 1, wait)
        assert _suspend(storage, parent, wait)
        parents.append(parent)
    for child in _run_children(storage, 5):
        _succeed(storage, child)
    for parent in parents:
        _lose_wake_up(storage, parent)
    assert storage.wake_decided(["p"], limit=2) == ["p"]
    assert [_status(storage, p.id) for p in parents] == [JobStatus.PENDING] * 5
    assert storage.wake_decided(["p"]) == []


def test_an_undecided_wait_is_not_resumed_by_the_workers(storage: SQLStorage) -> None:
    parent = _parent(storage)
    wait = collect(2)
    _spawn(storage, parent, 2, wait)
    assert _suspend(storage, parent, wait)
    [child] = storage.claim("c", W2, 1)
    _succeed(storage, child)
    assert storage.wake_decided(["p"]) == []
    assert _status(storage, parent.id) is JobStatus.WAITING


def test_a_parent_sleeping_after_its_fan_out_is_not_woken_by_late_children(
    storage: SQLStorage,
) -> None:
    parent = _parent(storage)
    wait = ChildrenWait(GROUP, 2, 1, 1)  # one success is enough
    _spawn(storage, parent, 2, wait)
    first, second = _run_children(storage, 2)
    _succeed(storage, first)  # decided while the parent runs: it goes on, then sleeps
    until = utcnow() + timedelta(minutes=5)
    assert storage.suspend(
        parent.id, worker_id=W1, fence=parent.fence, until=until, waiting_for="sleep"
    )
    _succeed(storage, second)
    assert _status(storage, parent.id) is JobStatus.WAITING
    assert storage.wake_decided(["p"]) == []


# -- races --------------------------------------------------------------------------------


def _race(storage: SQLStorage) -> None:
    """Six children's outcomes and their parent's suspension, all at once."""
    parent = _parent(storage)
    wait = collect(6)
    _spawn(storage, parent, 6, wait)
    children = _run_children(storage, 6)
    start = threading.Barrier(len(children) + 1)
    errors: list[BaseException] = []

    def finish(child: Job) -> None:
        try:
            start.wait()
            _succeed(storage, child)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def suspend() -> None:
        try:
            start.wait()
            assert _suspend(storage, parent, wait)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(c,)) for c in children]
    threads.append(threading.Thread(target=suspend))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert _status(storage, parent.id) is JobStatus.PENDING
    assert storage.wake_decided(["p"]) == []
    [resumed] = storage.claim("p", W1, 1)
    assert resumed.id == parent.id
    assert storage.complete(parent.id, None, worker_id=W1, fence=resumed.fence)


def test_outcomes_racing_the_suspension_resume_the_parent_exactly_once(
    storage: SQLStorage,
) -> None:
    for _round in range(3):
        _race(storage)
