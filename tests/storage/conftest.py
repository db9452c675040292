"""Fixtures of the storage conformance tests, on top of ``tests/conftest.py``.

Every test takes its backend through ``backend``, ``db_url`` or ``storage``: adding a
backend to the ``backend`` fixture's params runs the whole suite on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from durable_jobs.job import utcnow
from tests.helpers import fresh_database


@pytest.fixture
def past() -> datetime:
    """A moment safely before any job enqueued by the test (a due run time)."""
    return utcnow() - timedelta(hours=1)


@pytest.fixture
def fresh_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database that nobody has migrated."""
    with fresh_database(backend, tmp_path) as url:
        yield url
