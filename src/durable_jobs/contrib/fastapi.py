"""FastAPI (and Starlette): a worker in the app's lifespan, enqueues that join the
request's transaction, and the dashboard under a path.

Needs the ``fastapi`` extra: ``pip install 'simple-durable-jobs[fastapi]'``.

::

    queue = jobs.Queue(jobs.SQLStorage(engine))
    app = FastAPI(lifespan=lifespan(queue))                 # worker=False: web only

    def db() -> Iterator[sa.Connection]:
        with engine.begin() as conn:                       # commits, or rolls back on error
            yield conn

    Database = Depends(db, scope="function")               # committed before the response
    Enqueue = Annotated[Enqueuer, Depends(enqueuer(queue, Database))]

    @app.post("/orders")
    def order(conn: Annotated[sa.Connection, Database], enqueue: Enqueue) -> None:
        conn.execute(...)
        enqueue("ship", 17)                                # exists iff the request commits

    mount_dashboard(app, queue, "/admin/jobs", allow=is_operator, auth=is_operator)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, params
from sqlalchemy.orm import Session
from starlette.applications import Starlette

from ..queue import Queue
from .dashboard import Allow, guarded_dashboard

__all__ = ["Enqueuer", "enqueuer", "lifespan", "mount_dashboard"]


def lifespan(
    queue: Queue, *, worker: bool = True, **options: Any
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan for ``FastAPI(lifespan=...)`` (or Starlette) that runs a worker of
    ``queue`` in the server process while the app is up.

    ``options`` go to ``queue.worker()`` (``queues``, ``scheduler``, ``lock_timeout``,
    ...). The worker runs in its own threads (async handlers on its own event loop),
    never on the server's loop. At shutdown it stops claiming and lets running jobs
    finish for up to ``shutdown_timeout``. ``worker=False`` runs none, for web-only
    processes whose jobs run elsewhere (``sdj worker``). To combine it with a lifespan
    of your own, enter it there: ``async with lifespan(queue)(app): yield``.
    """

    @contextlib.asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[None]:
        if not worker:
            yield
            return
        running = queue.worker(**options)
        # Both block (start checks the schema, stop drains): off the server's loop.
        await asyncio.to_thread(running.start)
        try:
            yield
        finally:
            await asyncio.to_thread(running.stop)

    return run


class Enqueuer:
    """Enqueues on one request's SQLAlchemy connection or ``Session``: the jobs exist if
    and only if its transaction commits, and their events, hooks and wake-ups come
    after that commit (none after a rollback)."""

    def __init__(self, queue: Queue, connection: sa.Connection | Session) -> None:
        self.queue = queue
        self.connection = connection

    def _connection(self) -> sa.Connection:
        # A Session's connection, begun on first use, is the one its commit commits.
        if isinstance(self.connection, Session):
            return self.connection.connection()
        return self.connection

    def __call__(self, name: str | Callable[..., Any], args: Any = None, **options: Any) -> str:
        """``queue.enqueue(name, args, **options)`` in the request's transaction."""
        return self.queue.enqueue(name, args, connection=self._connection(), **options)

    def many(self, items: Iterable[tuple[Any, ...]]) -> list[str]:
        """``queue.enqueue_many(items)`` in the request's transaction."""
        return self.queue.enqueue_many(items, connection=self._connection())


def enqueuer(
    queue: Queue, connection: Callable[..., Any] | params.Depends
) -> Callable[..., Enqueuer]:
    """A dependency giving an ``Enqueuer`` on what ``connection`` gives.

    ``connection`` is your dependency that yields the request's ``sqlalchemy.Connection``
    (or ``Session``) inside its transaction, committing after the endpoint and rolling
    back when it raises; or, better, the ``Depends(db, scope="function")`` marker your
    endpoints use, so that the commit comes before the response is sent. FastAPI
    resolves a dependency once per request (per function, marker and scope), so the
    endpoint and the enqueuer share that transaction. The connection must be to the
    queue's database.
    """
    marker = connection if isinstance(connection, params.Depends) else Depends(connection)

    def dependency(conn: Any = marker) -> Enqueuer:
        return Enqueuer(queue, conn)

    return dependency


def mount_dashboard(
    app: Starlette,
    queue: Queue,
    path: str = "/jobs",
    *,
    allow: Allow | None = None,
    auth: Allow | None = None,
    refresh: float = 5.0,
) -> None:
    """Mount the dashboard of ``queue`` at ``path`` of a FastAPI or Starlette ``app``.

    ``allow(request)`` says who may see it (others get 403, or the response of the
    ``HTTPException`` it raises, such as a 401 asking for credentials); ``auth(request)``
    who may also act. Sync or async; without ``allow`` whoever reaches ``path`` sees it,
    without ``auth`` it is read-only. Links, forms and cookies follow ``path``.
    """
    app.mount(path, guarded_dashboard(queue, allow=allow, auth=auth, refresh=refresh))
