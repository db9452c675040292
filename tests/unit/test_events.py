"""Hooks, event types and the event stream, without workers or a database."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from durable_jobs.events import (
    CheckpointSaved,
    Event,
    EventBus,
    Hooks,
    JobCompleted,
    JobEnqueued,
    JobFailed,
    JobRetrying,
    JobStarted,
)
from durable_jobs.job import Checkpoint, Job, JobStatus

WAIT = 5.0  # generous bound for conditions that should hold almost at once
HOOK_THREAD = "durable_jobs-hooks"


@pytest.fixture
def job() -> Job:
    return Job(type="send-email", id="job-1")


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    hooks = Hooks()
    yield hooks
    hooks.close()


def started(n: int) -> list[Event]:
    return [JobStarted(Job(type="t", id=f"job-{i}")) for i in range(n)]


def hook_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == HOOK_THREAD]


# --- Events -------------------------------------------------------------------------------


def describe(event: Event) -> str:
    match event:
        case JobEnqueued(job=job):
            return f"enqueued {job.id}"
        case JobStarted(job=job):
            return f"started {job.id}"
        case JobCompleted(job=job, duration=d):
            return f"completed {job.id} in {d.total_seconds()}"
        case JobFailed(job=job, error=err):
            return f"failed {job.id}: {err}"
        case JobRetrying(job=job, attempt=n, error=err, next_run_at=t):
            return f"retrying {job.id} after run {n}: {err} at {t.year}"
        case CheckpointSaved(job=job, checkpoint=cp):
            return f"checkpoint {job.id} #{cp.call_index}"
    return "unknown"


def test_every_event_matches_by_keyword(job: Job) -> None:
    error = ValueError("boom")
    when = datetime(2030, 1, 1, tzinfo=UTC)
    events = [
        JobEnqueued(job),
        JobStarted(job),
        JobCompleted(job, timedelta(seconds=2)),
        JobFailed(job, error),
        JobRetrying(job, 1, error, when),
        CheckpointSaved(job, Checkpoint(call_index=3)),
    ]
    assert [describe(event) for event in events] == [
        "enqueued job-1",
        "started job-1",
        "completed job-1 in 2.0",
        "failed job-1: boom",
        "retrying job-1 after run 1: boom at 2030",
        "checkpoint job-1 #3",
    ]


def test_events_match_positionally_with_job_first(job: Job) -> None:
    match JobCompleted(job, timedelta(seconds=1)):
        case JobCompleted(matched, duration):
            assert matched is job
            assert duration == timedelta(seconds=1)


def test_events_are_frozen(job: Job) -> None:
    event = JobFailed(job, RuntimeError("x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.job = job  # type: ignore[misc]


def test_job_failed_is_also_the_exception_a_waiter_gets(job: Job) -> None:
    with pytest.raises(JobFailed) as caught:
        raise JobFailed(job, RuntimeError("boom"))
    assert str(caught.value) == f"job {job.id} ({job.type}) failed: boom"
    assert caught.value.error.args == ("boom",)


def test_event_time_defaults_to_now_utc(job: Job) -> None:
    before = datetime.now(UTC)
    event = JobStarted(job)
    assert event.at.tzinfo is not None
    assert before <= event.at <= datetime.now(UTC)
    assert JobStarted(job, at=before).at == before


# --- Hooks --------------------------------------------------------------------------------


def test_hooks_register_as_decorator_and_call_and_run_in_order(hooks: Hooks, job: Job) -> None:
    calls: list[str] = []

    @hooks.on_job_start
    def first(j: Job) -> None:
        calls.append(f"first {j.id}")

    def second(j: Job) -> None:
        calls.append(f"second {j.id}")

    assert hooks.on_job_start(second) is second
    assert first.__name__ == "first"  # the decorator returns the function itself
    hooks.fire_start(job)
    assert calls == ["first job-1", "second job-1"]


def test_each_kind_fires_only_its_own_hooks_with_its_arguments(hooks: Hooks, job: Job) -> None:
    calls: list[tuple[str, str, str]] = []
    error = KeyError("k")
    hooks.on_job_start(lambda j: calls.append(("start", j.id, "")))
    hooks.on_job_complete(lambda j: calls.append(("complete", j.id, "")))
    hooks.on_job_fail(lambda j, e: calls.append(("fail", j.id, repr(e))))
    hooks.on_retry(lambda j, e: calls.append(("retry", j.id, repr(e))))

    hooks.fire_retry(job, error)
    hooks.fire_complete(job)
    hooks.fire_fail(job, error)
    hooks.fire_start(job)

    assert calls == [
        ("retry", "job-1", "KeyError('k')"),
        ("complete", "job-1", ""),
        ("fail", "job-1", "KeyError('k')"),
        ("start", "job-1", ""),
    ]


def test_firing_without_hooks_is_a_no_op(hooks: Hooks, job: Job) -> None:
    before = len(hook_threads())
    hooks.fire_start(job)
    hooks.fire_complete(job)
    hooks.fire_fail(job, ValueError())
    hooks.fire_retry(job, ValueError())
    assert len(hook_threads()) == before


def test_raising_hook_is_logged_with_job_id_and_others_still_run(
    hooks: Hooks, job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    @hooks.on_job_fail
    def broken(j: Job, e: BaseException) -> None:
        raise RuntimeError("hook bug")

    hooks.on_job_fail(lambda j, e: ran.append(j.id))

    with caplog.at_level(logging.ERROR, logger="durable_jobs"):
        hooks.fire_fail(job, ValueError("job error"))

    assert ran == ["job-1"]
    [record] = caplog.records
    assert record.name == "durable_jobs"
    assert record.job_id == "job-1"  # type: ignore[attr-defined]
    assert "broken" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "hook bug"


def test_async_hook_runs_to_completion_before_fire_returns(hooks: Hooks, job: Job) -> None:
    seen: list[tuple[str, str]] = []

    @hooks.on_retry
    async def record(j: Job, e: BaseException) -> None:
        await asyncio.sleep(0)
        seen.append((j.id, str(e)))

    hooks.fire_retry(job, ValueError("again"))
    assert seen == [("job-1", "again")]


def test_async_hook_fired_from_inside_a_running_loop(hooks: Hooks, job: Job) -> None:
    seen: list[str] = []

    @hooks.on_job_complete
    async def record(j: Job) -> None:
        seen.append(j.id)

    async def main() -> None:
        hooks.fire_complete(job)

    asyncio.run(main())
    assert seen == ["job-1"]


def test_raising_async_hook_is_logged(
    hooks: Hooks, job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    @hooks.on_job_complete
    async def broken(j: Job) -> None:
        raise RuntimeError("async hook bug")

    with caplog.at_level(logging.ERROR, logger="durable_jobs"):
        hooks.fire_complete(job)

    [record] = caplog.records
    assert record.job_id == "job-1"  # type: ignore[attr-defined]
    assert record.exc_info is not None and str(record.exc_info[1]) == "async hook bug"


def test_async_hook_timeout_is_logged_cancels_the_hook_and_bounds_the_caller(
    job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = Hooks(async_timeout=0.05)
    cancelled = threading.Event()
    after: list[str] = []

    @hooks.on_job_start
    async def stuck(j: Job) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    hooks.on_job_start(lambda j: after.append(j.id))
    try:
        with caplog.at_level(logging.ERROR, logger="durable_jobs"):
            began = time.monotonic()
            hooks.fire_start(job)
            elapsed = time.monotonic() - began
        assert elapsed < WAIT
        assert after == ["job-1"]
        assert cancelled.wait(WAIT)
        [record] = caplog.records
        assert "timed out" in record.getMessage()
        assert record.job_id == "job-1"  # type: ignore[attr-defined]
    finally:
        hooks.close()


def test_close_stops_the_async_thread_and_a_later_async_hook_restarts_it(
    hooks: Hooks, job: Job
) -> None:
    runs: list[str] = []

    @hooks.on_job_start
    async def record(j: Job) -> None:
        runs.append(j.id)

    before = len(hook_threads())
    hooks.fire_start(job)
    assert len(hook_threads()) == before + 1
    hooks.close()
    hooks.close()
    assert len(hook_threads()) == before
    hooks.fire_start(job)
    assert runs == ["job-1", "job-1"]


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_async_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="async_timeout"):
        Hooks(async_timeout=timeout)


# --- Event bus and streams ----------------------------------------------------------------


def test_publish_without_subscribers_is_fine() -> None:
    bus = EventBus()
    for event in started(3):
        bus.publish(event)


def test_each_subscriber_receives_every_event_published_after_it_subscribed() -> None:
    bus = EventBus()
    early, late = started(1), started(2)
    bus.publish(early[0])
    first, second = bus.subscribe(), bus.subscribe()
    for event in late:
        bus.publish(event)
    for stream in (first, second):
        assert [stream.get(timeout=0), stream.get(timeout=0)] == late
        assert len(stream) == 0


def test_full_buffer_drops_oldest_and_counts_without_blocking_publish() -> None:
    bus = EventBus()
    stream = bus.subscribe(maxsize=10)
    events = started(10_000)
    for event in events:
        bus.publish(event)
    assert stream.dropped == 9_990
    assert len(stream) == 10
    assert [stream.get(timeout=0) for _ in range(10)] == events[-10:]


def test_subscribers_get_a_snapshot_of_the_job_as_it_was_when_published(job: Job) -> None:
    bus = EventBus()
    stream = bus.subscribe()
    bus.publish(JobStarted(job))
    job.status = JobStatus.COMPLETED  # the worker goes on updating its own Job
    event = stream.get(timeout=0)
    assert event is not None and event.job.status == JobStatus.PENDING


@pytest.mark.parametrize("maxsize", [0, -1, 1.5, True, "10"])
def test_maxsize_must_be_a_positive_int(maxsize: object) -> None:
    with pytest.raises(ValueError, match="maxsize"):
        EventBus().subscribe(maxsize)  # type: ignore[arg-type]


def test_get_returns_none_on_timeout_and_the_event_when_there_is_one() -> None:
    bus = EventBus()
    stream = bus.subscribe()
    assert stream.get(timeout=0.01) is None
    [event] = started(1)
    bus.publish(event)
    assert stream.get(timeout=0) == event


def test_get_waits_for_an_event_published_from_another_thread() -> None:
    bus = EventBus()
    stream = bus.subscribe()
    [event] = started(1)
    publisher = threading.Thread(target=bus.publish, args=(event,))
    publisher.start()
    assert stream.get(timeout=WAIT) == event
    publisher.join(WAIT)


def test_sync_iteration_ends_when_closed_from_another_thread() -> None:
    bus = EventBus()
    stream = bus.subscribe()
    events = started(3)
    got: list[Event] = []
    received_all = threading.Event()

    def consume() -> None:
        for event in stream:
            got.append(event)
            if len(got) == len(events):
                received_all.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    for event in events:
        bus.publish(event)
    assert received_all.wait(WAIT)
    stream.close()
    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert got == events


def test_async_iteration_yields_the_loop_gets_cross_thread_events_and_ends_on_close() -> None:
    bus = EventBus()
    stream = bus.subscribe()
    events = started(3)
    loop_free = threading.Event()
    received_all = threading.Event()
    publisher_saw_free_loop: list[bool] = []

    def publish_then_close() -> None:
        # loop_free is set by a task that runs only if the waiting consumer yields the loop.
        publisher_saw_free_loop.append(loop_free.wait(WAIT))
        for event in events:
            bus.publish(event)
        received_all.wait(WAIT)
        stream.close()

    async def consume() -> list[Event]:
        got: list[Event] = []
        async for event in stream:
            got.append(event)
            if len(got) == len(events):
                received_all.set()
        return got

    async def main() -> list[Event]:
        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0)  # the consumer is now parked on an empty stream
        loop_free.set()
        return await asyncio.wait_for(consumer, WAIT)

    publisher = threading.Thread(target=publish_then_close)
    publisher.start()
    got = asyncio.run(main())
    publisher.join(WAIT)
    assert publisher_saw_free_loop == [True]
    assert got == events


def test_cancelled_async_consumer_leaves_no_waiter_behind() -> None:
    bus = EventBus()
    stream = bus.subscribe()

    async def wait_then_cancel() -> None:
        consumer = asyncio.create_task(anext(stream))
        await asyncio.sleep(0)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer

    asyncio.run(wait_then_cancel())
    [event] = started(1)
    bus.publish(event)  # would target the closed loop if the waiter lingered
    assert stream.get(timeout=0) == event


def test_context_manager_closes_and_unsubscribes() -> None:
    bus = EventBus()
    with bus.subscribe() as stream:
        assert not stream.closed
    assert stream.closed
    bus.publish(started(1)[0])
    assert len(stream) == 0
    assert stream.dropped == 0
    assert stream.get() is None
    assert list(stream) == []


def test_close_is_idempotent_thread_safe_and_discards_the_buffer() -> None:
    bus = EventBus()
    stream = bus.subscribe()
    bus.publish(started(1)[0])
    closers = [threading.Thread(target=stream.close) for _ in range(8)]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(WAIT)
    stream.close()
    assert len(stream) == 0
    assert stream.get(timeout=None) is None


def test_bus_close_ends_every_subscription() -> None:
    bus = EventBus()
    streams = [bus.subscribe(), bus.subscribe()]
    bus.close()
    assert all(stream.closed for stream in streams)
    fresh = bus.subscribe()
    bus.publish(started(1)[0])
    assert len(fresh) == 1
