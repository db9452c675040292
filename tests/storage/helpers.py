"""What the storage conformance tests share: workers, job factories and raw SQL helpers.

Nothing here names a backend: the tests that use these run on whichever the fixtures give.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from durable_jobs.errors import StorageError
from durable_jobs.job import Job
from durable_jobs.storage import SQLStorage

__all__ = [
    "FAST",
    "W1",
    "W2",
    "claim_one",
    "count",
    "get",
    "make_job",
    "set_heartbeat",
    "sql",
]

W1, W2 = "worker-1", "worker-2"
FAST = {"poll_interval": 0.05, "lock_timeout": 5}  # a worker that polls and reaps quickly


def make_job(type_: str = "t", **fields: Any) -> Job:
    return Job(type=type_, **fields)


def sql(storage: SQLStorage, text: str, **params: Any) -> list[Any]:
    """Run one statement in its own committed transaction; rows if it returns any."""
    with storage.engine.begin() as conn:
        result = conn.execute(sa.text(text), params)
        return list(result.fetchall()) if result.returns_rows else []


def count(storage: SQLStorage, table: str = "sdj_jobs") -> int:
    return int(sql(storage, f"SELECT count(*) FROM {table}")[0][0])


def get(storage: SQLStorage, job_id: str) -> Job:
    job = storage.get_job(job_id)
    assert job is not None, f"job {job_id} is missing"
    return job


def claim_one(storage: SQLStorage, worker: str = W1, **kwargs: Any) -> Job:
    claimed = storage.claim("default", worker, 1, **kwargs)
    assert len(claimed) == 1, claimed
    return claimed[0]


def set_heartbeat(storage: SQLStorage, job_id: str, when: datetime) -> None:
    sql(
        storage,
        "UPDATE sdj_jobs SET heartbeat_at = :t WHERE id = :id",
        t=storage.dialect.time_param(when),
        id=job_id,
    )


@contextlib.contextmanager
def raises_storage_error(
    cause: type[BaseException] | tuple[type[BaseException], ...],
) -> Iterator[pytest.ExceptionInfo[StorageError]]:
    """Expect the library's ``StorageError`` raised from a driver error of type ``cause``."""
    with pytest.raises(StorageError) as caught:
        yield caught
    assert isinstance(caught.value.__cause__, cause), repr(caught.value.__cause__)
