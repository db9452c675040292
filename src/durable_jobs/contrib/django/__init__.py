"""Django: the queue configured from settings, enqueues inside Django's transactions,
``manage.py sdj_worker`` and ``manage.py sdj_migrate``.

Needs the ``django`` extra: ``pip install 'simple-durable-jobs[django]'``. Add
``"durable_jobs.contrib.django"`` to ``INSTALLED_APPS``; the ``jobs`` module of every
installed app is imported at start-up, so handlers registered there (on
``get_queue()``) are known to every process::

    # shop/jobs.py
    from durable_jobs.contrib.django import enqueue, get_queue

    queue = get_queue()

    @queue.job(retries=5)
    def ship_order(order_id: int) -> None: ...

    # shop/views.py
    with transaction.atomic():
        order = Order.objects.create(...)
        enqueue(ship_order, order.id)      # exists if and only if this block commits
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, transaction

from ...instrument import wrapped
from ...job import Job
from ...queue import Queue
from ...storage import SQLStorage
from .conf import ALIAS, database_url, shares_django_database

__all__ = ["enqueue", "enqueue_many", "get_queue"]

_queue: Queue | None = None
_lock = threading.Lock()


def get_queue() -> Queue:
    """The process's queue on the jobs' database (see ``conf``), made on first use.

    Register handlers on it; its workers close Django's database connections that are
    broken or past ``CONN_MAX_AGE`` around each job, as Django does around requests.
    It is not migrated on use: run ``manage.py sdj_migrate`` (as part of deploying, as
    ``migrate``).
    """
    global _queue
    with _lock:
        if _queue is None:
            queue = Queue(SQLStorage(database_url()))
            queue.instrument(_DjangoConnections())
            _queue = queue
        return _queue


def enqueue(name: str | Callable[..., Any], args: Any = None, **options: Any) -> str:
    """Enqueue a job in Django's current transaction, on Django's own connection.

    The job exists if and only if that transaction commits: inside ``atomic()`` it is
    written with the block's other writes, and a rollback (of the block, or of a savepoint
    taken before the enqueue) removes it; outside one it commits at once, as any query
    in autocommit mode. Its ``JobEnqueued`` event, hooks and the wake-up of this
    process's workers come from ``transaction.on_commit``: only after the commit, never
    after a rollback. Options are ``queue.enqueue``'s. The jobs must live in Django's
    database (no ``SDJ_DATABASE_URL`` naming another one).
    """
    return _store([_build(get_queue(), name, args, options)])[0]


def enqueue_many(items: Iterable[tuple[Any, ...]]) -> list[str]:
    """``enqueue`` for ``(name, args)`` or ``(name, args, options)`` items, all or none."""
    queue = get_queue()
    built = []
    for position, item in enumerate(items):
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise ValueError(
                f"item {position} must be (name, args) or (name, args, options), got {item!r}"
            )
        built.append(_build(queue, item[0], item[1], item[2] if len(item) == 3 else {}))
    return _store(built)


def _build(queue: Queue, name: str | Callable[..., Any], args: Any, options: dict[str, Any]) -> Job:
    if "connection" in options:
        raise ValueError("this enqueue runs on Django's connection; it takes no connection=")
    return queue.build_job(name, args, options)


def _store(jobs: list[Job]) -> list[str]:
    if not shares_django_database():
        raise ImproperlyConfigured(
            "SDJ_DATABASE_URL names another database than Django's: an enqueue cannot "
            "join Django's transaction there. Use get_queue().enqueue(...), which commits "
            "on its own, or keep the jobs in Django's database."
        )
    connection = transaction.get_connection(ALIAS)
    if connection.vendor not in ("postgresql", "sqlite"):
        # The storage runs its statements on a connection of its own driver; Django's
        # MySQL backend has another (mysqlclient).
        raise ImproperlyConfigured(
            f"an enqueue in Django's transaction needs PostgreSQL or SQLite, not "
            f"{connection.vendor}; use get_queue().enqueue(...), which commits on its own"
        )
    queue = get_queue()
    # savepoint=False: as Model.save() does; outside atomic() this is the transaction
    # that makes a batch all-or-nothing.
    with transaction.atomic(using=ALIAS, savepoint=False):
        connection.ensure_connection()
        with wrapped(queue.instruments.enqueue, jobs):
            try:
                # Django's DB-API connection, in the transaction Django has open on it.
                ids = queue.storage.enqueue_many(jobs, connection=connection.connection)
            except Exception as exc:
                if clearer := queue.storage.schema_error(exc):
                    raise clearer from exc
                raise
        # A job deduplicated by its unique_key has the holder's id: it was not stored.
        stored = [job for job, job_id in zip(jobs, ids, strict=True) if job_id == job.id]
        if stored:
            transaction.on_commit(partial(queue.announce, stored), using=ALIAS, robust=True)
    return ids


class _DjangoConnections:
    """Around each job run: close this thread's Django connections that are broken or
    too old, as Django does around each request (a worker thread lives much longer)."""

    @contextlib.contextmanager
    def job_run(self, _job: Job) -> Iterator[None]:
        sync = not _in_event_loop()  # Django's connections are for sync code only
        if sync:
            close_old_connections()
        try:
            yield
        finally:
            if sync:
                close_old_connections()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
