"""Queue + worker on real databases: ordering, timing, retries, concurrency and stopping."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import pydantic
import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs.testing import FakeClock, drain
from tests.helpers import wait_for

FAST = {"poll_interval": 0.05, "lock_timeout": 5}


def status(queue: jobs.Queue, job_id: str) -> jobs.JobStatus:
    job = queue.get_job(job_id)
    assert job is not None
    return job.status


def finished(queue: jobs.Queue, *ids: str) -> bool:
    return all(status(queue, i) in (jobs.JobStatus.COMPLETED, jobs.JobStatus.FAILED) for i in ids)


def test_priority_then_run_time_then_enqueue_order(queue: jobs.Queue) -> None:
    order: list[str] = []
    queue.register("t", order.append)
    past = datetime.now(UTC) - timedelta(minutes=1)
    queue.enqueue("t", "low-1")
    queue.enqueue("t", "high", priority=10)
    queue.enqueue("t", "low-2")
    queue.enqueue("t", "low-early", at=past)
    ids = queue.enqueue_many([("t", "mid-1", {"priority": 5}), ("t", "mid-2", {"priority": 5})])
    with queue.worker({"default": 1}, **FAST):
        wait_for(lambda: len(order) == 6)
    assert order == ["high", "mid-1", "mid-2", "low-early", "low-1", "low-2"]
    assert finished(queue, *ids)


def test_delay_and_at_do_not_run_early(storage: jobs.SQLStorage) -> None:
    clock = FakeClock()
    queue = jobs.Queue(storage, clock=clock)
    ran: dict[str, datetime] = {}
    queue.register("t", lambda name: ran.setdefault(name, clock.now()))
    start = clock.now()
    queue.enqueue("t", "delay", delay=0.6)
    queue.enqueue("t", "delta", delay=timedelta(milliseconds=400))
    at = (start + timedelta(milliseconds=500)).replace(tzinfo=None)  # naive means UTC
    queue.enqueue("t", "at", at=at)
    queue.enqueue("t", "now")
    for _ in range(7):  # 0.1 s at a time: each runs at the first look on or after its time
        drain(queue)
        clock.advance(seconds=0.1)
    assert ran == {
        "now": start,
        "delta": start + timedelta(seconds=0.4),
        "at": start + timedelta(seconds=0.5),
        "delay": start + timedelta(seconds=0.6),
    }


def test_named_queue_isolation(queue: jobs.Queue) -> None:
    seen: list[str] = []
    queue.register("t", seen.append)
    a = queue.enqueue("t", "a", queue="alpha")
    b = queue.enqueue("t", "b", queue="beta")
    with queue.worker(["alpha"], **FAST):
        wait_for(lambda: status(queue, a) == jobs.JobStatus.COMPLETED)
    assert seen == ["a"]
    assert status(queue, b) == jobs.JobStatus.PENDING


def test_concurrency_never_exceeded(queue: jobs.Queue) -> None:
    lock = threading.Lock()
    current = {"default": 0, "other": 0}
    peak = {"default": 0, "other": 0}

    def work(q: str) -> None:
        with lock:
            current[q] += 1
            peak[q] = max(peak[q], current[q])
        time.sleep(0.01)  # holds the slot so that overlap is possible
        with lock:
            current[q] -= 1

    queue.register("work", work)
    ids = queue.enqueue_many(
        [("work", "default") for _ in range(60)]
        + [("work", "other", {"queue": "other"}) for _ in range(30)]
    )
    with queue.worker({"default": 3, "other": 2}, **FAST):
        wait_for(lambda: finished(queue, ids[-1], ids[59]), timeout=30)
        wait_for(lambda: len(queue.storage.get_jobs_by_status("completed", 100)) == 90)
    assert peak == {"default": 3, "other": 2}


def test_async_handlers_share_the_concurrency_limit(queue: jobs.Queue) -> None:
    current, peak = [0], [0]

    @queue.job()
    async def sleepy(n: int) -> int:
        current[0] += 1
        peak[0] = max(peak[0], current[0])
        await asyncio.sleep(0.02)
        current[0] -= 1
        return n * 2

    ids = queue.enqueue_many([("sleepy", n) for n in range(20)])
    with queue.worker({"default": 4}, **FAST):
        wait_for(lambda: finished(queue, *ids), timeout=30)
    assert peak[0] == 4
    job = queue.get_job(ids[3])
    assert job is not None and job.result == b"6"


def test_results_and_current_job(queue: jobs.Queue) -> None:
    seen: list[jobs.Job] = []

    @queue.job()
    def echo(x: dict[str, int]) -> dict[str, object]:
        seen.append(jobs.current_job())
        return {"got": x, "attempt": jobs.current_job().attempt}

    job_id = queue.enqueue(echo, {"a": 1})
    with queue.worker(**FAST):
        wait_for(lambda: finished(queue, job_id))
    job = queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.COMPLETED
    assert job.result == b'{"got":{"a":1},"attempt":1}'
    assert seen[0].id == job_id and seen[0].started_at is not None
    with pytest.raises(jobs.NotInJobError):
        jobs.current_job()


@dataclass
class DataArgs:
    name: str
    count: int = 1


class ModelArgs(pydantic.BaseModel):
    when: datetime
    tags: list[str]


class DictArgs(TypedDict):
    x: int


def test_typed_arguments(queue: jobs.Queue) -> None:
    got: dict[str, object] = {}

    @queue.job()
    def data(a: DataArgs) -> None:
        got["data"] = a

    @queue.job()
    def model(a: ModelArgs) -> None:
        got["model"] = a

    @queue.job()
    def typed(a: DictArgs) -> None:
        got["typed"] = a

    @queue.job()
    def plain(a):  # type: ignore[no-untyped-def]
        got["plain"] = a

    @queue.job()
    def nothing() -> None:
        got["nothing"] = True

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    queue.enqueue(data, DataArgs("n", 2))
    queue.enqueue(model, ModelArgs(when=when, tags=["a"]))
    queue.enqueue(typed, {"x": 3})
    queue.enqueue(plain, [1, {"k": None}])
    queue.enqueue(nothing)
    with queue.worker(**FAST):
        wait_for(lambda: len(got) == 5)
    assert got["data"] == DataArgs("n", 2)
    assert got["model"] == ModelArgs(when=when, tags=["a"])
    assert got["typed"] == {"x": 3}
    assert got["plain"] == [1, {"k": None}]


def test_undecodable_arguments_fail_permanently(queue: jobs.Queue) -> None:
    @queue.job(retries=5)
    def data(a: DataArgs) -> None:
        raise AssertionError("must not run")

    # A producer without the handler cannot check the arguments at enqueue.
    job_id = jobs.Queue(queue.storage).enqueue("data", {"unexpected": 1})
    with queue.worker(**FAST):
        wait_for(lambda: finished(queue, job_id))
    job = queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.FAILED and job.attempt == 1
    assert job.last_error is not None and "cannot decode arguments of 'data'" in job.last_error


def test_unknown_job_type_fails_naming_the_type(queue: jobs.Queue) -> None:
    queue.register("known", lambda: None)
    job_id = queue.enqueue("mystery-type", {"a": 1})
    with queue.worker(**FAST):
        wait_for(lambda: finished(queue, job_id))
    job = queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.FAILED
    assert job.last_error is not None and "mystery-type" in job.last_error


def test_unknown_type_is_left_to_a_worker_that_knows_it(queue: jobs.Queue) -> None:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)

    def expert_alive() -> None:
        storage.heartbeat_worker("expert", host="h", pid=1, queues=["default"], types=["special"])

    expert_alive()
    queue.register("other", lambda: None)
    job_id = queue.enqueue("special")
    with queue.worker(poll_interval=0.05, lock_timeout=1) as worker:
        # The job is claimed, seen to be unknown here but known to a live worker, and
        # handed back without using up an attempt (the type is skipped from then on).
        def handed_back() -> bool:
            job = queue.get_job(job_id)
            assert job is not None
            return job.status == jobs.JobStatus.PENDING and job.attempt == 0

        wait_for(lambda: "special" in worker._dispatcher.skip_types())
        wait_for(handed_back)
        # Once no live worker knows the type, the job fails naming it.
        storage.remove_worker("expert")
        wait_for(lambda: finished(queue, job_id))
    job = queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.FAILED
    assert job.last_error is not None and "'special'" in job.last_error


def test_retries_then_failed_with_attempt_counts(queue: jobs.Queue) -> None:
    attempts: list[int] = []

    @queue.job(retries=2, backoff=jobs.constant(0.01))
    def flaky() -> None:
        attempts.append(jobs.current_job().attempt)
        raise ValueError("boom")

    job_id = queue.enqueue(flaky)
    zero = queue.enqueue(flaky, retries=0)
    with queue.worker(**FAST):
        wait_for(lambda: finished(queue, job_id, zero))
    job = queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.FAILED
    assert job.attempt == 3 and job.last_error == "ValueError: boom"
    once = queue.get_job(zero)
    assert once is not None and once.attempt == 1 and once.status == jobs.JobStatus.FAILED
    assert sorted(attempts) == [1, 1, 2, 3]


def test_retry_then_success_and_retrying_status(storage: jobs.SQLStorage) -> None:
    clock = FakeClock()
    queue = jobs.Queue(storage, clock=clock)

    @queue.job(backoff=jobs.constant(0.3))
    def later() -> str:
        if jobs.current_job().attempt == 1:
            raise RuntimeError("first run fails")
        return "ok"

    job_id = queue.enqueue(later)
    assert drain(queue).retried == 1
    job = queue.get_job(job_id)
    assert job is not None and job.status == "retrying"
    assert job.last_error == "RuntimeError: first run fails"
    assert job.run_at == clock.now() + timedelta(seconds=0.3)
    clock.advance(seconds=0.29)
    assert drain(queue).runs == 0
    clock.advance(seconds=0.01)
    assert drain(queue).completed == 1
    final = queue.get_job(job_id)
    assert final is not None and final.status == jobs.JobStatus.COMPLETED
    assert final.result == b'"ok"' and final.attempt == 2


def test_no_retry_fails_at_once(queue: jobs.Queue) -> None:
    @queue.job(retries=5)
    def bad() -> None:
        try:
            raise KeyError("x")
        except KeyError as err:
            raise jobs.NoRetry(err) from err

    job_id = queue.enqueue(bad)
    with queue.worker(**FAST):
        wait_for(lambda: finished(queue, job_id))
    job = queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.FAILED and job.attempt == 1
    assert job.last_error == "NoRetry: KeyError: 'x'"


def test_retry_after_waits_exactly_that_long(queue: jobs.Queue) -> None:
    runs: list[datetime] = []

    @queue.job(retries=1)
    def limited() -> None:
        runs.append(datetime.now(UTC))
        raise jobs.RetryAfter(timedelta(milliseconds=700), "rate limited")

    job_id = queue.enqueue(limited)
    with queue.worker(**FAST):
        retrying = wait_for(lambda: (j := queue.get_job(job_id)) and j.status == "retrying" and j)
        assert retrying.run_at is not None
        assert timedelta(milliseconds=650) <= retrying.run_at - runs[0] <= timedelta(seconds=1)
        wait_for(lambda: finished(queue, job_id))
    job = queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.FAILED and job.attempt == 2
    assert job.last_error == "RetryAfter: rate limited"
    assert runs[1] - runs[0] >= timedelta(milliseconds=700)


def test_graceful_stop_finishes_running_and_releases_unstarted(queue: jobs.Queue) -> None:
    started = threading.Event()
    release = threading.Event()

    @queue.job()
    def slow() -> str:
        started.set()
        release.wait(10)
        return "done"

    running_id = queue.enqueue(slow)
    worker = queue.worker({"default": 1}, **FAST)
    worker.start()
    assert started.wait(10)
    waiting = queue.enqueue_many([("slow", None) for _ in range(3)])
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 10})
    stopper.start()
    wait_for(lambda: worker._dispatcher.stopping.is_set())
    release.set()
    stopper.join(15)
    assert not stopper.is_alive() and not worker.running
    job = queue.get_job(running_id)
    assert job is not None and job.status == jobs.JobStatus.COMPLETED and job.result == b'"done"'
    for job_id in waiting:
        rest = queue.get_job(job_id)
        assert rest is not None and rest.status == jobs.JobStatus.PENDING and rest.attempt == 0
    worker.stop()  # idempotent


def test_claimed_but_unstarted_jobs_are_released_without_an_attempt(
    queue: jobs.Queue,
) -> None:
    release = threading.Event()
    entered: list[str] = []

    @queue.job()
    def hold(tag: str) -> None:
        entered.append(tag)
        release.wait(10)

    queue.register("quick", lambda: None)
    worker = queue.worker({"default": 2}, **FAST)
    worker.start()
    # Short jobs make the queue claim ahead of its free slots.
    quick = queue.enqueue_many([("quick", None)] * 40)
    wait_for(lambda: finished(queue, *quick))
    busy = queue.enqueue_many([("hold", "busy-1"), ("hold", "busy-2")])
    wait_for(lambda: len(entered) == 2)
    waiting = queue.enqueue_many([("hold", "wait-1"), ("hold", "wait-2")])
    single = queue.enqueue("hold", "single", retries=0)
    # Both slots are busy, yet these are claimed: locked but not started.
    wait_for(lambda: all(status(queue, i) == jobs.JobStatus.RUNNING for i in waiting))
    # Not a job allowed one run: a crash now would count the run it never had.
    assert status(queue, single) == jobs.JobStatus.PENDING
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 10})
    stopper.start()
    wait_for(lambda: worker._dispatcher.stopping.is_set())
    release.set()
    stopper.join(15)
    assert sorted(entered) == ["busy-1", "busy-2"]
    assert status(queue, single) == jobs.JobStatus.PENDING
    for job_id in busy:
        assert status(queue, job_id) == jobs.JobStatus.COMPLETED
    for job_id in waiting:
        stored = queue.get_job(job_id)
        assert stored is not None and stored.status == jobs.JobStatus.PENDING
        assert stored.attempt == 0 and stored.locked_by is None


def test_long_jobs_are_not_claimed_ahead_of_free_slots(queue: jobs.Queue) -> None:
    release = threading.Event()
    entered: list[str] = []

    @queue.job()
    def hold(tag: str) -> None:
        entered.append(tag)
        release.wait(10)

    worker = queue.worker({"default": 1}, **FAST)
    rounds = [0]
    claim_round = worker._dispatcher._claim_round

    def counted_round() -> bool:
        rounds[0] += 1
        return claim_round()

    worker._dispatcher._claim_round = counted_round  # type: ignore[method-assign]
    with worker:
        first = queue.enqueue("hold", "first")
        wait_for(lambda: entered == ["first"])
        second = queue.enqueue("hold", "second")
        seen = rounds[0]
        wait_for(lambda: rounds[0] >= seen + 3)  # rounds after the enqueue woke the worker
        # A worker busy with a long job leaves the next one to other workers.
        assert status(queue, second) == jobs.JobStatus.PENDING
        release.set()
        wait_for(lambda: finished(queue, first, second))


def test_stop_is_thread_safe_and_context_manager_stops(queue: jobs.Queue) -> None:
    with queue.worker(**FAST) as worker:
        assert worker.running
        threads = [threading.Thread(target=worker.stop) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert not worker.running
    with pytest.raises(RuntimeError):
        worker.start()


def test_run_async_drains_on_cancel(queue: jobs.Queue) -> None:
    done = threading.Event()
    queue.register("t", lambda: done.set())

    async def main() -> None:
        worker = queue.worker(**FAST)
        task = asyncio.create_task(worker.run_async())
        job_id = await queue.enqueue_async("t")
        while not done.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not worker.running
        job = queue.get_job(job_id)
        assert job is not None and job.status == jobs.JobStatus.COMPLETED

    asyncio.run(asyncio.wait_for(main(), 30))


def test_run_async_cancelled_while_the_worker_starts_drains_it_too(
    queue: jobs.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = threading.Event()
    queue.register("t", lambda: done.set())
    # start() waits once the worker is attached to the queue: a job enqueued in this
    # process then runs at once on one of its slots, before start() returns.
    attached, release = threading.Event(), threading.Event()
    attach = queue.attach

    def slow_attach(worker: object) -> None:
        attach(worker)  # type: ignore[arg-type]
        attached.set()
        release.wait(30)

    monkeypatch.setattr(queue, "attach", slow_attach)

    async def main() -> None:
        worker = queue.worker(**FAST)
        task = asyncio.create_task(worker.run_async())
        while not attached.is_set():
            await asyncio.sleep(0.01)
        job_id = await queue.enqueue_async("t")
        while not done.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        asyncio.get_running_loop().call_later(0.2, release.set)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert release.is_set()  # the task ended only once the start had finished
        assert not worker.running
        job = queue.get_job(job_id)
        assert job is not None and job.status == jobs.JobStatus.COMPLETED

    asyncio.run(asyncio.wait_for(main(), 30))


def test_in_process_wake_up_beats_the_poll(queue: jobs.Queue) -> None:
    done = threading.Event()
    queue.register("t", lambda: done.set())
    with queue.worker(poll_interval=30, lock_timeout=5) as worker:
        # After the first (empty) claim, only a wake-up can make the worker look again.
        wait_for(lambda: not worker._dispatcher.queues["default"].maybe_work)
        # A job with a run time is stored waiting, then claimed (unlike test below).
        queue.enqueue("t", at=datetime.now(UTC))
        assert done.wait(5), "the enqueue did not wake the worker"


def test_a_job_enqueued_next_to_a_free_worker_is_stored_claimed_by_it(
    queue: jobs.Queue,
) -> None:
    order: list[str] = []
    ran = threading.Event()
    release = threading.Event()

    def t() -> None:
        order.append("run")
        ran.set()
        release.wait(10)

    queue.register("t", t)
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    claims: list[int] = []
    claim = storage.claim
    storage.claim = lambda *a, **k: claims.append(1) or claim(*a, **k)  # type: ignore[method-assign]
    with queue.events() as events, queue.worker({"default": 1}, poll_interval=30) as worker:
        wait_for(lambda: not worker._dispatcher.queues["default"].maybe_work)
        claims.clear()
        job_id = queue.enqueue("t")
        assert ran.wait(5)
        job = queue.get_job(job_id)
        assert job is not None and job.status == jobs.JobStatus.RUNNING
        assert job.attempt == 1 and job.locked_by == worker.id
        assert job.started_at == job.created_at  # stored claimed, in the same insert
        assert claims == []
        # The only slot is busy: the next job is stored waiting, for a claim to take.
        second = queue.enqueue("t")
        waiting = queue.get_job(second)
        assert waiting is not None and waiting.status == jobs.JobStatus.PENDING
        release.set()
        wait_for(lambda: finished(queue, job_id, second))
        kinds = []
        while (event := events.get(0)) is not None:
            if event.job.id == job_id:
                kinds.append(type(event).__name__)
    assert kinds[:2] == ["JobEnqueued", "JobStarted"]


def test_a_failed_claimed_enqueue_gives_its_slot_back(queue: jobs.Queue) -> None:
    queue.register("t", lambda: None)
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    real = storage.enqueue_claimed

    def broken(job: jobs.Job, worker_id: str, **options: object) -> str:
        raise sa.exc.OperationalError("INSERT", {}, Exception("connection refused"))

    with queue.worker({"default": 1}, poll_interval=30) as worker:
        # its first claim is done
        wait_for(lambda: not worker._dispatcher.queues["default"].maybe_work)
        storage.enqueue_claimed = broken  # type: ignore[method-assign]
        with pytest.raises(sa.exc.OperationalError):
            queue.enqueue("t")
        assert worker._dispatcher.queues["default"].claimed == 0
        storage.enqueue_claimed = real  # type: ignore[method-assign]
        job_id = queue.enqueue("t")
        wait_for(lambda: finished(queue, job_id))


def test_stale_lock_is_taken_back_and_retried(storage: jobs.SQLStorage) -> None:
    clock = FakeClock()
    queue = jobs.Queue(storage, clock=clock)
    queue.register("t", lambda: None, backoff=jobs.constant(1))
    job_id = queue.enqueue("t", retries=1)
    # Claimed by a worker that died at once: its lock expires after its lock timeout.
    dead = storage.claim("default", "dead-worker", 1, lock_timeout=0.5)
    assert dead[0].id == job_id
    clock.advance(seconds=0.4)
    assert drain(queue).runs == 0 and status(queue, job_id) == jobs.JobStatus.RUNNING
    clock.advance(seconds=0.2)
    drain(queue)  # taken back: it waits its backoff
    assert status(queue, job_id) == jobs.JobStatus.RETRYING
    clock.advance(seconds=1)
    assert drain(queue).completed == 1
    job = queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.COMPLETED and job.attempt == 2


def test_stale_job_without_retries_left_fails(queue: jobs.Queue) -> None:
    queue.register("t", lambda: None)
    job_id = queue.enqueue("t", retries=0)
    queue.storage.claim("default", "dead-worker", 1, lock_timeout=0.5)  # type: ignore[attr-defined]
    with queue.worker(poll_interval=0.05, lock_timeout=0.5):
        wait_for(lambda: finished(queue, job_id))
    job = queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.FAILED
    assert job.last_error is not None and "WorkerLost" in job.last_error


def test_completion_from_a_worker_that_lost_its_lock_is_rejected(queue: jobs.Queue) -> None:
    entered = threading.Event()
    proceed = threading.Event()
    completions: list[str] = []
    queue.on_job_complete(lambda job: completions.append(job.id))

    @queue.job()
    def slow() -> str:
        entered.set()
        proceed.wait(10)
        return "late"

    job_id = queue.enqueue(slow)
    with queue.worker(**FAST) as worker:
        assert entered.wait(10)
        # Another worker takes the job over (what the reaper and a second worker's claim
        # do after a lost heartbeat), in one statement so this worker cannot race it.
        storage = queue.storage
        assert isinstance(storage, jobs.SQLStorage)
        with storage.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE sdj_jobs SET locked_by = 'thief', attempt = attempt + 1"
                    " WHERE id = :id AND status = 'running'"
                ),
                {"id": job_id},
            )
        proceed.set()
        wait_for(lambda: not worker._dispatcher.active)  # the outcome was offered to storage
    job = queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.RUNNING and job.locked_by == "thief"
    assert completions == []


def test_a_job_taken_back_and_claimed_again_by_its_worker_stays_locked(
    queue: jobs.Queue,
) -> None:
    # The old run, finishing after the job was taken back, must not make the worker
    # forget the new run of the same job: it would stop heartbeating it.
    entered = [threading.Event(), threading.Event()]
    proceed = [threading.Event(), threading.Event()]

    @queue.job()
    def slow() -> None:
        run = jobs.current_job().attempt - 1
        entered[run].set()
        proceed[run].wait(30)

    job_id = queue.enqueue(slow)
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with queue.worker(poll_interval=0.05, lock_timeout=1) as worker:
        assert entered[0].wait(10)
        with storage.engine.begin() as conn:  # what the reaper does to a stale run
            conn.execute(
                sa.text(
                    "UPDATE sdj_jobs SET status = 'retrying', locked_by = NULL, run_at = :now"
                    " WHERE id = :id"
                ),
                {"id": job_id, "now": storage.dialect.time_param(jobs.job.utcnow())},
            )
        worker._dispatcher.wakeup.set()
        assert entered[1].wait(10), "the worker did not claim the job again"
        proceed[0].set()  # the old run ends; its outcome is rejected
        wait_for(lambda: len(worker._dispatcher.active) == 1)
        # The new run's lock must be extended: the job outlives several lock timeouts.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            storage.release_stale_locks(1)
            job = queue.get_job(job_id)
            assert job is not None and job.status == jobs.JobStatus.RUNNING, job
            time.sleep(0.1)
        proceed[1].set()
        wait_for(lambda: queue.get_job(job_id).status == jobs.JobStatus.COMPLETED)  # type: ignore[union-attr]
    job = queue.get_job(job_id)
    assert job is not None and job.attempt == 2


def test_hooks_fire_after_the_outcome_is_stored(queue: jobs.Queue) -> None:
    events: list[tuple[str, str, jobs.JobStatus | None]] = []

    def record(kind: str) -> object:
        def hook(job: jobs.Job, error: BaseException | None = None) -> None:
            stored = queue.get_job(job.id)
            events.append((kind, job.type, stored.status if stored else None))

        return hook

    queue.on_job_start(record("start"))
    queue.on_job_complete(record("complete"))
    queue.on_job_fail(record("fail"))
    queue.on_retry(record("retry"))

    # The wait keeps the retrying job from being claimed again before its hook reads it.
    @queue.job(retries=1, backoff=jobs.constant(0.5))
    def bad() -> None:
        raise ValueError("x")

    queue.register("good", lambda: None)
    ids = [queue.enqueue("good"), queue.enqueue("bad")]
    with queue.worker({"default": 1}, **FAST):
        wait_for(lambda: finished(queue, *ids))
        wait_for(lambda: len(events) == 6)
    assert ("complete", "good", jobs.JobStatus.COMPLETED) in events
    assert ("retry", "bad", jobs.JobStatus.RETRYING) in events
    assert ("fail", "bad", jobs.JobStatus.FAILED) in events
    assert events.index(("start", "good", jobs.JobStatus.RUNNING)) < events.index(
        ("complete", "good", jobs.JobStatus.COMPLETED)
    )


class _Forever:
    """A custom policy (the Backoff protocol) that asks for a wait no datetime can hold."""

    def delay(self, attempt: int) -> timedelta:
        return timedelta.max

    def to_json(self) -> bytes:
        return b'{"kind": "forever"}'


class _Broken:
    def delay(self, attempt: int) -> timedelta:
        raise ArithmeticError("the policy has a bug")

    def to_json(self) -> bytes:
        return b'{"kind": "broken"}'


class _HugeRetryAfter(jobs.RetryAfter):
    """A RetryAfter whose delay got past the constructor's bound."""

    def __init__(self) -> None:
        super().__init__(0, "much later")
        self.delay = timedelta.max


def test_absurd_retry_delays_never_kill_a_slot(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise RuntimeError("fails")

    def huge() -> None:
        raise _HugeRetryAfter()

    async def huge_async() -> None:
        raise _HugeRetryAfter()

    def asks_too_much() -> None:
        raise jobs.RetryAfter(1e14, "in three million years")

    queue.register("forever", fail, backoff=_Forever())
    queue.register("broken", fail, backoff=_Broken())
    queue.register("huge", huge)
    queue.register("huge-async", huge_async)
    queue.register("asks-too-much", asks_too_much)
    queue.register("ok", lambda: "fine")
    names = ["forever", "broken", "huge", "huge-async", "asks-too-much"]
    ids = {name: queue.enqueue(name, priority=10) for name in names}
    ok = queue.enqueue("ok")
    start = datetime.now(UTC)
    with caplog.at_level("WARNING", logger="durable_jobs"), queue.worker({"default": 1}, **FAST):
        # One slot: "ok" runs after the others, so that slot survived them all.
        wait_for(lambda: status(queue, ok) == "completed")
        wait_for(lambda: all(status(queue, i) != "running" for i in ids.values()))
    assert "still running" not in caplog.text  # stop() found no stuck run

    year = timedelta(days=365)
    for name in ("forever", "huge", "huge-async"):
        job = queue.get_job(ids[name])
        assert job is not None and job.status == "retrying", (name, job)
        assert job.run_at is not None
        assert start + year <= job.run_at <= datetime.now(UTC) + year, name  # clamped
    broken = queue.get_job(ids["broken"])
    assert broken is not None and broken.status == "failed"
    assert broken.last_error is not None
    assert "ArithmeticError" in broken.last_error and "failed permanently" in broken.last_error
    too_much = queue.get_job(ids["asks-too-much"])
    assert too_much is not None and too_much.status == "retrying"
    assert too_much.last_error is not None
    assert too_much.last_error.startswith("ValueError: RetryAfter delay must be at most 365 days")
