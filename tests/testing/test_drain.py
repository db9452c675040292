"""``drain`` with a ``FakeClock``: every time-dependent feature, on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import durable_jobs as jobs
from durable_jobs.testing import FakeClock, drain

START = datetime(2026, 3, 28, 12, tzinfo=UTC)
PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def queue(db_url: str, clock: FakeClock) -> Iterator[jobs.Queue]:
    """A queue on the backend under test that reads the fake clock."""
    q = jobs.Queue(db_url, clock=clock)
    yield q
    q.storage.close()


def test_delay_and_at_wait_for_the_clock(queue: jobs.Queue, clock: FakeClock) -> None:
    ran: list[str] = []
    queue.register("remind", ran.append)
    queue.enqueue("remind", "delay", delay=timedelta(days=1))
    queue.enqueue("remind", "at", at=START + timedelta(days=2))
    assert drain(queue).completed == 0
    clock.advance(days=1)
    assert drain(queue).completed == 1
    assert ran == ["delay"]
    clock.advance(hours=23, minutes=59)
    assert drain(queue).completed == 0
    clock.advance(minutes=1)
    assert drain(queue).completed == 1
    assert ran == ["delay", "at"]


def test_exponential_backoff_completes_on_the_fourth_try(
    queue: jobs.Queue, clock: FakeClock
) -> None:
    attempts: list[int] = []

    @queue.job(retries=3, backoff=jobs.exponential(base=10, factor=2, jitter=0))
    def flaky() -> str:
        attempts.append(jobs.current_job().attempt)
        if len(attempts) < 4:
            raise RuntimeError(f"try {len(attempts)}")
        return "done"

    job_id = queue.enqueue(flaky)
    assert drain(queue).retried == 1
    for wait in (10, 20, 40):  # the backoff of attempts 1, 2 and 3
        clock.advance(seconds=wait - 1)
        assert drain(queue).runs == 0
        clock.advance(seconds=1)
        drain(queue)
    assert attempts == [1, 2, 3, 4]
    assert queue.result(job_id, timeout=0) == "done"


def test_sleep_of_seven_days_resumes_after_advance(queue: jobs.Queue, clock: FakeClock) -> None:
    @queue.job()
    def weekly_digest() -> str:
        jobs.sleep(timedelta(days=7))
        return jobs.current_job().status.value

    job_id = queue.enqueue(weekly_digest)
    first = drain(queue)
    assert (first.suspended, first.waiting) == (1, 1)
    clock.advance(days=7, seconds=-1)
    assert drain(queue).runs == 0
    clock.advance(seconds=1)
    result = drain(queue)
    assert (result.completed, result.waiting) == (1, 0)
    job = queue.get_job(job_id)
    assert job is not None and job.attempt == 1  # a resume is not a retry


def test_wait_for_signal_times_out_after_advance(queue: jobs.Queue, clock: FakeClock) -> None:
    @queue.job()
    def approval() -> str:
        try:
            return str(jobs.wait_for_signal("approve", timeout=timedelta(days=2)))
        except jobs.SignalTimeout:
            return "timed out"

    late = queue.enqueue(approval)
    signalled = queue.enqueue(approval)
    assert drain(queue).waiting == 2
    clock.advance(days=1)
    queue.signal(signalled, "approve", "ana")
    assert drain(queue).completed == 1
    clock.advance(days=1)
    assert drain(queue).completed == 1
    assert queue.result(signalled, timeout=0) == "ana"
    assert queue.result(late, timeout=0) == "timed out"


def test_an_abandoned_claim_is_taken_back_after_the_lock_timeout(
    queue: jobs.Queue, clock: FakeClock
) -> None:
    queue.register("work", lambda: "done", backoff=jobs.constant(5))
    job_id = queue.enqueue("work")
    [claimed] = queue.storage.claim("default", "dead-worker", 1, lock_timeout=30)
    assert claimed.lock_expires_at == START + timedelta(seconds=30)  # the fake clock's
    clock.advance(seconds=29)
    assert drain(queue).runs == 0
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.RUNNING
    clock.advance(seconds=2)
    assert drain(queue).runs == 0  # taken back, to retry after its backoff
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.RETRYING
    assert job.run_at == START + timedelta(seconds=31 + 5)
    clock.advance(seconds=5)
    assert drain(queue).completed == 1


def test_rate_limit_tokens_refill_with_the_clock(queue: jobs.Queue, clock: FakeClock) -> None:
    ran: list[int] = []
    queue.register("call-api", ran.append, rate_limit="2/m")
    for n in range(5):
        queue.enqueue("call-api", n)
    assert drain(queue).completed == 2
    clock.advance(seconds=30)
    assert drain(queue).completed == 1
    clock.advance(seconds=60)
    assert drain(queue).completed == 2
    assert ran == [0, 1, 2, 3, 4]


def test_a_daily_schedule_keeps_paris_time_over_the_dst_switch(
    queue: jobs.Queue, clock: FakeClock
) -> None:
    clock.set(datetime(2026, 3, 27, tzinfo=UTC))
    fired: list[datetime] = []

    @queue.job()
    def report() -> None:
        run_at = jobs.current_job().run_at
        assert run_at is not None
        fired.append(run_at)

    queue.schedule("report", jobs.daily(2, 30, tz="Europe/Paris"))
    drain(queue)  # the scheduler starts, as a worker's would
    for _ in range(16):
        clock.advance(hours=6)
        drain(queue)
    local = [f.astimezone(PARIS).strftime("%m-%d %H:%M %Z") for f in fired]
    # 02:30 does not exist on the 29th: it fires when the gap ends.
    assert local == ["03-27 02:30 CET", "03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"]


def test_an_hourly_schedule_skips_the_missing_paris_hour(
    queue: jobs.Queue, clock: FakeClock
) -> None:
    clock.set(datetime(2026, 3, 28, 22, 30, tzinfo=UTC))  # 23:30 in Paris
    fired: list[datetime] = []
    queue.register("tick", lambda: fired.append(jobs.current_job().run_at))
    queue.schedule("tick", jobs.cron("0 * * * *", tz="Europe/Paris"))
    drain(queue)
    clock.advance(hours=24)
    assert drain(queue).scheduled == 24
    hours = [f.astimezone(PARIS).hour for f in fired]
    assert hours == [0, 1, *range(3, 24), 0]


def test_hooks_and_events_see_what_a_worker_reports(queue: jobs.Queue) -> None:
    completed: list[str] = []
    queue.register("ok", lambda: None)

    @queue.job()
    async def parent() -> int:
        await jobs.spawn_async("ok")
        return 1

    queue.on_job_complete(lambda job: completed.append(job.type))
    with queue.events() as stream:
        queue.enqueue(parent)
        assert drain(queue).completed == 2
        seen = []
        while (event := stream.get(timeout=0)) is not None:
            seen.append(type(event).__name__)
    assert completed == ["parent", "ok"]
    kinds = [k for k in seen if k in {"JobEnqueued", "JobStarted", "JobCompleted"}]
    assert kinds == [
        "JobEnqueued",
        "JobStarted",
        "JobEnqueued",
        "JobCompleted",
        "JobStarted",
        "JobCompleted",
    ]


def test_fan_out_resumes_the_parent_in_the_same_drain(queue: jobs.Queue) -> None:
    queue.register("double", lambda n: n * 2)

    @queue.job()
    def total(ns: list[int]) -> int:
        results = jobs.fan_out([jobs.sub("double", n) for n in ns])
        return sum(r.value for r in results)

    job_id = queue.enqueue(total, [1, 2, 3])
    result = drain(queue)
    assert (result.completed, result.suspended, result.waiting) == (4, 1, 0)
    assert queue.result(job_id, timeout=0) == 12


def test_unknown_types_fail_and_cancelled_runs_count(queue: jobs.Queue) -> None:
    queue.enqueue("nobody-handles-this")
    holder: dict[str, str] = {}

    @queue.job()
    def cancel_myself() -> None:
        queue.cancel(holder["id"])

    holder["id"] = queue.enqueue(cancel_myself)
    result = drain(queue)
    assert (result.failed, result.cancelled) == (1, 1)


def test_max_runs_stops_work_that_never_ends(queue: jobs.Queue) -> None:
    @queue.job()
    def again() -> None:
        queue.enqueue(again)

    queue.enqueue(again)
    with pytest.raises(RuntimeError, match="still due"):
        drain(queue, max_runs=5)
