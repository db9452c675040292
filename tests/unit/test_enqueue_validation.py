"""Arguments are checked at enqueue (issue 18, item 4): when the producer's ``Queue``
knows the handler, arguments that its worker could not decode into the handler's
parameter annotation (dataclass, pydantic model, TypedDict) raise ``TypeError`` /
``ValueError`` naming the job type and parameter, and nothing is written: no row, no
event, no hook. Real storage: SQLite, PostgreSQL and MySQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

import pydantic
import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs.handler import InvalidArguments
from durable_jobs.job import Job
from tests.helpers import wait_for

FAST: dict[str, Any] = {"poll_interval": 0.05, "lock_timeout": 5}


@dataclass
class Order:
    id: str
    cents: int


class Customer(pydantic.BaseModel):
    email: str
    since: datetime


class Email(TypedDict):
    to: str
    subject: str


def count_jobs(queue: jobs.Queue) -> int:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM sdj_jobs")).scalar_one())


@dataclass
class Announced:
    """What a queue announced: events on a stream and the enqueued hook's calls."""

    stream: jobs.EventStream
    hooked: list[Job]

    @property
    def nothing(self) -> bool:
        return len(self.stream) == 0 and not self.hooked


@pytest.fixture
def announced(queue: jobs.Queue) -> Iterator[Announced]:
    hooked: list[Job] = []

    def on_enqueued(batch: Sequence[Job]) -> None:
        hooked.extend(batch)

    queue.hooks.on_enqueued(on_enqueued)
    with queue.events(maxsize=10_000) as stream:
        yield Announced(stream, hooked)


@pytest.fixture
def typed(queue: jobs.Queue) -> jobs.Queue:
    """``queue`` with handlers whose parameters are a dataclass, a model, a TypedDict."""

    @queue.job("charge")
    def charge(order: Order) -> None: ...

    @queue.job("welcome")
    async def welcome(customer: Customer) -> None: ...

    @queue.job("mail")
    def mail(email: Email) -> None: ...

    return queue


# -- refused at enqueue, nothing written ---------------------------------------------------


def test_a_string_for_a_dataclass_is_refused_naming_the_job_type_and_parameter(
    typed: jobs.Queue, announced: Announced
) -> None:
    charge = typed.handler("charge")
    assert charge is not None
    for target in ("charge", charge.fn):  # by name and by the registered function
        with pytest.raises(TypeError) as raised:
            typed.enqueue(target, "order-17")
        message = str(raised.value)
        assert "'charge'" in message and "parameter 'order' (Order)" in message
        assert "Input should be" in message and "'order-17'" in message
        assert isinstance(raised.value, ValueError) and isinstance(raised.value, InvalidArguments)
        assert raised.value.job_type == "charge" and raised.value.parameter == "order"
    assert count_jobs(typed) == 0 and announced.nothing


@pytest.mark.parametrize(
    ("name", "args", "says"),
    [
        ("charge", {"id": "o1"}, "cents: Field required"),
        ("charge", {"id": "o1", "cents": "lots"}, "cents: Input should be a valid integer"),
        ("charge", None, "Input should be"),  # the handler needs its argument
        ("welcome", {"email": "a@b.c", "since": "yesterday"}, "since: Input should be"),
        ("welcome", ["a@b.c"], "Input should be"),
        ("mail", {"to": "a@b.c"}, "subject"),
    ],
    ids=["missing-field", "wrong-field-type", "none", "model-field", "model-list", "typeddict"],
)
def test_arguments_that_do_not_fit_are_refused_with_what_is_wrong(
    typed: jobs.Queue, announced: Announced, name: str, args: Any, says: str
) -> None:
    with pytest.raises(ValueError) as raised:
        typed.enqueue(name, args)
    assert f"{name!r}" in str(raised.value) and says in str(raised.value)
    with pytest.raises(TypeError):
        asyncio.run(typed.enqueue_async(name, args))
    assert count_jobs(typed) == 0 and announced.nothing


def test_a_refused_enqueue_inside_a_transaction_raises_before_any_write(
    typed: jobs.Queue, announced: Announced
) -> None:
    storage = typed.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.begin() as conn, pytest.raises(TypeError, match="'charge'"):
        typed.enqueue("charge", 17, connection=conn)
    assert count_jobs(typed) == 0 and announced.nothing


def test_enqueue_many_is_all_or_nothing_for_arguments_that_do_not_fit(
    typed: jobs.Queue, announced: Announced
) -> None:
    # A bad item past the chunks that have already been sent (PostgreSQL streams its COPY).
    items: list[Any] = [("charge", Order(f"o{i}", i)) for i in range(1200)]
    items[1100] = ("charge", {"id": "o1100", "cents": "many"}, {"priority": 3})
    with pytest.raises(TypeError, match=r"'charge'.*parameter 'order'.*cents"):
        typed.enqueue_many(items)
    with pytest.raises(ValueError):
        typed.enqueue_many([("mail", {"to": "a", "subject": "b"}), ("mail", "to a")])
    assert count_jobs(typed) == 0 and announced.nothing

    items[1100] = ("charge", {"id": "o1100", "cents": "1100"})  # JSON the worker accepts
    ids = typed.enqueue_many(items)
    assert len(ids) == 1200 and count_jobs(typed) == 1200 and len(announced.hooked) == 1200


def test_a_schedule_with_arguments_that_do_not_fit_is_refused(typed: jobs.Queue) -> None:
    with pytest.raises(TypeError, match=r"'charge'.*parameter 'order'"):
        typed.schedule("charge", jobs.every(minutes=5), args="nightly")
    assert "charge" not in typed.schedules
    typed.schedule("charge", jobs.every(minutes=5), args=Order("nightly", 0))
    assert "charge" in typed.schedules


# -- what is not refused -------------------------------------------------------------------


def test_arguments_that_fit_are_stored_and_decoded_by_the_worker(typed: jobs.Queue) -> None:
    got: list[Any] = []

    @typed.job("refund")
    def refund(order: Order) -> None:
        got.append(order)

    first = typed.enqueue("refund", Order("a", 1))
    second = typed.enqueue(refund, {"id": "b", "cents": "2"})  # lax, as the worker decodes
    with pytest.raises(TypeError):
        typed.enqueue(refund, {"id": "c"})
    with typed.worker(**FAST):
        wait_for(lambda: len(got) == 2)
    assert sorted(got, key=lambda o: o.id) == [Order("a", 1), Order("b", 2)]
    assert {typed.get_job(i).status for i in (first, second)} == {"completed"}  # type: ignore[union-attr]


def test_only_a_producer_that_knows_the_handler_checks(typed: jobs.Queue) -> None:
    """A producer without the handler (it is registered in the workers' process) stores
    the job; the worker then refuses the arguments without retries, in one line."""
    with pytest.raises(TypeError):
        typed.enqueue("charge", "order-17")
    producer = jobs.Queue(typed.storage)  # knows no handlers
    job_id = producer.enqueue("charge", "order-17")
    assert count_jobs(typed) == 1
    with typed.worker(**FAST):
        job = wait_for(lambda: (j := typed.get_job(job_id)) and j.status == "failed" and j)
    assert isinstance(job, Job)
    error = job.last_error or ""
    assert job.attempt == 1 and "cannot decode arguments of 'charge'" in error
    # One line naming the parameter and the problem; pydantic's report is in the traceback.
    assert "parameter 'order'" in error and "Input should be an object" in error
    assert "\n" not in error
    assert job.traceback is not None and "ValidationError" in job.traceback


def test_handlers_with_plain_parameters_have_nothing_to_check(typed: jobs.Queue) -> None:
    """Plain annotations get the decoded JSON in the worker, unchecked: so at enqueue
    too, and such handlers cost no validation at all."""

    @typed.job("count")
    def count(n: int) -> None: ...

    @typed.job("anything")
    def anything(value: Any = None) -> None: ...

    @typed.job("nothing")
    def nothing() -> None: ...

    for name in ("count", "anything", "nothing"):
        handler = typed.handler(name)
        assert handler is not None and not handler.checks_args
    for name in ("charge", "welcome", "mail"):
        handler = typed.handler(name)
        assert handler is not None and handler.checks_args
    typed.enqueue("count", "not a number")
    typed.enqueue("anything", {"any": ["json"]})
    assert count_jobs(typed) == 2
    with pytest.raises(TypeError):  # the typed one next to them is still checked
        typed.enqueue_many([("count", 1), ("charge", 1)])
    assert count_jobs(typed) == 2
