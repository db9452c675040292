"""Services a worker runs beside its jobs: heartbeats and the stale-lock reaper.

Each has ``run_once()`` so tests drive them without waiting for a timer.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta

from .storage import SQLStorage, Storage

__all__ = ["Heartbeat", "Reaper"]

log = logging.getLogger("durable_jobs")


class Heartbeat:
    """Keeps the locks of a worker's running jobs alive, and the worker listed as live."""

    def __init__(
        self,
        storage: Storage,
        worker_id: str,
        queues: Sequence[str],
        types: Callable[[], Sequence[str]],
        running: Callable[[], Sequence[tuple[str, int]]],
    ) -> None:
        self.storage = storage
        self.worker_id = worker_id
        self.queues = list(queues)
        self.types = types
        self.running = running
        self.host = socket.gethostname()
        self.pid = os.getpid()

    def run_once(self) -> None:
        """One heartbeat: a single statement group for the worker and all its jobs."""
        if isinstance(self.storage, SQLStorage):
            self.storage.heartbeat_worker(
                self.worker_id,
                host=self.host,
                pid=self.pid,
                queues=self.queues,
                types=self.types(),
                jobs=[job_id for job_id, _attempt in self.running()],
            )
        else:
            for job_id, _attempt in self.running():
                self.storage.heartbeat(job_id, self.worker_id)


class Reaper:
    """Takes back jobs whose worker stopped heartbeating, and forgets dead workers."""

    def __init__(self, storage: Storage, lock_timeout: timedelta) -> None:
        self.storage = storage
        self.lock_timeout = lock_timeout

    def run_once(self) -> int:
        """Release stale locks once; returns how many jobs were taken back."""
        released = self.storage.release_stale_locks(self.lock_timeout)
        if released:
            log.warning(
                "took back %d job(s) whose worker stopped heartbeating for %s",
                released,
                self.lock_timeout,
            )
        if isinstance(self.storage, SQLStorage):
            self.storage.prune_workers(self.lock_timeout * 10)
        return released
