"""The dispatcher's claims: one out per queue at a time, and what is passed over meanwhile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import durable_jobs as jobs
from durable_jobs.dispatcher import Dispatcher
from durable_jobs.executor import RunOutcome
from durable_jobs.job import Job


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[jobs.Queue]:
    storage = jobs.SQLStorage(f"sqlite:///{tmp_path / 'jobs.db'}")
    storage.migrate()
    yield jobs.Queue(storage)
    storage.close()


def dispatcher(queue: jobs.Queue, concurrency: int = 1) -> Dispatcher:
    return Dispatcher(queue, "w1", {"default": concurrency}, lock_timeout=30.0, poll_interval=1.0)


def test_no_second_claim_in_a_queue_while_one_is_out(queue: jobs.Queue) -> None:
    # With SKIP LOCKED a second claim would take the jobs after those the first holds
    # and could start them first: the completer's claim waits its turn instead.
    d = dispatcher(queue)
    [out] = d.reserve()
    d.wakeup.clear()
    assert d.reserve(completing=True) == []
    assert d.reserve() == []
    assert not d.wakeup.is_set()

    queue.register("t", lambda: None)
    job = Job(id="j1", type="t", args=b"[]", queue="default", fence=1)
    d.accept(out, [job])
    assert d.wakeup.is_set(), "the claims passed over are looked for once it is back"
    assert d.tasks.get_nowait() is job
    d._finish(RunOutcome(job, "completed"))
    assert {r.claim.queue for r in d.reserve(completing=True)} == {"default"}


def test_a_claim_never_made_lets_the_next_one_go(queue: jobs.Queue) -> None:
    d = dispatcher(queue, concurrency=2)
    requests = d.reserve()
    assert d.reserve(completing=True) == []
    d.wakeup.clear()
    d.unreserve(requests)
    assert d.wakeup.is_set()
    assert {r.claim.queue for r in d.reserve()} == {"default"}


def test_a_job_taken_by_its_enqueue_is_no_claim_out(queue: jobs.Queue) -> None:
    queue.register("t", lambda: None)
    d = dispatcher(queue)
    job = Job(id="j1", type="t", args=b"[]", queue="default")
    assert d.take_enqueued(job)
    d.start_enqueued(job)
    assert d.tasks.get_nowait() is job
    d._finish(RunOutcome(job, "completed"))
    assert {r.claim.queue for r in d.reserve()} == {"default"}


def test_a_capped_type_whose_completer_claim_was_passed_over_is_claimed_again(
    queue: jobs.Queue,
) -> None:
    @queue.job(concurrency=1)
    def capped() -> None:
        pass

    d = dispatcher(queue, concurrency=2)
    job = Job(id="j1", type="capped", args=b"[]", queue="default", fence=1)
    d.accept(d.reserve()[0], [job])
    assert d.tasks.get_nowait() is job
    d._finish(RunOutcome(job, "completed"))
    d.wake_all()
    out = d.reserve()  # the dispatcher's claim is out when the completer stores the run
    assert {r.claim.queue for r in out} == {"default"}
    assert d.reserve(completing=True) == []
    d.wakeup.clear()
    d.stored([RunOutcome(job, "completed")])
    assert d.wakeup.is_set()
    for request in out:
        d.accept(request, [])
    [claim] = [r.claim for r in d.reserve() if not r.ahead]
    assert [t.job_type for t in claim.limited] == ["capped"]
