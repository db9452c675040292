"""Scratch storages on a test server: one per test, gone after it."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from ..storage import SQLStorage
from ..storage.dialects import dialect_for_url

__all__ = ["scratch_storage"]


@contextlib.contextmanager
def scratch_storage(url: str) -> Iterator[SQLStorage]:
    """A migrated storage on a fresh, empty database of the server of ``url``, dropped
    (and the storage closed) on exit.

    PostgreSQL: a schema of its own in ``url``'s database (quicker to make than a
    database), first on the search path of the storage's connections. MySQL: a database
    of its own. SQLite (a file per test is fresher still) is refused.
    """
    cls, engine_url = dialect_for_url(url)
    name = f"sdj_test_{uuid.uuid4().hex[:12]}"
    if cls.name == "postgresql":
        create, drop = f'CREATE SCHEMA "{name}"', f'DROP SCHEMA IF EXISTS "{name}" CASCADE'
        scratch_url = engine_url
    elif cls.name == "mysql":
        create = f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
        drop = f"DROP DATABASE IF EXISTS `{name}`"
        scratch_url = engine_url.set(database=name)
    else:
        raise ValueError(f"a scratch database needs a PostgreSQL or MySQL URL, got {cls.title}")
    admin = sa.create_engine(engine_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(create)
        try:
            storage = SQLStorage(scratch_url)
            if cls.name == "postgresql":
                sa.event.listen(storage.engine, "connect", _search_path(name))
            try:
                storage.migrate()
                yield storage
            finally:
                storage.close()
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(drop)
    finally:
        admin.dispose()


def _search_path(schema: str) -> Any:
    """A ``connect`` listener that puts ``schema`` first on a new connection's path."""

    def connected(dbapi_connection: Any, _record: Any) -> None:
        was = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # a SET outside any transaction: it lasts
        dbapi_connection.execute(f'SET search_path TO "{schema}"')
        dbapi_connection.autocommit = was

    return connected
