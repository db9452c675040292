"""Durable calls in a user's first hour (issue 18, item 3): ``jobs.call`` takes the
registered function as ``enqueue`` does; a call that cannot run as written (no such
handler, arguments that do not fit) fails the job at once instead of being retried as if
transient; and a failed workflow's stored traceback names the step that raised.

Real storage (SQLite, PostgreSQL, MySQL) and real workers throughout.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs.durable import InvalidCall, InvalidCallArguments, UnknownStep
from tests.helpers import run_to_end

NOW: dict[str, Any] = {"backoff": jobs.constant(0)}


@dataclass
class Order:
    id: str
    cents: int


@pytest.fixture
def runs() -> Counter[str]:
    return Counter()


# -- the registered function works as the name ----------------------------------------------


def test_call_and_call_async_take_the_registered_function(
    queue: jobs.Queue, runs: Counter[str]
) -> None:
    @queue.job()
    def charge(order: Order) -> str:
        runs["charge"] += 1
        return f"receipt-{order.id}-{order.cents}"

    @queue.job()
    async def reserve(n: int) -> int:
        runs["reserve"] += 1
        return n * 2

    def notify(text: str) -> str:  # registered under another name than its own
        runs["notify"] += 1
        return text.upper()

    queue.register("send-note", notify)

    @queue.job(retries=1, **NOW)
    async def place(order: Order) -> list[Any]:
        receipt = await jobs.call_async(charge, order)
        reserved = await jobs.call_async(reserve, order.cents)
        note = await jobs.call_async(notify, receipt)
        if jobs.current_job().attempt == 1:
            raise RuntimeError("crash after the steps: the replay returns their results")
        return [receipt, reserved, note]

    @queue.job()
    def place_sync(order: Order) -> list[Any]:
        return [jobs.call(charge, order), jobs.call(reserve, 3), jobs.call(notify, "x")]

    job = run_to_end(queue, queue.enqueue(place, Order("a1", 250)))
    assert job.status == "completed" and job.attempt == 2, job.last_error
    assert job.result == b'["receipt-a1-250",500,"RECEIPT-A1-250"]'
    assert runs == {"charge": 1, "reserve": 1, "notify": 1}  # replayed, not run again

    sync = run_to_end(queue, queue.enqueue(place_sync, Order("b2", 1)))
    assert sync.status == "completed" and sync.attempt == 1, sync.last_error
    assert sync.result == b'["receipt-b2-1",6,"X"]'


def test_checkpoints_of_a_call_by_function_carry_the_job_type(
    queue: jobs.Queue, runs: Counter[str]
) -> None:
    def step() -> str:
        runs["step"] += 1
        return "done"

    queue.register("the-step", step)

    @queue.job(retries=0)
    def flow() -> None:
        jobs.call(step)
        raise jobs.NoRetry("stop here, keeping the checkpoints")

    job = run_to_end(queue, queue.enqueue(flow))
    assert (
        job.status == "failed" and job.last_error == "NoRetry: stop here, keeping the checkpoints"
    )
    [cp] = queue.storage.get_checkpoints(job.id)
    assert cp.call_type == "the-step" and cp.result == b'"done"'


# -- a call that cannot run as written fails at once ----------------------------------------


def test_a_call_of_an_unknown_job_type_fails_the_job_without_retries(queue: jobs.Queue) -> None:
    @queue.job()
    def charge() -> None: ...

    @queue.job(retries=3, **NOW)
    def flow() -> None:
        jobs.call("chrage")  # a typo

    job = run_to_end(queue, queue.enqueue(flow))
    assert job.status == "failed" and job.attempt == 1
    assert job.last_error is not None
    assert job.last_error.startswith("UnknownStep: durable call of 'chrage'")
    assert "no handler is registered" in job.last_error
    assert "did you mean 'charge'?" in job.last_error
    assert queue.storage.get_checkpoints(job.id) == []


def test_a_call_of_an_unregistered_function_fails_the_job_without_retries(
    queue: jobs.Queue,
) -> None:
    def forgotten(x: int) -> int:  # never registered
        return x

    @queue.job(retries=3, **NOW)
    async def flow() -> None:
        await jobs.call_async(forgotten, 1)

    job = run_to_end(queue, queue.enqueue(flow))
    assert job.status == "failed" and job.attempt == 1
    assert job.last_error is not None and job.last_error.startswith("UnknownStep:")
    assert "forgotten" in job.last_error and "not a handler registered" in job.last_error


def test_step_arguments_that_do_not_fit_fail_the_job_without_running_the_step(
    queue: jobs.Queue, runs: Counter[str]
) -> None:
    @queue.job()
    def ship(order: Order) -> None:
        runs["ship"] += 1

    @queue.job(retries=3, **NOW)
    def flow() -> None:
        jobs.call(ship, {"id": "a1", "cents": "lots"}, retries=2, backoff=jobs.constant(0))

    job = run_to_end(queue, queue.enqueue(flow))
    assert job.status == "failed" and job.attempt == 1  # not retried by the job ...
    assert runs["ship"] == 0  # ... nor in place, and the step never ran
    error = job.last_error
    assert error is not None and error.startswith("InvalidCallArguments: durable call 0:")
    assert "'ship'" in error and "parameter 'order' (Order)" in error
    assert "cents: Input should be a valid integer" in error
    assert queue.storage.get_checkpoints(job.id) == []


def test_invalid_calls_are_catchable_as_the_errors_they_are(queue: jobs.Queue) -> None:
    @queue.job()
    def step(order: Order) -> str:
        return order.id

    caught: list[str] = []

    @queue.job(retries=0)
    def flow() -> str:
        for target, args, options in (
            ("nope", None, {}),
            (step, "not an order", {}),
            (step, object(), {}),
            (step, Order("o", 1), {"priority": 3}),
        ):
            try:
                jobs.call(target, args, **options)
            except (LookupError, TypeError, ValueError) as exc:
                assert isinstance(exc, InvalidCall) and isinstance(exc, jobs.NoRetry)
                caught.append(type(exc).__name__)
        return str(jobs.call(step, Order("fine", 1)))

    job = run_to_end(queue, queue.enqueue(flow))
    assert job.status == "completed", job.last_error
    assert job.result == b'"fine"'
    assert caught == ["UnknownStep"] + ["InvalidCallArguments"] * 3
    assert issubclass(UnknownStep, LookupError)
    assert issubclass(InvalidCallArguments, TypeError) and issubclass(
        InvalidCallArguments, ValueError
    )


def test_an_invalid_nested_call_is_not_checkpointed_by_its_enclosing_step(
    queue: jobs.Queue, runs: Counter[str]
) -> None:
    @queue.job()
    def inner(order: Order) -> None:
        runs["inner"] += 1

    @queue.job()
    def outer() -> None:
        runs["outer"] += 1
        jobs.call(inner, "not an order")

    @queue.job(retries=2, **NOW)
    def flow() -> None:
        jobs.call(outer, retries=2, backoff=jobs.constant(0))

    job = run_to_end(queue, queue.enqueue(flow))
    assert job.status == "failed" and job.attempt == 1
    assert runs == {"outer": 1}
    # A NoRetry from a step is checkpointed, to be replayed; a programming error is
    # not: once the code is fixed, the step runs afresh.
    assert queue.storage.get_checkpoints(job.id) == []
    assert job.traceback is not None
    assert "durable call 0 ('outer') raised this" in job.traceback


# -- a failed workflow names the step that raised --------------------------------------------


def test_the_stored_traceback_names_the_failing_step(queue: jobs.Queue, runs: Counter[str]) -> None:
    @queue.job()
    def reserve(n: int) -> int:
        return n

    @queue.job()
    def charge(cents: int) -> None:
        runs["charge"] += 1
        raise RuntimeError(f"card declined for {cents}")

    @queue.job(retries=1, **NOW)
    def flow() -> None:
        jobs.call(reserve, 1)
        jobs.call(charge, 250, retries=1, backoff=jobs.constant(0))

    job = run_to_end(queue, queue.enqueue(flow))
    assert job.status == "failed" and job.attempt == 2 and runs["charge"] == 4
    assert job.last_error == "RuntimeError: card declined for 250"  # type and message
    tb = job.traceback
    assert tb is not None
    assert tb.rstrip().endswith("durable call 1 ('charge') raised this")
    assert tb.count("durable call") == 1  # once, however often the step was retried
    assert "in charge" in tb and "RuntimeError: card declined for 250" in tb


def test_nested_and_async_steps_are_named_along_their_path(queue: jobs.Queue) -> None:
    @queue.job()
    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        raise KeyError(f"missing {n}")

    @queue.job()
    def lookup(n: int) -> int:
        return int(jobs.call("noop-first")) + int(jobs.call(fetch, n))

    queue.register("noop-first", lambda: 0)

    @queue.job(retries=0)
    async def flow() -> None:
        await jobs.call_async("noop-first")
        await jobs.call_async(lookup, 7)

    job = run_to_end(queue, queue.enqueue(flow))
    assert job.status == "failed"
    assert job.last_error == "KeyError: 'missing 7'"
    tb = job.traceback
    assert tb is not None
    notes = [line for line in tb.splitlines() if line.startswith("durable call")]
    assert notes == [
        "durable call 1.1 ('fetch') raised this",
        "durable call 1 ('lookup') raised this",
    ]


def test_a_replayed_no_retry_names_its_step(queue: jobs.Queue, runs: Counter[str]) -> None:
    @queue.job()
    def refuse() -> None:
        runs["refuse"] += 1
        raise jobs.NoRetry("card declined")

    notes: list[list[str]] = []

    @queue.job(retries=1, **NOW)
    def flow() -> None:
        try:
            jobs.call(refuse)
        except jobs.NoRetry as exc:
            notes.append(list(getattr(exc, "__notes__", [])))
            if jobs.current_job().attempt == 1:
                raise RuntimeError("the next run replays the refusal") from None
            raise

    job = run_to_end(queue, queue.enqueue(flow))
    assert job.status == "failed" and job.attempt == 2 and runs["refuse"] == 1
    assert job.last_error == "NoRetry: card declined"
    assert notes == [
        ["durable call 0 ('refuse') raised this"],
        ["durable call 0 ('refuse') raised this on an earlier run (replayed from its checkpoint)"],
    ]
    assert job.traceback is not None and "replayed from its checkpoint" in job.traceback
