"""Workflows that wait: durable sleep and progress, with real workers on every backend.

A sleeping job is stored ``waiting``, frees its slot at once, and resumes at its
deadline (by the worker's timer, not a poll: the workers here poll every 5 s) by
replaying its checkpoints; a resume is not a retry.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs.job import utcnow
from durable_jobs.testing import FakeClock, drain
from tests.helpers import wait_for

SLOW_POLL = {"poll_interval": 5.0}  # wake-ups must not come from polling
LATE = timedelta(milliseconds=100)  # how late a resume may start after its deadline


def _status(queue: jobs.Queue, job_id: str) -> jobs.JobStatus:
    job = queue.get_job(job_id)
    assert job is not None
    return job.status


def _waiting(queue: jobs.Queue, job_id: str) -> jobs.Job | None:
    job = queue.get_job(job_id)
    return job if job is not None and job.status is jobs.JobStatus.WAITING else None


# -- the slot, the deadline ---------------------------------------------------------------


def test_a_sleep_frees_its_slot_and_resumes_within_100_ms_of_its_deadline(
    queue: jobs.Queue, events: list[jobs.Event]
) -> None:
    lateness: list[timedelta] = []
    order: list[str] = []

    @queue.job(retries=0)
    def sleeper() -> str:
        job = jobs.current_job()
        if job.wait_until is not None:  # the resumed run: its wait's stored deadline
            lateness.append(utcnow() - job.wait_until)
            order.append("resumed")
        jobs.sleep(2)
        return "rested"

    @queue.job()
    def other() -> None:
        order.append("other")

    sleeper_id = queue.enqueue(sleeper)
    with queue.worker({"default": 1}, **SLOW_POLL):
        waiting = wait_for(lambda: _waiting(queue, sleeper_id))
        assert waiting.wait_until is not None and waiting.waiting_for == "sleep"
        assert waiting.locked_by is None and waiting.attempt == 1
        # The one slot is free: another job runs while the sleeper waits.
        other_id = queue.enqueue(other)
        assert queue.result(other_id, timeout=1.5) is None
        assert _status(queue, sleeper_id) is jobs.JobStatus.WAITING
        assert queue.result(sleeper_id, timeout=10) == "rested"
    assert order == ["other", "resumed"]
    [late] = lateness
    assert timedelta(0) <= late <= LATE, late
    # The deadline the resumed run saw is the one the suspension stored and announced.
    [announced] = [e for e in events if isinstance(e, jobs.JobWaiting)]
    assert announced.job.id == sleeper_id and announced.waiting_for == "sleep"
    assert announced.until == waiting.wait_until
    assert waiting.wait_until is not None
    assert timedelta(seconds=1.9) < waiting.wait_until - waiting.created_at < timedelta(seconds=3)
    done = queue.get_job(sleeper_id)
    assert done is not None and done.status is jobs.JobStatus.COMPLETED
    assert (done.attempt, done.wait_until, done.waiting_for) == (1, None, None)


def test_a_resume_is_neither_an_attempt_nor_a_retry(
    queue: jobs.Queue, events: list[jobs.Event]
) -> None:
    attempts: list[int] = []

    @queue.job(retries=0)
    def napper() -> int:
        attempts.append(jobs.current_job().attempt)
        for _ in range(3):
            jobs.sleep(0.2)
        return len(attempts)

    job_id = queue.enqueue(napper)
    with queue.worker(**SLOW_POLL):
        # Three suspensions with no retries to spare: each resume costs nothing.
        assert queue.result(job_id, timeout=15) == 4
    assert attempts == [1, 1, 1, 1]
    job = queue.get_job(job_id)
    assert job is not None and (job.attempt, job.max_retries) == (1, 0)
    quiet = (jobs.JobEnqueued, jobs.CheckpointSaved)
    kinds = [type(e).__name__ for e in events if e.job.id == job_id and not isinstance(e, quiet)]
    assert kinds == [
        "JobStarted",
        *["JobWaiting", "JobResumed"] * 3,
        "JobCompleted",
    ]
    assert not any(isinstance(e, jobs.JobRetrying) for e in events)


def test_a_failure_after_a_resume_is_that_attempts_failure(queue: jobs.Queue) -> None:
    runs: list[tuple[int, bool]] = []

    @queue.job(retries=1, backoff=jobs.constant(0))
    def fragile() -> str:
        job = jobs.current_job()
        runs.append((job.attempt, job.wait_until is not None))
        jobs.sleep(0.2)
        if len(runs) == 2:  # the resumed run of attempt 1
            raise RuntimeError("flaky after the nap")
        return "ok"

    job_id = queue.enqueue(fragile)
    with queue.worker(**SLOW_POLL):
        assert queue.result(job_id, timeout=15) == "ok"
    # Attempt 1 (resumed once) failed, attempt 2 replayed the sleep (past: no wait).
    assert runs == [(1, False), (1, True), (2, False)]
    job = queue.get_job(job_id)
    assert job is not None and job.attempt == 2


# -- replay -------------------------------------------------------------------------------


def test_the_resumed_run_replays_checkpointed_steps_without_running_them(
    queue: jobs.Queue,
) -> None:
    ran: list[str] = []

    @queue.job()
    def charge(amount: int) -> dict[str, int]:
        ran.append("charge")
        return {"charged": amount}

    @queue.job()
    def ship(receipt: dict[str, int]) -> str:
        ran.append("ship")
        return f"shipped {receipt['charged']}"

    @queue.job()
    def order(amount: int) -> str:
        receipt = jobs.call(charge, amount)
        jobs.sleep(timedelta(milliseconds=300))
        return str(jobs.call(ship, receipt))

    job_id = queue.enqueue(order, 42)
    with queue.worker(**SLOW_POLL):
        assert queue.result(job_id, timeout=15) == "shipped 42"
    assert ran == ["charge", "ship"]


def test_a_replayed_sleep_keeps_its_first_deadline(storage: jobs.SQLStorage) -> None:
    clock = FakeClock()
    queue = jobs.Queue(storage, clock=clock)
    returned: list[int] = []

    @queue.job(retries=2, backoff=jobs.constant(0))
    def patient() -> None:
        jobs.sleep(0.5)
        returned.append(jobs.current_job().attempt)
        if len(returned) == 1:
            raise RuntimeError("once")

    job_id = queue.enqueue(patient)
    with queue.events() as stream:
        assert drain(queue).suspended == 1
        clock.advance(seconds=0.5)
        # The resumed run fails; the retry after it replays the sleep from its
        # checkpoint: its first deadline has passed, so it returns at once.
        result = drain(queue)
        waits = []
        while (event := stream.get(timeout=0)) is not None:
            waits += [event] if isinstance(event, jobs.JobWaiting) else []
    assert (result.retried, result.completed, result.suspended) == (1, 1, 0)
    assert returned == [1, 2]
    assert queue.result(job_id, timeout=0) is None
    assert len(waits) == 1


def test_a_past_sleep_until_returns_at_once(queue: jobs.Queue, events: list[jobs.Event]) -> None:
    @queue.job()
    def punctual() -> str:
        jobs.sleep_until(datetime(2000, 1, 1))  # naive: UTC
        jobs.sleep_until(utcnow() - timedelta(seconds=1))
        jobs.sleep(0)
        jobs.sleep(timedelta(0))
        return "on time"

    job_id = queue.enqueue(punctual)
    started = time.monotonic()
    with queue.worker(**SLOW_POLL):
        assert queue.result(job_id, timeout=10) == "on time"
    assert time.monotonic() - started < 3
    assert not [e for e in events if isinstance(e, jobs.JobWaiting | jobs.JobResumed)]
    # Each took a call index and was checkpointed (before completion dropped them).
    saved = [e.checkpoint for e in events if isinstance(e, jobs.CheckpointSaved)]
    assert [(cp.call_index, cp.call_type) for cp in saved] == [(i, "jobs.sleep") for i in range(4)]


def test_sleep_until_a_future_time_waits_for_it(queue: jobs.Queue) -> None:
    target = (utcnow() + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=2)))
    seen: list[datetime] = []

    @queue.job()
    def alarm() -> None:
        jobs.sleep_until(target)
        seen.append(utcnow())

    job_id = queue.enqueue(alarm)
    with queue.worker(**SLOW_POLL):
        waiting = wait_for(lambda: _waiting(queue, job_id))
        assert waiting.wait_until == target.astimezone(UTC)
        queue.result(job_id, timeout=10)
    assert target <= seen[0] <= target + LATE


def test_a_call_where_a_sleep_was_checkpointed_is_nondeterminism(queue: jobs.Queue) -> None:
    changed = threading.Event()

    @queue.job()
    def step() -> str:
        return "stepped"

    @queue.job(retries=3)
    def drifting() -> None:
        if changed.is_set():
            jobs.call(step)  # call 0 was a sleep when it was checkpointed
        else:
            jobs.sleep(0.3)

    job_id = queue.enqueue(drifting)
    with queue.worker(**SLOW_POLL):
        wait_for(lambda: _waiting(queue, job_id))
        changed.set()  # the handler changes while the job waits
        with pytest.raises(jobs.JobFailed):
            queue.result(job_id, timeout=10)
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.FAILED and job.attempt == 1
    assert job.last_error is not None
    assert job.last_error.startswith("NondeterminismError: durable call 0")
    assert "'step' on this run but was 'jobs.sleep'" in job.last_error


def test_a_sleep_where_a_call_was_checkpointed_is_nondeterminism(queue: jobs.Queue) -> None:
    @queue.job()
    def step() -> str:
        return "stepped"

    @queue.job(retries=3, backoff=jobs.constant(0))
    def drifting() -> None:
        if jobs.current_job().attempt == 1:
            jobs.call(step)
            raise RuntimeError("retry me")
        jobs.sleep(0.3)  # call 0 was 'step' on the first run

    job_id = queue.enqueue(drifting)
    with queue.worker(**SLOW_POLL), pytest.raises(jobs.JobFailed):
        queue.result(job_id, timeout=10)
    job = queue.get_job(job_id)
    assert job is not None and job.attempt == 2 and job.last_error is not None
    assert "is a sleep on this run but was 'step'" in job.last_error


# -- async handlers, steps ----------------------------------------------------------------


def test_sleep_async_in_an_async_handler(queue: jobs.Queue) -> None:
    ran: list[str] = []
    lateness: list[timedelta] = []

    @queue.job()
    async def fetch(url: str) -> str:
        ran.append(url)
        return f"<{url}>"

    @queue.job(retries=0)
    async def crawler() -> list[str]:
        job = jobs.current_job()
        if job.wait_until is not None:
            lateness.append(utcnow() - job.wait_until)
        first = await jobs.call_async(fetch, "a")
        await jobs.set_progress_async({"fetched": 1})
        await jobs.sleep_async(timedelta(milliseconds=500))
        await jobs.sleep_until_async(utcnow() - timedelta(days=1))  # past: no wait
        second = await jobs.call_async(fetch, "b")
        await jobs.set_progress_async({"fetched": 2})
        return [first, second]

    job_id = queue.enqueue(crawler)
    with queue.worker(**SLOW_POLL):
        waiting = wait_for(lambda: _waiting(queue, job_id))
        assert waiting.progress == {"fetched": 1} and waiting.attempt == 1
        assert queue.result(job_id, timeout=10) == ["<a>", "<b>"]
    assert ran == ["a", "b"]
    [late] = lateness
    assert timedelta(0) <= late <= LATE, late
    job = queue.get_job(job_id)
    assert job is not None and job.progress == {"fetched": 2} and job.attempt == 1


@pytest.mark.parametrize("handler", ["sync", "async"])
def test_a_sleep_inside_a_step_suspends_the_whole_job(queue: jobs.Queue, handler: str) -> None:
    ran: list[str] = []

    @queue.job()
    def count(name: str) -> str:
        ran.append(name)
        return name

    @queue.job()
    def nap_step() -> str:
        inner = jobs.call(count, "inner")  # call 0.0
        jobs.sleep(0.4)  # call 0.1
        return f"napped after {inner}"

    @queue.job(retries=0)
    def sync_flow() -> list[str]:
        return [jobs.call(count, "before"), jobs.call(nap_step), jobs.call(count, "after")]

    @queue.job(retries=0)
    async def async_flow() -> list[str]:
        before = await jobs.call_async(count, "before")
        napped = await jobs.call_async(nap_step)  # a sync step, run in a thread
        return [before, napped, await jobs.call_async(count, "after")]

    job_id = queue.enqueue(sync_flow if handler == "sync" else async_flow)
    with queue.worker(**SLOW_POLL):
        waiting = wait_for(lambda: _waiting(queue, job_id))
        assert waiting.waiting_for == "sleep"
        # The step raised no error and saved no checkpoint of its own: it runs again on
        # the resume, whose inner calls replay.
        cps = queue.storage.get_checkpoints(job_id)
        assert [(cp.scope, cp.call_index, cp.call_type) for cp in cps] == [
            ("", 0, "count"),
            ("1", 0, "count"),
            ("1", 1, "jobs.sleep"),
        ]
        assert queue.result(job_id, timeout=10) == ["before", "napped after inner", "after"]
    assert ran == ["before", "inner", "after"]
    job = queue.get_job(job_id)
    assert job is not None and job.attempt == 1


def test_except_exception_does_not_swallow_a_suspension(queue: jobs.Queue) -> None:
    caught: list[BaseException] = []

    @queue.job(retries=0)
    def careful() -> str:
        try:
            jobs.sleep(0.3)
        except Exception as exc:  # a suspension is no Exception
            caught.append(exc)
        return "done"

    job_id = queue.enqueue(careful)
    with queue.worker(**SLOW_POLL):
        wait_for(lambda: _waiting(queue, job_id))
        assert queue.result(job_id, timeout=10) == "done"
    assert caught == []


# -- wrong use ----------------------------------------------------------------------------


def test_outside_a_job_the_waiting_functions_raise_not_in_job() -> None:
    for call in (
        lambda: jobs.sleep(1),
        lambda: jobs.sleep_until(utcnow()),
        lambda: jobs.sleep_async(1),
        lambda: jobs.sleep_until_async(utcnow()),
        lambda: jobs.set_progress(1),
        lambda: jobs.set_progress_async(1),
    ):
        with pytest.raises(jobs.NotInJobError):
            call()


@pytest.mark.parametrize(
    ("make_call", "problem"),
    [
        (lambda: jobs.sleep(-1), "finite number of seconds >= 0"),
        (lambda: jobs.sleep(float("nan")), "finite number of seconds >= 0"),
        (lambda: jobs.sleep("soon"), "timedelta or seconds"),  # type: ignore[arg-type]
        (lambda: jobs.sleep(timedelta(seconds=-1)), "must not be negative"),
        (lambda: jobs.sleep_until("noon"), "expected a datetime"),  # type: ignore[arg-type]
    ],
)
def test_a_sleep_that_cannot_run_as_written_fails_the_job_at_once(
    queue: jobs.Queue, make_call: Any, problem: str
) -> None:
    @queue.job(retries=3)
    def confused() -> None:
        make_call()

    job_id = queue.enqueue(confused)
    with queue.worker(**SLOW_POLL), pytest.raises(jobs.JobFailed):
        queue.result(job_id, timeout=10)
    job = queue.get_job(job_id)
    assert job is not None and job.attempt == 1 and job.last_error is not None
    assert job.last_error.startswith("InvalidCallArguments: jobs.sleep")
    assert problem in job.last_error


# -- progress -----------------------------------------------------------------------------


def test_progress_is_visible_while_the_job_runs_and_waits_and_after(queue: jobs.Queue) -> None:
    go_on = threading.Event()

    @queue.job()
    def importer(total: int) -> None:
        jobs.set_progress({"done": 0, "total": total})
        go_on.wait(10)
        jobs.set_progress({"done": total // 2, "total": total})
        jobs.sleep(0.3)
        jobs.set_progress({"done": total, "total": total})

    job_id = queue.enqueue(importer, 10)
    assert queue.get_job(job_id).progress is None  # type: ignore[union-attr]
    with queue.worker(**SLOW_POLL):
        wait_for(lambda: (j := queue.get_job(job_id)) and j.progress == {"done": 0, "total": 10})
        go_on.set()
        waiting = wait_for(lambda: _waiting(queue, job_id))
        assert waiting.progress == {"done": 5, "total": 10}
        queue.result(job_id, timeout=10)
    job = queue.get_job(job_id)
    assert job is not None and job.progress == {"done": 10, "total": 10}


def test_set_progress_refuses_what_cannot_be_stored(queue: jobs.Queue) -> None:
    errors: list[BaseException] = []

    @queue.job()
    def noisy() -> None:
        for value in (object(), "x" * (queue.max_payload or 0)):
            try:
                jobs.set_progress(value)
            except (TypeError, ValueError) as exc:
                errors.append(exc)
        jobs.set_progress([1, 2])
        jobs.set_progress(None)  # clears it

    job_id = queue.enqueue(noisy)
    with queue.worker(**SLOW_POLL):
        queue.result(job_id, timeout=10)
    assert [type(e) for e in errors] == [TypeError, ValueError]
    job = queue.get_job(job_id)
    assert job is not None and job.progress is None


# -- wake-ups -----------------------------------------------------------------------------


def test_a_worker_that_did_not_store_the_wait_ends_it_on_time(
    queue: jobs.Queue, storage: jobs.SQLStorage
) -> None:
    # Stored by "another process": this worker learns the deadline from the database
    # (the waiting index) when it starts, and ends the wait then, not at a poll.
    lateness: list[timedelta] = []

    @queue.job()
    def later() -> None:
        job = jobs.current_job()
        if job.wait_until is not None:
            lateness.append(utcnow() - job.wait_until)
        jobs.sleep(1)

    job_id = queue.enqueue(later)
    [claimed] = storage.claim("default", "elsewhere", 1)
    until = utcnow() + timedelta(seconds=1.5)
    checkpoint = jobs.Checkpoint(
        job_id=job_id,
        call_index=0,
        call_type="jobs.sleep",
        result=f'{{"until": "{until.isoformat()}"}}'.encode(),
    )
    assert storage.save_checkpoint(checkpoint, worker_id="elsewhere", fence=claimed.fence)
    assert storage.suspend(
        job_id, worker_id="elsewhere", fence=claimed.fence, until=until, waiting_for="sleep"
    )
    with queue.worker(**SLOW_POLL):
        queue.result(job_id, timeout=10)
    [late] = lateness
    assert timedelta(0) <= late <= LATE, late
    job = queue.get_job(job_id)
    assert job is not None and job.attempt == 1


# -- signals ------------------------------------------------------------------------------


def _waiting_for(queue: jobs.Queue, job_id: str, what: str) -> jobs.Job | None:
    job = _waiting(queue, job_id)
    return job if job is not None and job.waiting_for == what else None


def test_a_signal_sent_before_the_wait_is_consumed_without_waiting(
    queue: jobs.Queue, events: list[jobs.Event]
) -> None:
    @queue.job(retries=0)
    def approve() -> Any:
        return jobs.wait_for_signal("approval")

    job_id = queue.enqueue(approve)
    queue.signal(job_id, "approval", {"by": "ana"})  # the job has not run yet
    with queue.worker(**SLOW_POLL):
        assert queue.result(job_id, timeout=10) == {"by": "ana"}
    assert not [e for e in events if isinstance(e, jobs.JobWaiting)]


def test_a_signal_during_the_wait_resumes_the_job_at_once(
    queue: jobs.Queue, events: list[jobs.Event]
) -> None:
    started: list[datetime] = []

    @queue.job(retries=0)
    async def approve() -> Any:
        if jobs.current_job().wait_until is not None:
            started.append(utcnow())
        decision = await jobs.wait_for_signal_async("approval")
        return {"decision": decision, "attempt": jobs.current_job().attempt}

    job_id = queue.enqueue(approve)
    with queue.worker(**SLOW_POLL):
        waiting = wait_for(lambda: _waiting_for(queue, job_id, "signal:approval"))
        assert waiting.wait_until is None  # no timeout: no deadline
        sent = utcnow()
        queue.signal(job_id, "approval", "yes")
        assert queue.result(job_id, timeout=10) == {"decision": "yes", "attempt": 1}
    [resumed_at] = started
    assert resumed_at - sent <= LATE
    kinds = [type(e).__name__ for e in events if isinstance(e, jobs.JobWaiting | jobs.JobResumed)]
    assert kinds == ["JobWaiting", "JobResumed"]


def _signal_claims(storage: jobs.SQLStorage, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The run each signal from now on claimed in its own transaction (None: none)."""
    runs: list[Any] = []
    real = storage.signal_claiming

    def spy(*args: Any) -> Any:
        found, woken, run = real(*args)
        runs.append(run)
        return found, woken, run

    monkeypatch.setattr(storage, "signal_claiming", spy)
    return runs


def _idle(worker: jobs.Worker) -> bool:
    """Whether ``worker`` has let go of every job and looks for none: a run that just
    suspended frees its slot a moment after its job is stored waiting, and a claim round
    under way holds the queue's room until it comes back empty."""
    dispatcher = worker._dispatcher
    with dispatcher.lock:
        return all(s.claimed == 0 and not s.maybe_work for s in dispatcher.queues.values())


def _approve() -> Any:
    return {"decision": jobs.wait_for_signal("approval"), "attempt": jobs.current_job().attempt}


def test_a_signal_hands_the_resume_to_a_free_worker_of_this_process(
    queue: jobs.Queue,
    storage: jobs.SQLStorage,
    monkeypatch: pytest.MonkeyPatch,
    events: list[jobs.Event],
) -> None:
    queue.register("approve", _approve, retries=0)
    job_id = queue.enqueue("approve")
    runs = _signal_claims(storage, monkeypatch)
    # No poll at all while the test runs: a poll's claim round under way when the
    # signal comes holds the queue's room, and the resume then (rightly) waits for an
    # ordinary claim; with 5 s polls that happened once on a loaded machine.
    with queue.worker(poll_interval=600.0) as worker:
        # Reported after the suspension is stored.
        wait_for(lambda: any(isinstance(e, jobs.JobWaiting) for e in events) and _idle(worker))
        queue.signal(job_id, "approval", "yes")
        [run] = runs  # claimed with the wake-up, for this worker: no claim, no poll
        assert run is not None and (run.id, run.locked_by) == (job_id, worker.id)
        assert queue.result(job_id, timeout=10) == {"decision": "yes", "attempt": 1}


def test_a_signal_claims_no_resume_in_a_paused_queue(
    queue: jobs.Queue, storage: jobs.SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue.register("approve", _approve, retries=0)
    job_id = queue.enqueue("approve")
    runs = _signal_claims(storage, monkeypatch)
    with queue.worker(**SLOW_POLL):
        wait_for(lambda: _waiting_for(queue, job_id, "signal:approval"))
        queue.pause_queue("default")
        queue.signal(job_id, "approval", "yes")
        assert runs == [None]
        assert _status(queue, job_id) is jobs.JobStatus.PENDING  # due, held by the pause
        queue.resume_queue("default")
        assert queue.result(job_id, timeout=10) == {"decision": "yes", "attempt": 1}


def test_a_signal_leaves_the_resume_of_a_capped_type_to_the_claims(
    queue: jobs.Queue, storage: jobs.SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue.register("approve", _approve, retries=0, concurrency=1)
    job_id = queue.enqueue("approve")
    runs = _signal_claims(storage, monkeypatch)
    with queue.worker(**SLOW_POLL):
        wait_for(lambda: _waiting_for(queue, job_id, "signal:approval"))
        queue.signal(job_id, "approval", "yes")
        assert runs == [None]  # only a claim counts a capped type's runs
        assert queue.result(job_id, timeout=10) == {"decision": "yes", "attempt": 1}


def test_a_signal_claims_no_resume_for_a_busy_worker(
    queue: jobs.Queue, storage: jobs.SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    @queue.job()
    def busy() -> None:
        assert release.wait(10)

    queue.register("approve", _approve, retries=0)
    job_id = queue.enqueue("approve")
    runs = _signal_claims(storage, monkeypatch)
    with queue.worker({"default": 1}, **SLOW_POLL):
        wait_for(lambda: _waiting_for(queue, job_id, "signal:approval"))
        busy_id = queue.enqueue(busy)
        wait_for(lambda: _status(queue, busy_id) is jobs.JobStatus.RUNNING)
        queue.signal(job_id, "approval", "yes")
        assert runs == [None]
        assert _status(queue, job_id) is jobs.JobStatus.PENDING
        release.set()
        assert queue.result(job_id, timeout=10) == {"decision": "yes", "attempt": 1}


def test_two_signals_are_consumed_in_order_and_a_replay_consumes_nothing_twice(
    queue: jobs.Queue,
) -> None:
    ran: list[str] = []

    @queue.job()
    def note(text: str) -> None:
        ran.append(text)

    @queue.job(retries=0)
    def collect() -> list[Any]:
        first = jobs.wait_for_signal("item")
        jobs.call(note, f"got {first}")
        jobs.sleep(0.2)  # suspends: the resume replays the first wait
        second = jobs.wait_for_signal("item")
        third = jobs.wait_for_signal("item")  # waits: nothing left
        return [first, second, third]

    job_id = queue.enqueue(collect)
    queue.signal(job_id, "item", 1)
    queue.signal(job_id, "item", 2)
    with queue.worker(**SLOW_POLL):
        wait_for(lambda: _waiting_for(queue, job_id, "signal:item"))
        queue.signal(job_id, "item", 3)
        assert queue.result(job_id, timeout=10) == [1, 2, 3]
    assert ran == ["got 1"]


def test_a_signal_wait_times_out_at_its_deadline(storage: jobs.SQLStorage) -> None:
    # How promptly a worker ends a wait at its deadline: see the sleep tests above.
    clock = FakeClock()
    queue = jobs.Queue(storage, clock=clock)

    @queue.job(retries=0)
    def impatient() -> str:
        try:
            jobs.wait_for_signal("reply", timeout=timedelta(seconds=0.5))
        except jobs.SignalTimeout:
            return "gave up"
        return "replied"

    job_id = queue.enqueue(impatient)
    drain(queue)
    waiting = _waiting_for(queue, job_id, "signal:reply")
    assert waiting is not None and waiting.wait_until == clock.now() + timedelta(seconds=0.5)
    clock.advance(seconds=0.499)
    assert drain(queue).runs == 0
    clock.advance(seconds=0.001)
    assert drain(queue).completed == 1
    assert queue.result(job_id, timeout=0) == "gave up"
    # A signal sent after the timeout stays for a later wait: it is never consumed here.
    queue.signal(job_id, "reply", "too late")


def test_an_uncaught_signal_timeout_fails_the_job_without_retries(queue: jobs.Queue) -> None:
    @queue.job(retries=3)
    def impatient() -> None:
        jobs.wait_for_signal("reply", timeout=0)

    job_id = queue.enqueue(impatient)
    with queue.worker(**SLOW_POLL), pytest.raises(jobs.JobFailed):
        queue.result(job_id, timeout=10)
    job = queue.get_job(job_id)
    assert job is not None and job.attempt == 1 and job.last_error is not None
    assert job.last_error.startswith("SignalTimeout: no signal 'reply'")


def test_a_signal_that_comes_before_the_timeout_wins(queue: jobs.Queue) -> None:
    @queue.job(retries=0)
    def patient() -> Any:
        return jobs.wait_for_signal("reply", timeout=timedelta(minutes=5))

    job_id = queue.enqueue(patient)
    with queue.worker(**SLOW_POLL):
        waiting = wait_for(lambda: _waiting_for(queue, job_id, "signal:reply"))
        assert waiting.wait_until is not None
        assert waiting.wait_until - utcnow() > timedelta(minutes=4)
        queue.signal(job_id, "reply", [1, 2])
        assert queue.result(job_id, timeout=10) == [1, 2]


def test_peek_and_drain_never_suspend(queue: jobs.Queue) -> None:
    @queue.job(retries=0)
    def inbox() -> dict[str, Any]:
        empty = jobs.peek_signal("mail", default="none")
        jobs.call(mark)  # lets the test send signals in between
        seen = jobs.peek_signal("mail")
        everything = jobs.drain_signals("mail")
        after = jobs.drain_signals("mail")
        jobs.sleep(0.2)  # the resume replays every observation above
        return {"empty": empty, "seen": seen, "all": everything, "after": after}

    marked = threading.Event()
    proceed = threading.Event()

    @queue.job()
    def mark() -> None:
        marked.set()
        proceed.wait(10)

    job_id = queue.enqueue(inbox)
    with queue.worker(**SLOW_POLL):
        marked.wait(10)
        for n in range(3):
            queue.signal(job_id, "mail", {"n": n})
        proceed.set()
        wait_for(lambda: _waiting(queue, job_id))
        queue.signal(job_id, "mail", {"n": 3})  # after the drain: left for later
        result = queue.result(job_id, timeout=10)
    assert result == {
        "empty": "none",
        "seen": {"n": 0},
        "all": [{"n": 0}, {"n": 1}, {"n": 2}],
        "after": [],
    }


def test_signal_refuses_unknown_jobs_and_bad_names(queue: jobs.Queue) -> None:
    job_id = queue.enqueue("anything")
    with pytest.raises(jobs.JobNotFound):
        queue.signal("no-such-job", "go")
    with pytest.raises(LookupError):
        queue.signal("no-such-job", "go")
    for name in ("", "_internal", 7, "x" * 201):
        with pytest.raises(ValueError, match="signal name"):
            queue.signal(job_id, name)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        queue.signal(job_id, "go", object())
    with pytest.raises(ValueError, match="limit"):
        queue.signal(job_id, "go", "x" * (queue.max_payload or 0))


def test_a_signal_to_a_finished_job_is_kept_and_never_consumed(
    queue: jobs.Queue, storage: jobs.SQLStorage
) -> None:
    @queue.job()
    def quick() -> str:
        return "done"

    job_id = queue.enqueue(quick)
    with queue.worker(**SLOW_POLL):
        queue.result(job_id, timeout=10)
    queue.signal(job_id, "late", {"x": 1})
    with storage.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT name, payload FROM sdj_signals WHERE job_id = %s"
            if storage.dialect.name != "sqlite"
            else "SELECT name, payload FROM sdj_signals WHERE job_id = ?",
            (job_id,),
        ).fetchall()
    assert [tuple(r) for r in rows] == [("late", '{"x":1}')]
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.COMPLETED


def test_a_wait_for_another_signal_at_the_same_call_is_nondeterminism(queue: jobs.Queue) -> None:
    changed = threading.Event()

    @queue.job(retries=3)
    def drifting() -> None:
        jobs.wait_for_signal("b" if changed.is_set() else "a")
        jobs.sleep(0.2)

    job_id = queue.enqueue(drifting)
    queue.signal(job_id, "a", 1)
    queue.signal(job_id, "b", 2)
    with queue.worker(**SLOW_POLL):
        wait_for(lambda: _waiting_for(queue, job_id, "sleep"))
        changed.set()
        with pytest.raises(jobs.JobFailed):
            queue.result(job_id, timeout=10)
    job = queue.get_job(job_id)
    assert job is not None and job.last_error is not None
    assert "observes signal 'b' on this run but observed 'a'" in job.last_error


@pytest.mark.parametrize(
    ("make_call", "problem"),
    [
        (lambda: jobs.wait_for_signal(""), "non-empty string"),
        (lambda: jobs.wait_for_signal("_mine"), "reserved"),
        (lambda: jobs.wait_for_signal("go", timeout=-1), "timeout must be a finite number"),
        (lambda: jobs.peek_signal(None), "non-empty string"),  # type: ignore[arg-type]
        (lambda: jobs.drain_signals("_x"), "reserved"),
    ],
)
def test_a_signal_observation_that_cannot_run_as_written_fails_the_job_at_once(
    queue: jobs.Queue, make_call: Any, problem: str
) -> None:
    @queue.job(retries=3)
    def confused() -> None:
        make_call()

    job_id = queue.enqueue(confused)
    with queue.worker(**SLOW_POLL), pytest.raises(jobs.JobFailed):
        queue.result(job_id, timeout=10)
    job = queue.get_job(job_id)
    assert job is not None and job.attempt == 1 and job.last_error is not None
    assert job.last_error.startswith("InvalidCallArguments: jobs.")
    assert problem in job.last_error


def test_signal_observations_outside_a_job_raise_not_in_job() -> None:
    for call in (
        lambda: jobs.wait_for_signal("x"),
        lambda: jobs.wait_for_signal_async("x"),
        lambda: jobs.peek_signal("x"),
        lambda: jobs.peek_signal_async("x"),
        lambda: jobs.drain_signals("x"),
        lambda: jobs.drain_signals_async("x"),
    ):
        with pytest.raises(jobs.NotInJobError):
            call()
