"""The pytest plugin of ``simple-durable-jobs`` (a ``pytest11`` entry point).

Fixtures: ``sdj_clock`` (a ``FakeClock``), ``sdj_queue`` (a queue on a fresh SQLite
file reading that clock), ``sdj_postgres_queue`` (the same on a scratch schema of the
PostgreSQL server named by ``$SDJ_TEST_DATABASE_URL`` or the ``sdj_database_url`` ini
option; skipped when neither is set) and ``sdj_harness`` (a ``QueueHarness``: ``.drain()``,
``.advance(hours=1)``, ``.assert_enqueued(...)``, ``.jobs(...)``,
``.outcomes(...)`` on ``sdj_queue``).

This module is imported by every pytest session once the package is installed, so it
imports only pytest: the library itself is imported by the fixtures that use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import durable_jobs as jobs
    from durable_jobs.testing import FakeClock, QueueHarness

__all__ = ["sdj_clock", "sdj_harness", "sdj_postgres_queue", "sdj_queue"]

DATABASE_URL_ENV = "SDJ_TEST_DATABASE_URL"
_INI = "sdj_database_url"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _INI,
        f"database URL (PostgreSQL) for the sdj_postgres_queue fixture; ${DATABASE_URL_ENV}"
        " overrides it",
        default="",
    )


@pytest.fixture
def sdj_clock() -> FakeClock:
    """A fake clock at 2026-01-01 00:00 UTC, moved only by the test."""
    from durable_jobs.testing import FakeClock

    return FakeClock()


@pytest.fixture
def sdj_queue(sdj_clock: FakeClock, tmp_path: Path) -> Iterator[jobs.Queue]:
    """A queue on a fresh, migrated SQLite file that reads ``sdj_clock``."""
    import durable_jobs as jobs

    queue = jobs.Queue(f"sqlite:///{tmp_path / 'sdj_jobs.db'}", clock=sdj_clock)
    yield queue
    queue.storage.close()


@pytest.fixture
def sdj_postgres_queue(
    sdj_clock: FakeClock, request: pytest.FixtureRequest
) -> Iterator[jobs.Queue]:
    """A queue on a scratch schema of the configured PostgreSQL server, reading
    ``sdj_clock``; dropped after the test."""
    url = os.environ.get(DATABASE_URL_ENV) or str(request.config.getini(_INI))
    if not url:
        pytest.skip(f"no database server configured (${DATABASE_URL_ENV} or ini {_INI})")
    import durable_jobs as jobs
    from durable_jobs.testing.databases import scratch_storage

    with scratch_storage(url) as storage:
        yield jobs.Queue(storage, clock=sdj_clock)


@pytest.fixture
def sdj_harness(sdj_queue: jobs.Queue, sdj_clock: FakeClock) -> QueueHarness:
    """``sdj_queue`` and ``sdj_clock`` with the testing helpers bound to them."""
    from durable_jobs.testing import QueueHarness

    return QueueHarness(sdj_queue, sdj_clock)
