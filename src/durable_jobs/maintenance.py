"""Services a worker runs beside its jobs: heartbeats and the stale-lock reaper.

Each has ``run_once()`` so tests drive them without waiting for a timer.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta

from .release import __version__
from .retry import Backoff
from .storage import JobStore

__all__ = ["Heartbeat", "Reaper"]

log = logging.getLogger("durable_jobs")


class Heartbeat:
    """Keeps the locks of a worker's running jobs alive, and the worker listed as live."""

    def __init__(
        self,
        storage: JobStore,
        worker_id: str,
        queues: Sequence[str],
        types: Callable[[], Sequence[str]],
        running: Callable[[], Sequence[tuple[str, int]]],
        lock_timeout: timedelta | float = 30,
    ) -> None:
        self.storage = storage
        self.worker_id = worker_id
        self.queues = list(queues)
        self.types = types
        self.running = running
        #: Each heartbeat extends the worker's locks to this long from now.
        self.lock_timeout = lock_timeout
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.version = __version__

    def run_once(self) -> None:
        """One heartbeat: a single statement group for the worker and all its jobs."""
        self.storage.heartbeat_worker(
            self.worker_id,
            host=self.host,
            pid=self.pid,
            queues=self.queues,
            types=self.types(),
            jobs=[job_id for job_id, _fence in self.running()],
            lock_timeout=self.lock_timeout,
            version=self.version,
        )


class Reaper:
    """Takes back jobs whose worker stopped heartbeating, and forgets dead workers.

    A job is taken back when its own lock expired, on the database's clock:
    ``lock_timeout`` (this worker's) only paces the reaper and prunes workers.
    ``backoff`` gives a job type's default backoff policy (its handler's) when known:
    a job taken back waits it before running again, like a failed run.
    """

    def __init__(
        self,
        storage: JobStore,
        lock_timeout: timedelta,
        backoff: Callable[[str], Backoff | None] | None = None,
    ) -> None:
        self.storage = storage
        self.lock_timeout = lock_timeout
        self.backoff = backoff

    def run_once(self) -> int:
        """Release expired locks once; returns how many jobs were taken back."""
        released = self.storage.release_expired_locks(backoff=self.backoff)
        if released:
            log.warning(
                "took back %d job(s) whose worker stopped heartbeating before its lock expired",
                released,
            )
        self.storage.prune_workers(self.lock_timeout * 10)
        return released
