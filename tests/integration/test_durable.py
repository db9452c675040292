"""Durable calls on real databases: replay, errors, retries in place, nesting, typing."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import pydantic
import pytest

import durable_jobs as jobs
from durable_jobs.errors import StaleJobError
from durable_jobs.executor import Executor
from tests.helpers import run_to_end, wait_for

FAST = {"poll_interval": 0.05, "lock_timeout": 5}
NOW = {"backoff": jobs.constant(0)}


@pytest.fixture
def runs() -> Counter[str]:
    return Counter()


def counted(queue: jobs.Queue, runs: Counter[str], name: str, fail_times: int = 0) -> None:
    def step(x: object = None) -> str:
        runs[name] += 1
        if runs[name] <= fail_times:
            raise RuntimeError(f"{name} failed")
        return f"{name}:{x}"

    queue.register(name, step)


def test_step_results_survive_a_retry(queue: jobs.Queue, runs: Counter[str]) -> None:
    counted(queue, runs, "charge")
    seen: list[str] = []

    @queue.job(**NOW)
    def workflow() -> str:
        receipt = jobs.call("charge", 42)
        seen.append(receipt)
        if jobs.current_job().attempt == 1:
            raise ValueError("crash after the step")
        return str(receipt)

    job = run_to_end(queue, queue.enqueue(workflow))
    assert job.status == "completed" and job.attempt == 2
    assert runs["charge"] == 1
    assert seen == ["charge:42", "charge:42"]
    assert queue.storage.get_checkpoints(job.id) == []  # deleted on completion


def test_a_failing_later_step_does_not_rerun_earlier_ones(
    queue: jobs.Queue, runs: Counter[str]
) -> None:
    counted(queue, runs, "one")
    counted(queue, runs, "two")
    counted(queue, runs, "three", fail_times=2)

    @queue.job(retries=3, **NOW)
    def workflow() -> list[str]:
        return [jobs.call("one"), jobs.call("two"), jobs.call("three")]

    job = run_to_end(queue, queue.enqueue(workflow))
    assert job.status == "completed" and job.attempt == 3
    assert runs == {"one": 1, "two": 1, "three": 3}
    assert job.result == b'["one:None","two:None","three:None"]'


def test_no_retry_from_a_step_is_replayed_and_ordinary_errors_rerun(
    queue: jobs.Queue, runs: Counter[str]
) -> None:
    @queue.job()
    def refuse() -> None:
        runs["refuse"] += 1
        raise jobs.NoRetry("card declined")

    counted(queue, runs, "flaky", fail_times=1)
    caught: list[str] = []

    @queue.job(retries=2, **NOW)
    def workflow() -> str:
        try:
            jobs.call("refuse")
        except jobs.NoRetry as exc:
            caught.append(str(exc))  # compensate the same way on every run
        return str(jobs.call("flaky"))

    job = run_to_end(queue, queue.enqueue(workflow))
    assert job.status == "completed" and job.attempt == 2
    assert runs == {"refuse": 1, "flaky": 2}
    assert caught == ["card declined", "card declined"]


def test_no_retry_step_fails_the_job_when_not_caught(queue: jobs.Queue) -> None:
    @queue.job()
    def refuse() -> None:
        raise jobs.NoRetry("invalid input")

    @queue.job(retries=3)
    def workflow() -> None:
        jobs.call("refuse")

    job = run_to_end(queue, queue.enqueue(workflow))
    assert job.status == "failed" and job.attempt == 1
    assert job.last_error == "NoRetry: invalid input"


def test_steps_retry_in_place(queue: jobs.Queue, runs: Counter[str]) -> None:
    counted(queue, runs, "wobbly", fail_times=2)
    counted(queue, runs, "broken", fail_times=99)

    @queue.job(retries=0)
    def ok() -> str:
        return str(jobs.call("wobbly", retries=2, backoff=jobs.constant(0.01)))

    @queue.job(retries=0)
    def exhausted() -> str:
        return str(jobs.call("broken", retries=1, backoff=jobs.constant(0)))

    first = run_to_end(queue, queue.enqueue(ok))
    assert first.status == "completed" and first.attempt == 1 and runs["wobbly"] == 3
    second = run_to_end(queue, queue.enqueue(exhausted))
    assert second.status == "failed" and runs["broken"] == 2
    assert second.last_error == "RuntimeError: broken failed"


@dataclass
class Receipt:
    id: str
    cents: int


class Shipment(pydantic.BaseModel):
    tracking: str
    items: list[str]


def test_results_decode_into_return_annotations(queue: jobs.Queue) -> None:
    @queue.job()
    def charge(cents: int) -> Receipt:
        return Receipt("r1", cents)

    @queue.job()
    def ship(items: list[str]) -> Shipment:
        return Shipment(tracking="t1", items=items)

    got: list[object] = []

    @queue.job(**NOW)
    def workflow() -> None:
        got.append(jobs.call("charge", 500))
        got.append(jobs.call("ship", ["a", "b"]))
        if jobs.current_job().attempt == 1:
            raise RuntimeError("again, from checkpoints")

    job = run_to_end(queue, queue.enqueue(workflow))
    assert job.status == "completed"
    expected = [Receipt("r1", 500), Shipment(tracking="t1", items=["a", "b"])]
    assert got == expected * 2


def test_nondeterminism_is_detected(queue: jobs.Queue) -> None:
    queue.register("a", lambda: "a")
    queue.register("b", lambda: "b")

    @queue.job(retries=3, **NOW)
    def workflow() -> None:
        first = jobs.current_job().attempt == 1
        jobs.call("a" if first else "b")
        if first:
            raise RuntimeError("retry with a different path")

    job = run_to_end(queue, queue.enqueue(workflow))
    assert job.status == "failed" and job.attempt == 2
    assert job.last_error is not None
    assert job.last_error.startswith("NondeterminismError: durable call 0")
    assert "'b'" in job.last_error and "'a'" in job.last_error


def test_nested_steps_replay_without_shifting_numbers(
    queue: jobs.Queue, runs: Counter[str]
) -> None:
    counted(queue, runs, "inner1")
    counted(queue, runs, "inner2", fail_times=1)
    counted(queue, runs, "after")
    counted(queue, runs, "last")

    @queue.job()
    def outer() -> list[str]:
        runs["outer"] += 1
        return [jobs.call("inner1"), jobs.call("inner2")]

    @queue.job(retries=3, **NOW)
    def workflow() -> list[object]:
        result = [jobs.call("outer"), jobs.call("after")]
        if jobs.current_job().attempt == 2:
            raise RuntimeError("fail after the outer step was checkpointed")
        result.append(jobs.call("last"))
        return result

    job = run_to_end(queue, queue.enqueue(workflow))
    assert job.status == "completed" and job.attempt == 3
    # Run 1: outer fails in inner2 (inner1 checkpointed). Run 2: outer runs again with
    # inner1 replayed. Run 3: outer replayed whole; its inner steps do not run.
    assert runs == {"outer": 2, "inner1": 1, "inner2": 2, "after": 1, "last": 1}
    assert job.result == b'[["inner1:None","inner2:None"],"after:None","last:None"]'


def test_call_outside_a_job_raises(queue: jobs.Queue) -> None:
    queue.register("a", lambda: None)
    with pytest.raises(jobs.NotInJobError):
        jobs.call("a")
    with pytest.raises(jobs.NotInJobError):
        asyncio.run(jobs.call_async("a"))


def test_async_and_sync_steps_mix(queue: jobs.Queue, runs: Counter[str]) -> None:
    @queue.job()
    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        runs["fetch"] += 1
        return n + 1

    counted(queue, runs, "store")

    @queue.job(**NOW)
    async def async_flow() -> list[object]:
        a = await jobs.call_async("fetch", 1)
        b = await jobs.call_async("store", a)
        assert jobs.current_job().type == "async_flow"
        if jobs.current_job().attempt == 1:
            raise RuntimeError("replay please")
        return [a, b]

    @queue.job()
    def sync_flow() -> int:
        return int(jobs.call("fetch", 10))

    first = run_to_end(queue, queue.enqueue(async_flow))
    assert first.status == "completed" and first.result == b'[2,"store:2"]'
    assert runs == {"fetch": 1, "store": 1}
    second = run_to_end(queue, queue.enqueue(sync_flow))
    assert second.status == "completed" and second.result == b"11"


def test_call_rejects_bad_options_and_unknown_steps(queue: jobs.Queue) -> None:
    queue.register("a", lambda: None)
    errors: list[str] = []

    @queue.job(retries=0)
    def workflow() -> None:
        for bad in ({"priority": 1}, {"retries": -1}):
            try:
                jobs.call("a", **bad)
            except ValueError as exc:
                errors.append(str(exc))
        jobs.call("missing-step")

    job = run_to_end(queue, queue.enqueue(workflow))
    assert job.status == "failed"
    assert job.last_error is not None and "missing-step" in job.last_error
    assert "unknown option" in errors[0] and "retries must be >= 0" in errors[1]


# -- concurrent calls, and errors that are never retried in place ---------------------------


def test_gathered_async_calls_are_numbered_in_call_order_and_replay_their_own_results(
    queue: jobs.Queue, runs: Counter[str]
) -> None:
    finished: list[str] = []

    @queue.job()
    async def slow(x: int) -> str:
        runs["slow"] += 1
        for _ in range(1000):  # finishes after "fast", whose checkpoint comes first
            if "fast" in finished:
                break
            await asyncio.sleep(0.005)
        finished.append("slow")
        return f"slow:{x}"

    @queue.job()
    async def fast(x: int) -> str:
        runs["fast"] += 1
        finished.append("fast")
        return f"fast:{x}"

    stored: list[list[tuple[int, str]]] = []

    @queue.job(retries=2, **NOW)
    async def workflow() -> list[str]:
        job = jobs.current_job()
        cps = await asyncio.to_thread(queue.storage.get_checkpoints, job.id)
        stored.append([(cp.call_index, cp.call_type) for cp in cps])
        a, b = await asyncio.gather(jobs.call_async("slow", 1), jobs.call_async("fast", 2))
        if job.attempt == 1:
            raise RuntimeError("replay please")
        return [a, b]

    job = run_to_end(queue, queue.enqueue(workflow))
    assert job.status == "completed" and job.attempt == 2, job.last_error
    assert job.result == b'["slow:1","fast:2"]'
    assert runs == {"slow": 1, "fast": 1}  # both replayed on the second run
    assert finished == ["fast", "slow"]
    # Numbered in the order the calls were made, not the order they finished.
    assert stored == [[], [(0, "slow"), (1, "fast")]]


def test_calls_from_threads_of_one_job_each_get_their_own_checkpoint(
    queue: jobs.Queue, runs: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    counted(queue, runs, "echo")
    threads = 8
    read = queue.storage.get_checkpoints

    def slow_read(job_id: str) -> list[jobs.Checkpoint]:
        time.sleep(0.05)  # widens the window in which the first calls load checkpoints
        return read(job_id)

    monkeypatch.setattr(queue.storage, "get_checkpoints", slow_read)

    @queue.job(retries=0)
    def workflow() -> None:
        gate = threading.Barrier(threads)

        def one(n: int) -> object:
            gate.wait(10)
            return jobs.call("echo", n)

        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(contextvars.copy_context().run, one, n) for n in range(threads)]
            results = [f.result() for f in futures]
        assert results == [f"echo:{n}" for n in range(threads)]
        raise jobs.NoRetry("keep the checkpoints")

    job = run_to_end(queue, queue.enqueue(workflow))
    assert job.last_error == "NoRetry: keep the checkpoints"
    cps = queue.storage.get_checkpoints(job.id)
    assert sorted(cp.call_index for cp in cps) == list(range(threads))
    assert sorted(cp.result or b"" for cp in cps) == sorted(
        f'"echo:{n}"'.encode() for n in range(threads)
    )
    assert runs == {"echo": threads}


def test_a_step_that_lost_the_jobs_lock_is_not_retried_in_place(
    queue: jobs.Queue, runs: Counter[str]
) -> None:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    counted(queue, runs, "inner")
    seen: list[str] = []

    @queue.job()
    def outer() -> object:
        runs["outer"] += 1
        # Another worker's reaper takes the job back (no heartbeat for "too long")...
        storage.release_stale_locks(timedelta(microseconds=1))
        return jobs.call("inner")  # ...so this checkpoint is fenced out

    @queue.job(retries=0)
    def workflow() -> None:
        try:
            jobs.call("outer", retries=3, backoff=jobs.constant(0))
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise

    job_id = queue.enqueue(workflow)
    with queue.worker(**FAST):
        wait_for(lambda: seen)
    assert seen == ["StaleJobError"]
    assert runs == {"outer": 1, "inner": 1}  # not 4 times: the side effects ran once
    job = queue.get_job(job_id)
    assert job is not None and job.status == "failed"
    assert job.last_error is not None and job.last_error.startswith("WorkerLost")
    assert storage.get_checkpoints(job_id) == []


def test_a_run_that_lost_the_job_before_its_replay_runs_no_step_again(
    queue: jobs.Queue, runs: Counter[str]
) -> None:
    # Its worker froze past the lock timeout between claim and start; meanwhile another
    # run finished the job, which dropped its checkpoints. The thawed run must not find
    # "no checkpoints" and run every step again.
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    counted(queue, runs, "inner")

    @queue.job(**NOW)
    def workflow() -> object:
        return jobs.call("inner")

    job_id = queue.enqueue(workflow)
    [frozen] = storage.claim("default", "frozen-worker", 1)
    storage.release_stale_locks(timedelta(microseconds=1))  # taken back
    with queue.worker(**FAST):
        wait_for(lambda: status_of(queue, job_id) is jobs.JobStatus.COMPLETED)
    assert runs == {"inner": 1} and storage.get_checkpoints(job_id) == []

    outcome = Executor(queue, "frozen-worker", lock_timeout=5).run(frozen)  # thawed
    assert isinstance(outcome.error, StaleJobError)
    assert runs == {"inner": 1}, "the thawed run ran a step the job had checkpointed"
    assert status_of(queue, job_id) is jobs.JobStatus.COMPLETED


def status_of(queue: jobs.Queue, job_id: str) -> jobs.JobStatus | None:
    job = queue.get_job(job_id)
    return None if job is None else job.status


def test_nondeterminism_in_a_nested_call_is_not_retried_in_place(
    queue: jobs.Queue, runs: Counter[str]
) -> None:
    queue.register("a", lambda: "a")
    queue.register("b", lambda: "b")

    @queue.job()
    def outer() -> None:
        attempt = jobs.current_job().attempt
        runs[f"outer on run {attempt}"] += 1
        jobs.call("a" if attempt == 1 else "b")  # inner call 0.0 diverges on run 2
        raise RuntimeError("outer fails after its inner call was checkpointed")

    @queue.job(retries=1, **NOW)
    def workflow() -> None:
        jobs.call("outer", retries=3, backoff=jobs.constant(0))

    job = run_to_end(queue, queue.enqueue(workflow))
    assert job.status == "failed" and job.attempt == 2
    assert job.last_error is not None and job.last_error.startswith("NondeterminismError")
    # Retried in place on run 1 (an ordinary error); on run 2 the divergence ends it.
    assert runs == {"outer on run 1": 4, "outer on run 2": 1}
