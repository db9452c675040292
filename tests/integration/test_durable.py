"""Durable calls on real databases: replay, errors, retries in place, nesting, typing."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

import pydantic
import pytest

import durable_jobs as jobs
from tests.helpers import wait_for

FAST = {"poll_interval": 0.05, "lock_timeout": 5}
NOW = {"backoff": jobs.constant(0)}


def run_to_end(queue: jobs.Queue, job_id: str) -> jobs.Job:
    with queue.worker(**FAST):
        job = wait_for(
            lambda: (j := queue.get_job(job_id)) and j.status in ("completed", "failed") and j
        )
    assert isinstance(job, jobs.Job)
    return job


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
