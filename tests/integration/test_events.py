"""Hooks and the event stream through a real worker, on every backend."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

import durable_jobs as jobs
from tests.helpers import wait_for

FAST = {"poll_interval": 0.05, "lock_timeout": 5}


def drain(stream: jobs.EventStream) -> list[jobs.Event]:
    """Everything buffered in ``stream`` now, without waiting."""
    events = []
    while (event := stream.get(timeout=0)) is not None:
        events.append(event)
    return events


def collect_until(
    stream: jobs.EventStream, done: type[jobs.Event], count: int, timeout: float = 15
) -> list[jobs.Event]:
    """Read ``stream`` until ``count`` events of type ``done`` have arrived."""
    events: list[jobs.Event] = []

    def more() -> bool:
        events.extend(drain(stream))
        return sum(isinstance(e, done) for e in events) >= count

    wait_for(more, timeout)
    return events


def terminal(queue: jobs.Queue, job_id: str) -> bool:
    job = queue.get_job(job_id)
    return job is not None and job.status.is_terminal


def kinds_of(events: list[jobs.Event], job_id: str) -> list[str]:
    return [type(e).__name__ for e in events if e.job.id == job_id]


def test_events_and_hooks_of_completed_jobs_in_order(queue: jobs.Queue) -> None:
    hooked: list[tuple[str, str, jobs.JobStatus | None]] = []

    def hook(kind: str) -> object:
        def record(job: jobs.Job) -> None:
            stored = queue.get_job(job.id)
            hooked.append((kind, job.id, stored.status if stored else None))

        return record

    queue.on_job_start(hook("start"))
    queue.on_job_complete(hook("complete"))
    queue.register("t", lambda n: n * 2)
    with queue.events() as stream:
        ids = [queue.enqueue("t", n) for n in range(3)]
        enqueued = drain(stream)
        assert [e.job.id for e in enqueued if isinstance(e, jobs.JobEnqueued)] == ids
        with queue.worker({"default": 2}, **FAST):
            events = collect_until(stream, jobs.JobCompleted, 3)
            wait_for(lambda: len(hooked) == 6)
    assert stream.closed and not queue.bus.has_subscribers
    for job_id in ids:
        assert kinds_of(events, job_id) == ["JobStarted", "JobCompleted"]
        assert [k for k, i, _ in hooked if i == job_id] == ["start", "complete"]
        # The outcome is committed before its hook runs.
        assert ("complete", job_id, jobs.JobStatus.COMPLETED) in hooked
    for event in events:
        match event:
            case jobs.JobStarted(job=job):
                assert job.status == jobs.JobStatus.RUNNING and job.attempt == 1
            case jobs.JobCompleted(job=job, duration=duration):
                assert isinstance(duration, timedelta) and duration >= timedelta(0)
                assert job.status == jobs.JobStatus.COMPLETED
                assert job.result == str(int(job.args) * 2).encode()
            case _:
                pytest.fail(f"unexpected event {event!r}")
        assert event.at.tzinfo is UTC


def test_retrying_then_failed_events_and_hooks(queue: jobs.Queue) -> None:
    errors: list[tuple[str, BaseException, jobs.JobStatus | None]] = []

    def hook(kind: str) -> object:
        def record(job: jobs.Job, error: BaseException) -> None:
            stored = queue.get_job(job.id)
            errors.append((kind, error, stored.status if stored else None))

        return record

    queue.on_retry(hook("retry"))
    queue.on_job_fail(hook("fail"))

    # The retry hook reads the stored job: the backoff keeps the retry from starting
    # (and changing the status) before it does, even on a loaded machine.
    @queue.job(retries=1, backoff=jobs.constant(1.0))
    def flaky() -> None:
        raise ValueError(f"run {jobs.current_job().attempt}")

    @queue.job(retries=3)
    def hopeless() -> None:
        raise jobs.NoRetry("bad input")

    with queue.events() as stream:
        flaky_id = queue.enqueue(flaky)
        before = datetime.now(UTC)
        with queue.worker(**FAST):
            events = collect_until(stream, jobs.JobFailed, 1)
            hopeless_id = queue.enqueue(hopeless)
            events += collect_until(stream, jobs.JobFailed, 1)
            wait_for(lambda: len(errors) == 3)
    assert kinds_of(events, flaky_id) == [
        "JobEnqueued",
        "JobStarted",
        "JobRetrying",
        "JobStarted",
        "JobFailed",
    ]
    assert kinds_of(events, hopeless_id) == ["JobEnqueued", "JobStarted", "JobFailed"]
    retrying = next(e for e in events if isinstance(e, jobs.JobRetrying))
    match retrying:
        case jobs.JobRetrying(job=job, attempt=1, error=ValueError() as err, next_run_at=at):
            assert str(err) == "run 1"
            assert job.status == jobs.JobStatus.RETRYING and job.run_at == at
            assert before < at < datetime.now(UTC) + timedelta(seconds=2)
        case _:
            pytest.fail(f"unexpected {retrying!r}")
    failed = [e for e in events if isinstance(e, jobs.JobFailed)]
    assert [type(e.error) for e in failed] == [ValueError, jobs.NoRetry]
    assert str(failed[0].error) == "run 2" and failed[0].job.attempt == 2
    assert failed[1].job.last_error == "NoRetry: bad input"
    assert [(kind, str(err), status) for kind, err, status in errors] == [
        ("retry", "run 1", jobs.JobStatus.RETRYING),
        ("fail", "run 2", jobs.JobStatus.FAILED),
        ("fail", "bad input", jobs.JobStatus.FAILED),
    ]


def test_checkpoint_saved_for_each_durable_call(queue: jobs.Queue) -> None:
    queue.register("double", lambda n: n * 2)

    @queue.job()
    def workflow(n: int) -> int:
        a: int = jobs.call("double", n)
        b: int = jobs.call("double", a)
        return b

    @queue.job()
    async def async_workflow(n: int) -> int:
        a: int = await jobs.call_async("double", n)
        return a

    with queue.events() as stream, queue.worker(**FAST):
        sync_id = queue.enqueue(workflow, 3)
        async_id = queue.enqueue(async_workflow, 5)
        events = collect_until(stream, jobs.JobCompleted, 2)
    assert kinds_of(events, sync_id) == [
        "JobEnqueued",
        "JobStarted",
        "CheckpointSaved",
        "CheckpointSaved",
        "JobCompleted",
    ]
    assert kinds_of(events, async_id) == [
        "JobEnqueued",
        "JobStarted",
        "CheckpointSaved",
        "JobCompleted",
    ]
    saved = [
        (e.job.id, e.checkpoint.call_index, e.checkpoint.call_type, e.checkpoint.result)
        for e in events
        if isinstance(e, jobs.CheckpointSaved)
    ]
    expected = [(sync_id, 0, "double", b"6"), (sync_id, 1, "double", b"12")]
    expected.append((async_id, 0, "double", b"10"))
    assert sorted(saved) == sorted(expected)


def test_raising_hooks_are_logged_and_never_change_the_outcome(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(job: jobs.Job, error: BaseException | None = None) -> None:
        raise RuntimeError(f"hook broke on {job.type}")

    ran: list[str] = []
    for register in (queue.on_job_start, queue.on_job_complete, queue.on_job_fail, queue.on_retry):
        register(broken)
    queue.on_job_complete(lambda job: ran.append(job.id))  # later hooks still run
    queue.register("good", lambda: "ok")

    @queue.job(retries=1, backoff=jobs.constant(0))
    def bad() -> None:
        raise ValueError("x")

    caplog.set_level(logging.ERROR, logger="durable_jobs")
    good, failing = queue.enqueue("good"), queue.enqueue(bad)
    with queue.worker(**FAST):
        wait_for(lambda: ran == [good])
        wait_for(lambda: terminal(queue, failing))
        wait_for(lambda: sum("fail hook" in r.getMessage() for r in caplog.records) == 1)
    done = queue.get_job(good)
    assert done is not None and done.status == jobs.JobStatus.COMPLETED and done.result == b'"ok"'
    failed = queue.get_job(failing)
    assert failed is not None and failed.attempt == 2 and failed.last_error == "ValueError: x"
    # The job's own permanent failure is logged at ERROR too; the rest are the hooks'.
    hooks = [r for r in caplog.records if " hook " in r.getMessage()]
    messages = Counter(r.getMessage().split(" hook ")[0] for r in hooks)
    assert messages == {"start": 3, "complete": 1, "retry": 1, "fail": 1}
    assert all(r.exc_info and "hook broke" in str(r.exc_info[1]) for r in hooks)


def test_async_hooks_run_for_sync_and_async_handlers(queue: jobs.Queue) -> None:
    seen: list[tuple[str, str]] = []
    hook_loops: set[int] = set()

    @queue.on_job_start
    async def started(job: jobs.Job) -> None:
        hook_loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.01)
        seen.append(("start", job.type))

    @queue.on_job_complete
    async def completed(job: jobs.Job) -> None:
        await asyncio.sleep(0.01)
        seen.append(("complete", job.type))

    @queue.on_job_fail
    async def failed(job: jobs.Job, error: BaseException) -> None:
        seen.append(("fail", f"{job.type}: {error}"))

    queue.register("sync", lambda: None)

    @queue.job("async")
    async def handler() -> None:
        await asyncio.sleep(0)

    @queue.job("broken", retries=0)
    async def broken() -> None:
        raise KeyError("k")

    ids = [queue.enqueue("sync"), queue.enqueue("async"), queue.enqueue("broken")]
    with queue.worker({"default": 1}, **FAST):
        wait_for(lambda: len(seen) == 6)
        wait_for(lambda: all(terminal(queue, job_id) for job_id in ids))
    assert seen.index(("start", "sync")) < seen.index(("complete", "sync"))
    assert seen.index(("start", "async")) < seen.index(("complete", "async"))
    assert seen.index(("start", "broken")) < seen.index(("fail", "broken: 'k'"))
    assert len(hook_loops) == 1  # async hooks share the queue's own hook loop


def test_stalled_subscriber_drops_events_and_never_slows_the_worker(queue: jobs.Queue) -> None:
    n = 300
    queue.register("t", lambda: None)
    stalled = queue.events(maxsize=5)  # subscribed and never read
    counting = queue.events(maxsize=10 * n)
    with queue.worker({"default": 20}, **FAST):
        ids = queue.enqueue_many([("t", None)] * n)
        # Every job's completion was published: the worker never waited on the stalled reader.
        wait_for(lambda: len(counting) == 3 * n, timeout=60)
    published = drain(counting)
    assert Counter(type(e).__name__ for e in published) == {
        "JobEnqueued": n,
        "JobStarted": n,
        "JobCompleted": n,
    }
    assert {e.job.id for e in published} == set(ids)
    assert counting.dropped == 0
    assert len(stalled) == 5
    assert stalled.dropped == len(published) - len(stalled)
    # The buffer keeps the newest events: a reader that catches up resumes at the present.
    # (Publishers on several threads may interleave the two streams slightly differently.)
    newest = published[-20:]
    assert all(any(e is p for p in newest) for e in drain(stalled))
    stalled.close()
    counting.close()


def test_several_subscribers_each_get_every_event(queue: jobs.Queue) -> None:
    queue.register("t", lambda: None)
    with queue.events() as first, queue.events() as second, queue.worker(**FAST):
        ids = [queue.enqueue("t") for _ in range(3)]
        a = collect_until(first, jobs.JobCompleted, 3)
        b = collect_until(second, jobs.JobCompleted, 3)
    assert a == b and len(a) == 9
    assert {e.job.id for e in a} == set(ids)


def test_async_iteration_while_a_worker_runs(queue: jobs.Queue) -> None:
    @queue.job()
    async def ping(n: int) -> int:
        await asyncio.sleep(0)
        return n

    async def consume() -> list[jobs.Event]:
        stream = queue.events()
        ids = [await queue.enqueue_async(ping, n) for n in range(5)]
        events: list[jobs.Event] = []
        pending = set(ids)
        async with asyncio.timeout(15):
            async for event in stream:
                events.append(event)
                if isinstance(event, jobs.JobCompleted):
                    pending.discard(event.job.id)
                    if not pending:
                        stream.close()  # ends the iteration
        assert stream.closed
        return events

    with queue.worker(**FAST):
        events = asyncio.run(consume())
    assert Counter(type(e).__name__ for e in events) == {
        "JobEnqueued": 5,
        "JobStarted": 5,
        "JobCompleted": 5,
    }


def test_close_ends_iteration_in_other_threads_and_tasks(queue: jobs.Queue) -> None:
    queue.register("t", lambda: None)
    stream = queue.events()
    seen: list[jobs.Event] = []
    reader = threading.Thread(target=lambda: seen.extend(stream))
    reader.start()

    async def iterate_until_closed() -> list[jobs.Event]:
        astream = queue.events()
        got: list[jobs.Event] = []

        async def read() -> None:
            async for event in astream:
                got.append(event)

        task = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        await asyncio.to_thread(queue.enqueue, "t")
        await asyncio.sleep(0.05)
        astream.close()
        await asyncio.wait_for(task, 5)
        return got

    with queue.worker(**FAST):
        got = asyncio.run(iterate_until_closed())
        wait_for(lambda: sum(isinstance(e, jobs.JobCompleted) for e in seen) == 1)
    stream.close()
    reader.join(5)
    assert not reader.is_alive()
    assert isinstance(got[0], jobs.JobEnqueued)
    # A closed stream receives nothing more and is no longer a subscriber.
    assert not queue.bus.has_subscribers
    queue.enqueue("t")
    assert stream.get(timeout=0) is None and len(stream) == 0
