"""The benchmarks' throwaway databases: ``with database("postgresql") as url: ...``."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

import durable_jobs as jobs

__all__ = ["PG_ADMIN", "backend_of", "connect", "database", "queue_on"]

#: The server the PostgreSQL benchmarks create their databases on.
PG_ADMIN = os.environ.get("SDJ_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def database(backend: str, prefix: str = "sdj_bench") -> Iterator[str]:
    """A URL to a fresh, migrated database, removed afterwards.

    SQLite: a file in a temporary directory. PostgreSQL: a database named ``prefix``
    plus a random suffix on ``PG_ADMIN``'s server, dropped even while connections stay.
    """
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            _migrate(url)
            yield url
        return
    admin = sa.create_engine(
        sa.make_url(PG_ADMIN).set(drivername="postgresql+psycopg"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
    )
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    try:
        _migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


def _migrate(url: str) -> None:
    storage = jobs.SQLStorage(url)
    try:
        storage.migrate()
    finally:
        storage.close()


def backend_of(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"`` for a database URL."""
    return sa.make_url(url).get_backend_name()


@contextmanager
def connect(url: str) -> Iterator[Any]:
    """A raw driver connection (sqlite3 or psycopg) in autocommit, closed afterwards.

    It comes from the library's own engine, so it has the same settings as the library's
    connections (WAL and busy timeout on SQLite, UTC on PostgreSQL). Autocommit makes
    every statement its own transaction, in one round trip, and keeps polling reads
    from holding a snapshot open.
    """
    storage = jobs.SQLStorage(url)
    raw = storage.engine.raw_connection()
    conn = raw.driver_connection
    assert conn is not None
    if storage.dialect.name == "sqlite":
        conn.isolation_level = None
    else:
        conn.autocommit = True
    try:
        yield conn
    finally:
        raw.invalidate()  # never hand a connection with changed settings back to a pool
        storage.close()


@contextmanager
def queue_on(url: str, *, sqlite_synchronous: str | None = None) -> Iterator[jobs.Queue]:
    """A ``Queue`` on ``url`` (already migrated), its connections closed afterwards.

    ``sqlite_synchronous`` (``"NORMAL"``): an engine of the caller's whose SQLite
    connections commit without waiting for the disk, as docs/guarantees.md describes.
    """
    if sqlite_synchronous is None:
        storage = jobs.SQLStorage(url)
    else:
        engine = sa.create_engine(url)

        def relaxed(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA synchronous={sqlite_synchronous}")

        sa.event.listen(engine, "connect", relaxed)
        storage = jobs.SQLStorage(engine)
    try:
        yield jobs.Queue(storage)
    finally:
        storage.close()
        if sqlite_synchronous is not None:
            storage.engine.dispose()
