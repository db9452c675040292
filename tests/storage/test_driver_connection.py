"""``enqueue(..., connection=...)`` with a driver connection that the caller manages (as
Django does its own): the jobs are written in the caller's open transaction, which
alone decides whether they exist."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from durable_jobs.storage import SQLStorage
from tests.storage.helpers import count, make_job


@pytest.fixture
def driver(storage: SQLStorage) -> Iterator[Any]:
    """A psycopg, sqlite3 or PyMySQL connection, not in autocommit, that the test commits
    or rolls back itself."""
    pooled = storage.engine.raw_connection()
    try:
        yield pooled.driver_connection
    finally:
        pooled.rollback()
        pooled.close()


def test_the_callers_commit_keeps_the_jobs_and_its_rollback_drops_them(
    storage: SQLStorage, driver: Any
) -> None:
    dropped = [make_job(), make_job()]
    assert storage.enqueue_many(dropped, connection=driver) == [job.id for job in dropped]
    driver.rollback()
    assert count(storage) == 0

    kept = make_job()
    assert storage.enqueue(kept, connection=driver) == kept.id
    assert count(storage) == 0  # not before the caller commits
    driver.commit()
    stored = storage.get_job(kept.id)
    assert stored is not None and stored.type == "t"


def test_unique_keys_are_decided_inside_the_callers_transaction(
    storage: SQLStorage, driver: Any
) -> None:
    first, second = make_job(unique_key="k"), make_job(unique_key="k")
    assert storage.enqueue_many([first], connection=driver) == [first.id]
    assert storage.enqueue(second, connection=driver) == first.id  # held, in the same txn
    driver.commit()
    assert count(storage) == 1
    third = make_job(unique_key="k")
    assert storage.enqueue(third, connection=driver) == first.id  # still unfinished
    driver.rollback()
