"""``Queue``: registering handlers and enqueueing, on SQLite and PostgreSQL where it stores."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs.job import utcnow
from durable_jobs.retry import backoff_from_json
from tests.helpers import fresh_database


@dataclass
class EmailArgs:
    to: str
    subject: str = "hi"


def count_jobs(queue: jobs.Queue) -> int:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM sdj_jobs")).scalar_one())


def stored(queue: jobs.Queue, job_id: str) -> jobs.Job:
    job = queue.get_job(job_id)
    assert job is not None
    return job


def noop(args: Any = None) -> None:
    return None


# -- bad input raises before anything is written -------------------------------------------


@pytest.mark.parametrize(
    "args",
    [object(), float("nan"), float("inf"), {"x": -float("inf")}, [1, {2: b"bytes"}], print],
    ids=["object", "nan", "inf", "nested-inf", "bytes", "function"],
)
def test_unencodable_args_raise_type_error(queue: jobs.Queue, args: Any) -> None:
    queue.register("t", noop)
    with pytest.raises(TypeError):
        queue.enqueue("t", args)
    with pytest.raises(TypeError):
        queue.enqueue_many([("t", 1), ("t", args)])
    assert count_jobs(queue) == 0


def test_sets_are_encoded_as_lists(queue: jobs.Queue) -> None:
    job_id = queue.enqueue("t", {"tags": {"b", "a"}})
    assert json.loads(stored(queue, job_id).args) == {"tags": ["a", "b"]}


BAD_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("negative delay", {"delay": -1}),
    ("negative timedelta", {"delay": timedelta(seconds=-0.5)}),
    ("nan delay", {"delay": float("nan")}),
    ("inf delay", {"delay": float("inf")}),
    ("delay as text", {"delay": "10"}),
    ("delay as bool", {"delay": True}),
    ("delay too large", {"delay": 1e20}),
    ("delay past datetime.max", {"delay": timedelta(days=999_999_999)}),
    ("delay and at", {"delay": 5, "at": datetime(2030, 1, 1, tzinfo=UTC)}),
    ("at as text", {"at": "2030-01-01"}),
    ("negative retries", {"retries": -1}),
    ("retries as float", {"retries": 1.0}),
    ("unknown option", {"priorty": 5}),
    ("connection per option name typo", {"conection": None}),
    ("priority as text", {"priority": "high"}),
    ("priority as float", {"priority": 1.5}),
    ("priority as bool", {"priority": True}),
    ("priority out of range", {"priority": 2**40}),
    ("empty queue", {"queue": ""}),
    ("blank queue", {"queue": "   "}),
    ("queue not a str", {"queue": 7}),
    ("queue with NUL", {"queue": "a\x00b"}),
    ("queue too long", {"queue": "q" * 201}),
    ("queue with a lone surrogate", {"queue": "q\udc80"}),  # no database stores it
    ("backoff not a policy", {"backoff": 5}),
]


@pytest.mark.parametrize("options", [o for _, o in BAD_OPTIONS], ids=[n for n, _ in BAD_OPTIONS])
def test_bad_options_raise_value_error_and_write_nothing(
    queue: jobs.Queue, options: dict[str, Any]
) -> None:
    queue.register("t", noop)
    with pytest.raises(ValueError):
        queue.enqueue("t", {"a": 1}, **options)
    with pytest.raises(ValueError):
        queue.enqueue_many([("t", 1), ("t", 2, options), ("t", 3)])
    with pytest.raises(ValueError):
        asyncio.run(queue.enqueue_async("t", 1, **options))
    assert count_jobs(queue) == 0


@pytest.mark.parametrize("name", ["", None, 42, "x" * 201, "a\x00b", "a\ud800"], ids=repr)
def test_bad_job_names_raise_value_error(queue: jobs.Queue, name: Any) -> None:
    with pytest.raises(ValueError):
        queue.enqueue(name, 1)
    assert count_jobs(queue) == 0


def test_an_unregistered_function_is_not_a_name(queue: jobs.Queue) -> None:
    def never_registered() -> None: ...

    with pytest.raises(ValueError, match="not a registered handler"):
        queue.enqueue(never_registered)
    with pytest.raises(ValueError):
        queue.enqueue_many([("t", 1), (never_registered, None)])
    assert count_jobs(queue) == 0


@pytest.mark.parametrize(
    "item",
    [("t",), ("t", 1, {}, "extra"), ["t", 1], "t", ("t", 1, ["not", "a", "dict"])],
    ids=repr,
)
def test_enqueue_many_rejects_malformed_items(queue: jobs.Queue, item: Any) -> None:
    with pytest.raises(ValueError):
        queue.enqueue_many([("t", 1), item])
    assert count_jobs(queue) == 0


def test_enqueue_many_rejects_a_bad_item_deep_in_a_big_batch(queue: jobs.Queue) -> None:
    # Past the first chunk that PostgreSQL's streamed COPY has already sent.
    items: list[Any] = [("t", i) for i in range(3000)]
    items[2500] = ("t", float("nan"))
    with pytest.raises(TypeError):
        queue.enqueue_many(items)
    items[2500] = ("t", 1, {"priority": "high"})
    with pytest.raises(ValueError):
        queue.enqueue_many(items)
    assert count_jobs(queue) == 0
    items[2500] = ("t", 2500)
    stream = queue.events(maxsize=5000)
    ids = queue.enqueue_many(items)
    assert len(set(ids)) == 3000 and count_jobs(queue) == 3000
    announced = [stream.get(timeout=5) for _ in range(3000)]
    assert [getattr(event, "job", None) and event.job.id for event in announced] == ids
    assert [queue.get_job(ids[i]).args for i in (0, 2999)] == [b"0", b"2999"]  # type: ignore[union-attr]


def test_enqueue_many_takes_connection_only_as_a_whole(queue: jobs.Queue) -> None:
    with pytest.raises(ValueError):
        queue.enqueue_many([("t", 1, {"connection": None})])
    assert count_jobs(queue) == 0


# -- enqueue -------------------------------------------------------------------------------


def test_enqueue_defaults(queue: jobs.Queue) -> None:
    before = utcnow()
    job_id = queue.enqueue("unregistered-type")  # producers need not know the handler
    uuid.UUID(job_id)
    job = stored(queue, job_id)
    assert job.type == "unregistered-type"
    assert job.args == b"null"
    assert (job.queue, job.priority, job.max_retries) == ("default", 0, 3)
    assert job.status is jobs.JobStatus.PENDING and job.attempt == 0
    assert job.backoff is None
    assert job.run_at is not None and before <= job.run_at <= utcnow()


def test_enqueue_encodes_args(queue: jobs.Queue) -> None:
    job_id = queue.enqueue("send", EmailArgs("u@example.com"))
    assert json.loads(stored(queue, job_id).args) == {"to": "u@example.com", "subject": "hi"}


def test_enqueue_by_function(queue: jobs.Queue) -> None:
    @queue.job("send-email")
    def send(args: EmailArgs) -> None: ...

    job_id = queue.enqueue(send, EmailArgs("a@b"))
    assert stored(queue, job_id).type == "send-email"
    [many] = queue.enqueue_many([(send, EmailArgs("c@d"))])
    assert stored(queue, many).type == "send-email"


def test_enqueue_options_are_stored(queue: jobs.Queue) -> None:
    policy = jobs.constant(7)
    job_id = queue.enqueue("t", 1, priority=-3, retries=0, queue="critical", backoff=policy)
    job = stored(queue, job_id)
    assert (job.priority, job.max_retries, job.queue) == (-3, 0, "critical")
    assert job.backoff is not None and backoff_from_json(job.backoff) == policy


@pytest.mark.parametrize("delay", [90, 90.5, timedelta(minutes=2)], ids=repr)
def test_delay_as_seconds_or_timedelta(queue: jobs.Queue, delay: float | timedelta) -> None:
    wait = delay if isinstance(delay, timedelta) else timedelta(seconds=delay)
    before = utcnow()
    job_id = queue.enqueue("t", delay=delay)
    after = utcnow()
    run_at = stored(queue, job_id).run_at
    assert run_at is not None and before + wait <= run_at <= after + wait


def test_at_naive_means_utc(queue: jobs.Queue) -> None:
    naive = datetime(2031, 2, 3, 4, 5, 6, 789)
    job_id = queue.enqueue("t", at=naive)
    assert stored(queue, job_id).run_at == naive.replace(tzinfo=UTC)
    aware = datetime(2031, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-7)))
    other = queue.enqueue("t", at=aware)
    run_at = stored(queue, other).run_at
    assert run_at == aware and run_at is not None and run_at.utcoffset() == timedelta(0)


def test_enqueue_many_stores_items_in_order_with_their_options(queue: jobs.Queue) -> None:
    ids = queue.enqueue_many(
        [("a", 1), ("b", {"x": 2}, {"priority": 5, "queue": "q2"}), ("c", None, {"delay": 60})]
    )
    assert len(ids) == len(set(ids)) == 3
    a, b, c = (stored(queue, i) for i in ids)
    assert (a.type, a.args, a.priority, a.queue) == ("a", b"1", 0, "default")
    assert (b.type, b.args, b.priority, b.queue) == ("b", b'{"x":2}', 5, "q2")
    assert c.run_at is not None and c.run_at > utcnow() + timedelta(seconds=50)
    assert queue.enqueue_many([]) == []


def test_enqueue_async_inside_asyncio_run(queue: jobs.Queue) -> None:
    async def main() -> tuple[str, str]:
        one = await queue.enqueue_async("t", {"n": 1}, priority=4)
        two = await queue.enqueue_async("t")
        return one, two

    one, two = asyncio.run(main())
    assert one != two
    job = stored(queue, one)
    assert (job.type, job.args, job.priority) == ("t", b'{"n":1}', 4)
    assert stored(queue, two).args == b"null"


def test_enqueue_async_rejects_bad_args(queue: jobs.Queue) -> None:
    with pytest.raises(TypeError):
        asyncio.run(queue.enqueue_async("t", object()))
    assert count_jobs(queue) == 0


def test_enqueue_joins_the_callers_transaction(queue: jobs.Queue) -> None:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.begin() as conn:
        kept = queue.enqueue("t", 1, connection=conn)
        kept_many = queue.enqueue_many([("t", 2), ("t", 3)], connection=conn)
    with pytest.raises(RuntimeError), storage.engine.begin() as conn:
        dropped = queue.enqueue("t", 4, connection=conn)
        raise RuntimeError("abort")
    assert queue.get_job(kept) is not None
    assert all(queue.get_job(i) is not None for i in kept_many)
    assert queue.get_job(dropped) is None
    assert count_jobs(queue) == 3


# -- register ------------------------------------------------------------------------------


def test_register_twice_raises(queue: jobs.Queue) -> None:
    queue.register("t", noop)
    with pytest.raises(ValueError, match="already registered"):
        queue.register("t", lambda: None)
    with pytest.raises(ValueError):

        @queue.job("t")
        def again() -> None: ...

    assert queue.handler("t") is not None and queue.handler("t").fn is noop  # type: ignore[union-attr]


def _two_required(a: int, b: int) -> None: ...
def _required_keyword(a: int, *, key: str) -> None: ...
def _only_required_keyword(*, key: str) -> None: ...


@pytest.mark.parametrize(
    "fn",
    [_two_required, _required_keyword, _only_required_keyword, "not callable", 42],
    ids=["two-required", "required-keyword", "only-required-keyword", "str", "int"],
)
def test_unusable_handlers_raise_value_error(queue: jobs.Queue, fn: Any) -> None:
    with pytest.raises(ValueError):
        queue.register("t", fn)
    assert queue.handler("t") is None


def _none() -> None: ...
def _one(a: int) -> None: ...
def _one_and_optional(a: int, b: int = 2, *, c: int = 3) -> None: ...
def _var_positional(*args: Any) -> None: ...
def _var_keyword(**kwargs: Any) -> None: ...


@pytest.mark.parametrize(
    ("fn", "takes_arg"),
    [
        (_none, False),
        (_one, True),
        (_one_and_optional, True),
        (_var_positional, True),
        (_var_keyword, False),
        (lambda x: x, True),
        (print, True),
    ],
    ids=["none", "one", "one-and-optional", "var-positional", "var-keyword", "lambda", "print"],
)
def test_usable_handler_signatures(queue: jobs.Queue, fn: Any, takes_arg: bool) -> None:
    queue.register("t", fn)
    handler = queue.handler("t")
    assert handler is not None and handler.takes_arg is takes_arg and not handler.is_async


def test_decorator_defaults_to_the_function_name(queue: jobs.Queue) -> None:
    @queue.job()
    def send_report(args: EmailArgs) -> str:
        return "sent"

    assert send_report(EmailArgs("x")) == "sent"  # the decorator returns the function
    handler = queue.handler("send_report")
    assert handler is not None and handler.fn is send_report
    assert queue.resolve_name(send_report) == "send_report"
    assert handler.decode_args(b'{"to": "a@b"}') == EmailArgs("a@b")
    assert "send_report" in queue.job_types


def test_async_handlers_are_accepted(queue: jobs.Queue) -> None:
    @queue.job()
    async def fetch(url: str) -> str:
        return url

    handler = queue.handler("fetch")
    assert handler is not None and handler.is_async and handler.takes_arg
    assert stored(queue, queue.enqueue(fetch, "https://x")).type == "fetch"


def test_register_rejects_bad_options(queue: jobs.Queue) -> None:
    for options in ({"at": datetime(2030, 1, 1)}, {"retries": -1}, {"colour": "red"}):
        with pytest.raises(ValueError):
            queue.register("t", noop, **options)
    assert queue.handler("t") is None


def test_registration_options_are_defaults_and_enqueue_overrides(queue: jobs.Queue) -> None:
    policy = jobs.exponential(base=2, max=60)
    queue.register(
        "t", noop, retries=5, queue="emails", priority=10, backoff=policy, delay=timedelta(hours=1)
    )
    before = utcnow()
    defaults = stored(queue, queue.enqueue("t", 1))
    assert (defaults.max_retries, defaults.queue, defaults.priority) == (5, "emails", 10)
    assert defaults.backoff is not None and backoff_from_json(defaults.backoff) == policy
    assert defaults.run_at is not None and defaults.run_at >= before + timedelta(hours=1)

    other = jobs.constant(1)
    overridden = stored(
        queue,
        queue.enqueue("t", 1, retries=0, queue="other", priority=-1, backoff=other, delay=0),
    )
    assert (overridden.max_retries, overridden.queue, overridden.priority) == (0, "other", -1)
    assert overridden.backoff is not None and backoff_from_json(overridden.backoff) == other
    assert overridden.run_at is not None and overridden.run_at <= utcnow()

    # `at` replaces a registered delay instead of clashing with it.
    at = datetime(2030, 5, 5, tzinfo=UTC)
    assert stored(queue, queue.enqueue("t", 1, at=at)).run_at == at
    # enqueue_many applies the same defaults.
    [many] = queue.enqueue_many([("t", 1, {"priority": 3})])
    job = stored(queue, many)
    assert (job.max_retries, job.queue, job.priority) == (5, "emails", 3)


# -- construction --------------------------------------------------------------------------


def test_queue_of_a_storage_uses_it_as_is(storage: jobs.SQLStorage) -> None:
    queue = jobs.Queue(storage)
    assert queue.storage is storage


@pytest.fixture
def fresh_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database that nobody has migrated."""
    with fresh_database(backend, tmp_path) as url:
        yield url


def test_queue_of_a_url_migrates_on_first_use(fresh_url: str, tmp_path: Path) -> None:
    queue = jobs.Queue(fresh_url)
    if fresh_url.startswith("sqlite"):
        assert not (tmp_path / "fresh.db").exists()  # nothing happens before first use
    job_id = queue.enqueue("t", {"n": 1})
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    assert storage.schema_version() == len(storage.dialect.migrations)
    assert stored(queue, job_id).args == b'{"n":1}'
    storage.close()


def test_enqueue_on_a_storage_never_migrated_says_to_migrate(fresh_url: str) -> None:
    storage = jobs.SQLStorage(fresh_url)
    queue = jobs.Queue(storage)  # a storage object: the queue does not migrate it
    match = r"schema version 0 of \d+: run storage.migrate\(\)"
    with pytest.raises(RuntimeError, match=match) as single:
        queue.enqueue("t", {"n": 1})
    assert single.value.__cause__ is not None  # the driver's own error, kept
    with pytest.raises(RuntimeError, match=match):
        queue.enqueue_many([("t", 1), ("t", 2)])
    with pytest.raises(ValueError):  # bad input is still reported as such
        queue.enqueue_many([("t", 1), ("t",)])
    storage.migrate()
    assert stored(queue, queue.enqueue("t", {"n": 1})).args == b'{"n":1}'
    storage.close()


def test_queue_uses_the_environment_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.setenv("SDJ_DATABASE_URL", url)
    queue = jobs.Queue()
    assert isinstance(queue.storage, jobs.SQLStorage)
    assert queue.storage.url == url
    queue.enqueue("t")
    assert (tmp_path / "from-env.db").exists()
    queue.storage.close()


@pytest.mark.parametrize("env", [None, ""], ids=["unset", "empty"])
def test_queue_defaults_to_jobs_db(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: str | None
) -> None:
    monkeypatch.chdir(tmp_path)
    if env is None:
        monkeypatch.delenv("SDJ_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("SDJ_DATABASE_URL", env)
    queue = jobs.Queue()
    assert "sqlite:///jobs.db" in repr(queue)
    assert queue._storage.url == "sqlite:///jobs.db"


def test_queue_rejects_unsupported_urls() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        jobs.Queue("oracle://scott@localhost/db")
    with pytest.raises(ValueError):
        jobs.Queue("not a url")


class _Sender:
    def __call__(self, args: EmailArgs) -> str:
        return args.to


class _AsyncSender:
    async def __call__(self, args: EmailArgs) -> str:
        return args.to


async def _send_async(args: EmailArgs, retries: int = 0) -> str:
    return args.to


@pytest.mark.parametrize(
    ("fn", "is_async"),
    [(_Sender(), False), (_AsyncSender(), True), (functools.partial(_send_async, retries=1), True)],
    ids=["object", "async-object", "partial"],
)
def test_callable_objects_and_partials_are_typed_handlers(
    queue: jobs.Queue, fn: Any, is_async: bool
) -> None:
    # An object with an async __call__ must be awaited, and its annotation decodes the args.
    queue.register("send", fn)
    handler = queue.handler("send")
    assert handler is not None and handler.is_async is is_async and handler.takes_arg
    assert handler.decode_args(b'{"to": "a@b"}') == EmailArgs("a@b")
    result = handler.fn(EmailArgs("a@b"))
    assert (asyncio.run(result) if is_async else result) == "a@b"


class _PlainStorage:
    """Only the seed's verbs, as a third-party ``jobs.Storage`` might have."""

    def migrate(self) -> None: ...

    def enqueue(self, job: jobs.Job) -> str:
        return job.id


def test_a_queue_refuses_a_storage_without_every_job_store_verb() -> None:
    with pytest.raises(TypeError, match=r"JobStore \(such as SQLStorage\), got _PlainStorage"):
        jobs.Queue(_PlainStorage())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got int"):
        jobs.Queue(42)  # type: ignore[arg-type]
