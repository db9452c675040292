"""The benchmarks' throwaway databases: ``with database("postgresql") as url: ...``."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

import durable_jobs as jobs

__all__ = ["PG_ADMIN", "database"]

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
