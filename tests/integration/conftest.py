"""Fixtures shared by the integration tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import durable_jobs as jobs


@pytest.fixture
def events(queue: jobs.Queue) -> Iterator[list[jobs.Event]]:
    """Every event of the queue's workers, collected in the background."""
    seen: list[jobs.Event] = []
    stream = queue.events(maxsize=10_000)
    thread = threading.Thread(target=lambda: seen.extend(stream), daemon=True)
    thread.start()
    yield seen
    stream.close()
    thread.join(5)
